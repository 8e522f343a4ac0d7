"""`bench --compare OLD_DIR`: did anything get slower, beyond noise, and what differs between the runs.

Each case's quantity is tested on the raw records of both runs, not on their summaries:
a percentile bootstrap (seeded, so a report rebuilds to the same numbers) gives a 95%
confidence interval of the relative change in median, and the probability of superiority
P(new > old) (Mann-Whitney U / (n_old x n_new)) gives the effect size.

A change is "beyond noise" when its interval excludes zero, and a regression "by more than
PCT with confidence" when the whole interval lies beyond PCT in the worse direction.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from typing import Any, Optional

import numpy as np

from ..results import ProbeResult, read_results

BOOTSTRAP_RESAMPLES = 4000
CONFIDENCE = 0.95
MIN_SAMPLES = 3  # fewer requests than this on either side: the change is not judged
# quantity -> (record attribute, True when a higher value is worse, unit)
QUANTITIES = {
    "ttft": ("ttft_s", True, "s"),
    "latency": ("request_duration_s", True, "s"),
    "tpot": ("time_per_output_token_s", True, "s"),
    "decode_tps": ("output_tokens_per_s", False, "tok/s"),
}


def _seed(*parts: Any) -> int:
    """A seed per comparison from its name: reproducible, and independent between cases."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def bootstrap_median_change(old: np.ndarray, new: np.ndarray, seed: int,
                            resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """Relative change of the median (new/old - 1) and its percentile-bootstrap confidence interval."""
    rng = np.random.default_rng(seed)
    old_med = np.median(old[rng.integers(0, len(old), (resamples, len(old)))], axis=1)
    new_med = np.median(new[rng.integers(0, len(new), (resamples, len(new)))], axis=1)
    ok = old_med > 0
    ratios = new_med[ok] / old_med[ok] - 1
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return float(np.median(new) / np.median(old) - 1), float(lo), float(hi)


def probability_of_superiority(old: np.ndarray, new: np.ndarray) -> float:
    """P(a new value > an old value), ties counted half: Mann-Whitney U over n_old x n_new."""
    diff = new[:, None] - old[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _values(records: list[ProbeResult], attr: str) -> np.ndarray:
    """Successful warm requests (cold starts are a different distribution; used only if nothing else)."""
    ok = [r for r in records if r.ok and getattr(r, attr) is not None]
    warm = [r for r in ok if r.start == "warm"]
    chosen = warm if len(warm) >= MIN_SAMPLES else ok
    return np.asarray([getattr(r, attr) for r in chosen], dtype=float)


def compare_quantity(key: tuple, quantity: str, old: list[ProbeResult], new: list[ProbeResult],
                     fail_pct: Optional[float]) -> dict[str, Any]:
    attr, higher_worse, unit = QUANTITIES[quantity]
    a, b = _values(old, attr), _values(new, attr)
    row: dict[str, Any] = {"quantity": quantity, "unit": unit, "higher_is_worse": higher_worse,
                           "n_old": len(a), "n_new": len(b),
                           "old_median": float(np.median(a)) if len(a) else None,
                           "new_median": float(np.median(b)) if len(b) else None}
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES or row["old_median"] <= 0:
        row.update(verdict="too few requests" if len(a) and len(b) else "missing", regressed=False)
        return row
    change, lo, hi = bootstrap_median_change(a, b, _seed(*key, quantity))
    sign = 1 if higher_worse else -1
    # The change and its interval in "percent worse": positive is worse for every quantity.
    worse = sign * change * 100
    worse_lo, worse_hi = sorted([sign * lo * 100, sign * hi * 100])
    ps = probability_of_superiority(a, b)
    if worse_lo > 0:
        verdict = "worse"
    elif worse_hi < 0:
        verdict = "better"
    else:
        verdict = "within noise"
    row.update(
        change_pct=change * 100, ci_low_pct=lo * 100, ci_high_pct=hi * 100,
        worse_pct=worse, worse_ci_low_pct=worse_lo, worse_ci_high_pct=worse_hi,
        p_new_greater=ps, cliffs_delta=2 * ps - 1, verdict=verdict,
        regressed=fail_pct is not None and worse_lo > fail_pct,
    )
    return row


def _case_key(r: ProbeResult) -> tuple[str, str, str, str, int]:
    return (r.target, r.model, r.scenario, r.case, r.concurrency)


def compare_records(old: list[ProbeResult], new: list[ProbeResult], fail_pct: Optional[float] = None) -> list[dict[str, Any]]:
    """One entry per target and case present in both runs, with every quantity compared.

    A case is compared only against the same target in the other run: pooling two servers
    would let a fast one hide a slow one's regression.
    """
    old_by, new_by = defaultdict(list), defaultdict(list)
    for r in old:
        old_by[_case_key(r)].append(r)
    for r in new:
        new_by[_case_key(r)].append(r)
    rows = []
    for key in sorted(set(old_by) & set(new_by)):
        # Seeded without the target, as before targets were keyed: a rebuilt single-target report
        # keeps its intervals. Two targets share the resampling stream but not their values.
        seed_key = key[1:]
        quantities = [compare_quantity(seed_key, q, old_by[key], new_by[key], fail_pct) for q in QUANTITIES]
        rows.append({"target": key[0], "model": key[1], "scenario": key[2], "case": key[3], "concurrency": key[4],
                     "quantities": quantities, "regressed": any(q["regressed"] for q in quantities)})
    return rows


def unmatched_targets(old: list[ProbeResult], new: list[ProbeResult]) -> list[dict[str, str]]:
    """Targets with records in one run only: nothing of theirs is compared, and the report says so."""
    old_t, new_t = {r.target for r in old}, {r.target for r in new}
    return ([{"target": t, "only_in": "old"} for t in sorted(old_t - new_t)]
            + [{"target": t, "only_in": "new"} for t in sorted(new_t - old_t)])


def _options_by_case(records: list[ProbeResult]) -> dict[tuple, str]:
    out = {}
    for r in records:
        out.setdefault((r.scenario, r.case), json.dumps(r.options, sort_keys=True))
    return out


def _digest(system: dict[str, Any], target: str, model: str) -> Optional[str]:
    from ..ollama.wire import same_model

    for m in system.get("running_models", {}).get(target, []) or []:
        if same_model(str(m.get("name", "")), model):
            return m.get("digest")
    return None


HOST_FACTS = (("hostname", "host name"), ("cpu_model", "CPU"), ("cpu_count", "CPU cores"),
              ("total_ram_bytes", "RAM bytes"), ("os", "OS"), ("python", "Python"),
              ("exporter_version", "exporter version"))
MODEL_FACTS = (("quantization_level", "quantization"), ("parameter_size", "parameters"), ("family", "family"),
               ("format", "format"))


# Ollama's own defaults for options a request leaves unset that changed between releases:
# (first release with the new default, option, default before, default from then on).
# A run that does not pin such an option ran under different settings on either side.
SERVER_DEFAULT_CHANGES = (
    ((0, 32, 10), "repeat_penalty", 1.1, 1.0),
)


def _version_tuple(v: Any) -> Optional[tuple[int, ...]]:
    if not isinstance(v, str):
        return None
    parts = v.lstrip("v").split("-")[0].split(".")
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else None


def _server_default(version: Optional[tuple[int, ...]], since: tuple[int, ...], before: Any, after: Any) -> Any:
    return after if version is not None and version >= since else before


def server_default_differences(old_sys: dict[str, Any], new_sys: dict[str, Any],
                               old: list[ProbeResult], new: list[ProbeResult]) -> list[dict[str, Any]]:
    """Options a case left to the server, whose server default differs between the two Ollama versions."""
    diffs: list[dict[str, Any]] = []
    old_t, new_t = old_sys.get("targets", {}), new_sys.get("targets", {})
    old_opts, new_opts = _options_by_case(old), _options_by_case(new)
    for target in sorted(set(old_t) & set(new_t)):
        va = old_t[target].get("ollama_version")
        vb = new_t[target].get("ollama_version")
        a, b = _version_tuple(va), _version_tuple(vb)
        if a is None or b is None or a == b:
            continue
        for since, option, before, after in SERVER_DEFAULT_CHANGES:
            da, db = _server_default(a, since, before, after), _server_default(b, since, before, after)
            if da == db:
                continue
            for key in sorted(set(old_opts) & set(new_opts)):
                if option in json.loads(old_opts[key]) or option in json.loads(new_opts[key]):
                    continue
                diffs.append({"what": f"{option} of {key[0]}/{key[1]}, left to the server ({target})",
                              "old": f"{da} (Ollama {va} default)", "new": f"{db} (Ollama {vb} default)"})
    return diffs


def _context_lengths(records: list[ProbeResult]) -> dict[tuple, str]:
    """Per target/scenario/case, the loaded context lengths the records saw (Ollama's /api/ps)."""
    seen: dict[tuple, set[int]] = defaultdict(set)
    for r in records:
        if r.context_length:
            seen[(r.target, r.scenario, r.case)].add(r.context_length)
    return {k: ", ".join(str(v) for v in sorted(vs)) for k, vs in seen.items()}


def system_differences(old_sys: dict[str, Any], new_sys: dict[str, Any],
                       old: list[ProbeResult], new: list[ProbeResult]) -> list[dict[str, Any]]:
    """What differs between the runs: host, Ollama version, model digest and quantization, options."""
    diffs: list[dict[str, Any]] = []

    def add(what: str, a: Any, b: Any) -> None:
        if a != b:
            diffs.append({"what": what, "old": a, "new": b})

    for key, label in HOST_FACTS:
        # A fact one run did not record (an older bench) is unknown, not different.
        if old_sys.get(key) is not None and new_sys.get(key) is not None:
            add(label, old_sys.get(key), new_sys.get(key))
    old_t, new_t = old_sys.get("targets", {}), new_sys.get("targets", {})
    for target in sorted(set(old_t) | set(new_t)):
        a, b = old_t.get(target, {}), new_t.get(target, {})
        add(f"Ollama version ({target})", a.get("ollama_version"), b.get("ollama_version"))
        add(f"URL ({target})", a.get("url"), b.get("url"))
        models = sorted(set(a.get("models", {})) | set(b.get("models", {})))
        for model in models:
            fa, fb = a.get("models", {}).get(model, {}), b.get("models", {}).get(model, {})
            for key, label in MODEL_FACTS:
                add(f"{model} {label} ({target})", fa.get(key), fb.get(key))
            add(f"{model} digest ({target})", _digest(old_sys, target, model), _digest(new_sys, target, model))
    old_opts, new_opts = _options_by_case(old), _options_by_case(new)
    for key in sorted(set(old_opts) & set(new_opts)):
        add(f"options of {key[0]}/{key[1]}", old_opts[key], new_opts[key])
    for key in sorted(set(old_opts) - set(new_opts)):
        add(f"case {key[0]}/{key[1]}", "present", "absent")
    for key in sorted(set(new_opts) - set(old_opts)):
        add(f"case {key[0]}/{key[1]}", "absent", "present")
    diffs += server_default_differences(old_sys, new_sys, old, new)
    # A run without recorded context lengths (an older results file) is unknown, not different.
    old_ctx, new_ctx = _context_lengths(old), _context_lengths(new)
    for key in sorted(set(old_ctx) & set(new_ctx)):
        add(f"context length loaded for {key[1]}/{key[2]} ({key[0]})", old_ctx[key], new_ctx[key])
    return diffs


def load_run(directory: str) -> tuple[list[ProbeResult], dict[str, Any]]:
    records = list(read_results(os.path.join(directory, "results.jsonl")))
    with open(os.path.join(directory, "system.json"), encoding="utf-8") as f:
        return records, json.load(f)


def is_run_dir(directory: str) -> bool:
    return all(os.path.exists(os.path.join(directory, f)) for f in ("results.jsonl", "system.json"))


def compare_runs(old_dir: str, new_records: list[ProbeResult], new_system: dict[str, Any],
                 fail_pct: Optional[float] = None) -> dict[str, Any]:
    old_records, old_system = load_run(old_dir)
    cases = compare_records(old_records, new_records, fail_pct)
    return {
        "targets": sorted({r.target for r in old_records} | {r.target for r in new_records}),
        "unmatched_targets": unmatched_targets(old_records, new_records),
        "old_dir": old_dir,
        "confidence": CONFIDENCE,
        "resamples": BOOTSTRAP_RESAMPLES,
        "fail_on_regression_pct": fail_pct,
        "cases": cases,
        "regressions": [
            {"target": c["target"], "model": c["model"], "scenario": c["scenario"], "case": c["case"],
             "concurrency": c["concurrency"],
             "quantity": q["quantity"], "worse_pct": q["worse_pct"], "worse_ci_low_pct": q["worse_ci_low_pct"],
             "worse_ci_high_pct": q["worse_ci_high_pct"]}
            for c in cases for q in c["quantities"] if q["regressed"]
        ],
        "differences": system_differences(old_system, new_system, old_records, new_records),
    }


def regression_lines(comparison: dict[str, Any]) -> list[str]:
    """One line per regressed case and quantity, for the terminal; the target is named when there are several."""
    several = len(comparison.get("targets", ())) > 1
    return [f"{r['scenario']}/{r['case']} c={r['concurrency']} ({r['model']}"
            + (f" on {r['target']}" if several else "") + f"): {r['quantity']} "
            f"{r['worse_pct']:+.1f}% worse (95% CI {r['worse_ci_low_pct']:+.1f}% .. {r['worse_ci_high_pct']:+.1f}%)"
            for r in comparison["regressions"]]
