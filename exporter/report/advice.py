"""What to change: each finding of the report, turned into concrete settings with their evidence.

Server settings (environment of `ollama serve`) are advice only; a request option also gets a
scenario in `suggested-scenarios.yaml` that runs the suggestion against the current setting,
so one more `bench --config.file suggested-scenarios.yaml` measures the gain.
"""

from __future__ import annotations

from typing import Any, Optional

import yaml

from ..config_types import OPENAI_OPTION_NAMES
from ..ollama.wire import same_model
from .stats import differs

# Ollama's defaults for the request options we suggest (llama.cpp runner, v0.11).
DEFAULT_NUM_BATCH = 512
LOWER_QUANT = {"F32": "Q8_0", "F16": "Q8_0", "BF16": "Q8_0", "Q8_0": "Q6_K", "Q6_K": "Q5_K_M", "Q5_K_M": "Q4_K_M",
               "Q5_K_S": "Q4_K_M", "Q5_1": "Q4_K_M", "Q5_0": "Q4_K_M", "Q4_K_M": "Q3_K_M", "Q4_K_S": "Q3_K_M",
               "Q4_1": "Q4_0", "Q4_0": "Q3_K_M"}
LOAD_SHARE = 0.1       # cold starts matter when model loading is this much of all latency
QUEUE_SHARE = 0.2      # waiting before the server starts is this much of latency
PREFILL_SHARE = 0.4    # prefill is this much of latency
CONTEXT_SLACK = 4      # the context is this many times larger than the largest request needs
MEMORY_FRACTION = 0.8  # server memory this close to the machine's RAM
SUGGESTED_REPEATS = 5
GRAMMAR_COST = 0.1     # structured output this much slower (TTFT or per token) than free text


def _running(system: dict[str, Any], target: str, model: str) -> dict[str, Any]:
    return next((m for m in system.get("running_models", {}).get(target, []) or []
                 if same_model(str(m.get("name", "")), model)), {})


def _pow2_at_least(n: float, floor: int = 2048) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


def _spec(scenarios: list[dict[str, Any]], scenario: str, case: str) -> Optional[tuple[dict, dict]]:
    """The scenario and case records (scenarios_record) of a report row."""
    for s in scenarios:
        if s["name"] == scenario:
            for c in s["cases"]:
                if c["name"] == case:
                    return s, c
    return None


def _case_option(scenarios: list[dict[str, Any]], scenario: str, case: str, option: str) -> Any:
    found = _spec(scenarios, scenario, case)
    return found[1]["options"].get(option) if found else None


def _median(row: dict[str, Any], key: str) -> Optional[float]:
    value = (row.get(key) or {}).get("median")
    return value if isinstance(value, (int, float)) else None


def _change(label: str, unit: str, scale: float, base: Optional[float], new: Optional[float],
            digits: int = 1) -> Optional[str]:
    if base is None or new is None:
        return None
    pct = f" ({(new - base) / base * 100:+.0f}%)" if base else ""
    return f"{label} median {base * scale:.{digits}f} -> {new * scale:.{digits}f}{' ' + unit if unit else ''}{pct}"


def grammar_overhead(cases: list[dict[str, Any]], scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Structured output against the same request without it: each case with a `format` that has
    a twin on this target and model (any scenario) sending the same API, prompt (or turns),
    system prompt and options at the same concurrency, but no `format`.

    Compared per output token and on TTFT, not on whole latency: a JSON answer is rarely as long
    as the free-text one. The server's decode speed is added where the API reports it. A cost is
    one of GRAMMAR_COST or more that is also beyond the run-to-run noise (stats.differs): the two
    cases run one after the other, so a busy host's drift can fall on one side only."""
    def signature(row: dict[str, Any]) -> tuple[Optional[tuple], Any]:
        """(what must match between the twins, the case's format); (None, None) for an unknown case."""
        found = _spec(scenarios, row["scenario"], row["case"])
        if found is None:
            return None, None
        s, c = found
        return (s.get("api"), c.get("prompt"), tuple(c.get("turns") or ()), c.get("system"),
                repr(sorted((c.get("options") or {}).items())), s.get("unique_prompt"),
                row["concurrency"]), c.get("format")

    signed = [(row, *signature(row)) for row in cases]
    plain: dict[tuple, dict[str, Any]] = {}
    for row, sig, f in signed:
        if sig is not None and f is None:
            plain.setdefault(sig, row)
    out = []
    for row, sig, f in signed:
        base = plain.get(sig) if sig is not None and f is not None else None
        if base is None:
            continue
        kind = "json" if f == "json" else "JSON schema"
        ttft = _change("TTFT", "s", 1, _median(base, "ttft"), _median(row, "ttft"), 3)
        tpot = _change("time per output token", "ms", 1000, _median(base, "tpot"), _median(row, "tpot"))
        decode = _change("server decode", "tok/s", 1, _median(base, "decode_tps"), _median(row, "decode_tps"))
        ratios = {k: _ratio(_median(row, k), _median(base, k)) for k in ("ttft", "tpot", "decode_tps")}
        slower = [k for k in ("ttft", "tpot") if (ratios[k] or 0) >= 1 + GRAMMAR_COST and
                  differs(base.get(k) or {}, row.get(k) or {}) is not False]
        n = f"{(row.get('ttft') or {}).get('n', 0)} and {(base.get('ttft') or {}).get('n', 0)} requests"
        evidence = [f"{row['scenario']}/{row['case']} (format {kind}) against {base['scenario']}/{base['case']} "
                    f"(free text), concurrency {row['concurrency']}, {n}"]
        tokens = _change("output tokens", "", 1, _median(base, "produced_tokens"), _median(row, "produced_tokens"), 0)
        evidence += [e for e in (ttft, tpot, decode, tokens) if e]
        out.append({
            "kind": "request", "setting": "format", "current": kind,
            "suggested": "drop it where the answer need not be JSON, or a smaller schema" if slower else
                         "keep: no grammar cost measured",
            "reason": ("structured output: the grammar that constrains each token costs "
                       + " and ".join({"ttft": "time to first token", "tpot": "time per token"}[k] for k in slower))
                      if slower else "structured output: no cost of 10% or more beyond the run-to-run noise",
            "evidence": evidence, "scenario": row["scenario"], "case": row["case"], "sweep": False,
            "overhead": {
                "baseline": {"scenario": base["scenario"], "case": base["case"]},
                **{f"{k}_ratio": v for k, v in ratios.items()},
            },
        })
    return out


def _ratio(new: Optional[float], base: Optional[float]) -> Optional[float]:
    return new / base if new is not None and base else None


def advise(model: str, m: dict[str, Any], system: dict[str, Any],
           scenarios: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """The recommendations for one model on one target, most important first.

    Each is {kind: "server"|"request", setting, current, suggested, reason, evidence: [..]};
    request options also carry the case to measure it on ("scenario", "case").
    """
    out: list[dict[str, Any]] = []
    target = m["target"]
    shares = m.get("phases_overall") or {}
    cases = [c for c in m["cases"] if c["requests"] > c["failures"]]
    running = _running(system, target, model)
    theory = m.get("theory") or {}
    resources = m.get("resources")

    # Queueing: requests sent together were served one at a time.
    for conc in m.get("concurrency") or []:
        top = conc["rows"][-1]
        par = top.get("server_parallelism")
        if par is not None and not conc["parallel"]:
            first = conc["rows"][0]
            out.append({
                "kind": "server", "setting": "OLLAMA_NUM_PARALLEL", "current": f"{max(1, round(par))} in effect",
                "suggested": str(top["concurrency"]),
                "reason": "requests sent at once waited for each other (queueing)",
                "evidence": [
                    f"scenario {conc['scenario']}: at concurrency {top['concurrency']} the server worked on "
                    f"{par:.1f} request at a time",
                    f"mean TTFT {first['ttft'].get('mean', 0):.3f} s at concurrency {first['concurrency']} -> "
                    f"{top['ttft'].get('mean', 0):.3f} s at {top['concurrency']}",
                    "each parallel slot gets its own KV cache of num_ctx tokens: memory grows with it",
                ],
            })
            break
    if shares.get("queue", 0) >= QUEUE_SHARE and not any(r["setting"] == "OLLAMA_NUM_PARALLEL" for r in out):
        out.append({
            "kind": "server", "setting": "OLLAMA_NUM_PARALLEL", "current": "default", "suggested": "2 or more",
            "reason": "requests waited before the server started on them",
            "evidence": [f"queue/transport is {shares['queue'] * 100:.0f}% of latency at concurrency 1"],
        })

    # Cold starts: model loading inside measured requests.
    cold = sum(c["cold"] for c in cases)
    ev = [f"{cold} cold start(s); loading is {shares.get('load', 0) * 100:.0f}% of all latency at concurrency 1"]
    if shares.get("load", 0) >= LOAD_SHARE and cold == 1:
        # One load at the very start is the bench's own first request, not the server unloading.
        out.append({"kind": "scenario", "setting": "warmup", "current": 0, "suggested": 1,
                    "reason": "the first request loaded the model: a warm-up request keeps the load out of the numbers",
                    "evidence": ev})
    elif shares.get("load", 0) >= LOAD_SHARE and cold > 1:
        out.append({"kind": "server", "setting": "OLLAMA_KEEP_ALIVE", "current": "default (5m)", "suggested": "30m (or -1: never unload)",
                    "reason": "cold starts: the model was loaded inside measured requests", "evidence": ev})
        out.append({"kind": "request", "setting": "keep_alive", "current": "scenario default", "suggested": "30m",
                    "reason": "the same per request, for clients that cannot change the server", "evidence": ev,
                    "sweep": False})

    # Memory: spilling out of VRAM, or close to the machine's RAM.
    size, vram = running.get("size"), running.get("size_vram")
    quant = str((m.get("facts") or {}).get("quantization_level") or "").upper()
    spilling = bool(size and vram and 0 < vram < size)
    near_ram = bool(resources and system.get("total_ram_bytes")
                    and resources["rss_bytes_peak"] >= MEMORY_FRACTION * system["total_ram_bytes"])
    if spilling or near_ram:
        ev = ([f"{vram / 2**20:.0f} of {size / 2**20:.0f} MiB in VRAM: {100 * (1 - vram / size):.0f}% of the model "
               "runs from system memory"] if spilling else []) + \
             ([f"server memory peaked at {resources['rss_bytes_peak'] / 2**20:.0f} MiB of "
               f"{system['total_ram_bytes'] / 2**20:.0f} MiB RAM"] if near_ram else [])
        if theory.get("kv_cache_bytes"):
            ev.append(f"KV cache estimate {theory['kv_cache_bytes'] / 2**20:.0f} MiB ({theory['kv_cache_formula']})")
        out.append({"kind": "server", "setting": "OLLAMA_FLASH_ATTENTION", "current": "unset", "suggested": "1",
                    "reason": "less memory for attention; required for a quantized KV cache", "evidence": ev})
        out.append({"kind": "server", "setting": "OLLAMA_KV_CACHE_TYPE", "current": "f16", "suggested": "q8_0",
                    "reason": "halves the KV cache", "evidence": ev})
        if spilling and quant in LOWER_QUANT:
            out.append({"kind": "server", "setting": "model quantization", "current": quant,
                        "suggested": LOWER_QUANT[quant], "reason": "a smaller model fits in VRAM",
                        "evidence": ev})

    # Context: a KV cache sized far beyond what any request used.
    ctx = running.get("context_length")
    needed = max(((c["prompt_tokens"].get("max") or 0) + (c["produced_tokens"].get("max") or 0) for c in cases), default=0)
    if ctx and needed and ctx >= CONTEXT_SLACK * needed:
        case = max(cases, key=lambda c: (c["prompt_tokens"].get("max") or 0))
        suggested = _pow2_at_least(needed * 2)
        if suggested < ctx:
            ev = [f"the server runs the model with a {ctx}-token context; the largest request used {needed:.0f} tokens"]
            if theory.get("kv_cache_bytes"):
                ev.append(f"KV cache at {ctx} tokens: {theory['kv_cache_bytes'] / 2**20:.0f} MiB; at {suggested}: "
                          f"{theory['kv_cache_bytes'] * suggested / ctx / 2**20:.0f} MiB")
            out.append({"kind": "request", "setting": "num_ctx", "current": ctx, "suggested": suggested,
                        "reason": "a smaller context frees KV-cache memory (and per-slot memory for OLLAMA_NUM_PARALLEL)",
                        "evidence": ev, "scenario": case["scenario"], "case": case["case"], "sweep": True})

    # Prefill-heavy: a larger batch evaluates the prompt in fewer passes.
    # Judged on the time outside model loading, which cold starts would otherwise swamp.
    load = shares.get("load", 0)
    warm_prefill = shares.get("prefill", 0) / (1 - load) if load < 1 else 0
    case = max(cases, key=lambda c: (c["prompt_tokens"].get("median") or 0), default=None)
    current = case and (_case_option(scenarios or [], case["scenario"], case["case"], "num_batch") or DEFAULT_NUM_BATCH)
    # A prompt shorter than the batch is evaluated in one pass already: only longer ones gain.
    if warm_prefill >= PREFILL_SHARE and case and (case["prompt_tokens"].get("median") or 0) > current:
        out.append({"kind": "request", "setting": "num_batch", "current": current, "suggested": current * 2,
                    "reason": "prefill dominates: a larger batch evaluates the prompt in fewer, larger passes",
                    "evidence": [f"prefill is {warm_prefill * 100:.0f}% of latency outside model loads at concurrency 1",
                                 f"median prefill {case['prefill_tps'].get('median') or 0:.0f} tok/s on "
                                 f"{case['scenario']}/{case['case']} ({case['prompt_tokens'].get('median') or 0:.0f} prompt tokens)"],
                    "scenario": case["scenario"], "case": case["case"], "sweep": True})

    # CPU-bound decoding: try the thread count against the physical cores.
    bottleneck = m.get("bottleneck") or {}
    physical = system.get("physical_cores") or system.get("cpu_count")
    if bottleneck.get("cpu_saturated") and physical and not vram:
        case = max(cases, key=lambda c: (c["produced_tokens"].get("median") or 0))
        logical = system.get("cpu_count") or physical
        current = _case_option(scenarios or [], case["scenario"], case["case"], "num_thread") or logical
        suggested = physical if physical != current else max(1, physical - 1)
        out.append({"kind": "request", "setting": "num_thread", "current": current, "suggested": suggested,
                    "reason": "the server's CPU is saturated: threads beyond the physical cores (or one core "
                              "left for the client and the OS) often decode faster",
                    "evidence": [e for e in bottleneck.get("evidence", []) if e.startswith("server CPU")] +
                                [f"{physical} physical / {logical} logical cores"],
                    "scenario": case["scenario"], "case": case["case"], "sweep": True})

    # Structured output: its grammar's cost, measured against the same case without it.
    out += grammar_overhead(cases, scenarios or [])
    return out


def suggested_scenarios(recommendations: list[tuple[str, str, list[dict[str, Any]]]],
                        scenarios: list[dict[str, Any]]) -> Optional[str]:
    """A scenario file: per request-option suggestion, its case at the current and the suggested value.

    `recommendations` holds (target, model, advice). A suggestion was found on one server, so
    its scenario runs on that target only; with several targets the name says which.
    """
    by_name = {s["name"]: s for s in scenarios}
    several_targets = len({target for target, _, _ in recommendations}) > 1
    out_scenarios, targets, names = [], {}, set()
    for target, _model, recs in recommendations:
        for rec in recs:
            if not rec.get("sweep") or rec.get("scenario") not in by_name:
                continue
            src = by_name[rec["scenario"]]
            if src.get("api") == "openai" and rec["setting"] not in OPENAI_OPTION_NAMES:
                continue  # an Ollama option that the OpenAI API cannot send
            case = next((c for c in src["cases"] if c["name"] == rec["case"]), None)
            on = [t for t in src["targets"] if t["name"] == target]
            if case is None or not on:
                continue
            for t in on:
                targets[t["name"]] = t
            cases = {}
            for value in (rec["current"], rec["suggested"]):
                options = {**case["options"], rec["setting"]: value}
                spec: dict[str, Any] = {"prompt": case["prompt"], "options": options}
                if case.get("system"):
                    spec["system"] = case["system"]
                if case.get("format") is not None:
                    spec["format"] = case["format"]
                cases[f"{rec['setting']}_{value}"] = spec
            name = f"try-{rec['setting']}" + (f"-{target}" if several_targets else "")
            # Two models on one target can suggest the same setting: scenario names must stay unique.
            base, n = name, 2
            while name in names:
                name, n = f"{base}-{n}", n + 1
            names.add(name)
            scenario: dict[str, Any] = {
                "name": name,
                "model": src["model"], "api": src["api"], "targets": [t["name"] for t in on],
                "repeats": max(SUGGESTED_REPEATS, src["repeats"]), "warmup": 1, "timeout": f"{src['timeout']:g}s",
                "unique_prompt": src["unique_prompt"], "cases": cases,
            }
            if src.get("keep_alive") is not None:
                scenario["keep_alive"] = src["keep_alive"]
            if src.get("think") is not None:
                scenario["think"] = src["think"]
            out_scenarios.append(scenario)
    if not out_scenarios:
        return None
    header = ("# Written by `ollama-perf-exporter bench`: each scenario runs one case of the last run at the\n"
              "# current and at the suggested value of one request option. Measure the gain with\n"
              "#   ollama-perf-exporter bench --config.file suggested-scenarios.yaml --output OUT\n")
    return header + yaml.safe_dump({"targets": list(targets.values()), "scenarios": out_scenarios},
                                   sort_keys=False, allow_unicode=True, width=100)


def _target_record(target: Any) -> dict[str, Any]:
    """A target as config YAML: the auth block names variables and files, never holds a secret."""
    out = {"name": target.name, "url": target.url, "process_match": target.process_match}
    if target.auth is not None:
        out["auth"] = target.auth.model_dump(exclude_none=True)
    return out


def scenarios_record(config: Any) -> list[dict[str, Any]]:
    """What bench ran, expanded (sweeps applied), for rebuilding suggestions from the output directory."""
    out = []
    for s in config.scenarios:
        out.append({
            "name": s.name, "model": s.model, "api": s.api, "repeats": s.repeats, "warmup": s.warmup,
            "concurrency": list(s.concurrency), "keep_alive": s.keep_alive, "timeout": s.timeout, "think": s.think,
            "unique_prompt": s.unique_prompt,
            "targets": [_target_record(t) for t in s.targets],
            "cases": [{"name": c.name, "prompt": c.prompt, "system": c.system, "options": dict(c.options),
                       "turns": list(c.turns), "format": c.format} for c in s.cases],
        })
    return out
