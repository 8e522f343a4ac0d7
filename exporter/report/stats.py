"""Statistics over result records: the numbers of the bench report.

Everything here is a pure function of the records (and the resource samples and
system facts taken during the run), so a report can be rebuilt from its raw
files. Percentiles come from numpy, means and deviations from `statistics`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable, Optional

import numpy as np

from ..ollama.wire import same_model
from ..results import ProbeResult, batch_output_tokens_per_s

# Approximate bits per weight of llama.cpp quantisations (weights plus block scales).
BITS_PER_WEIGHT = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_1": 6.0, "Q5_0": 5.5,
    "Q5_K_M": 5.69, "Q5_K_S": 5.54, "Q4_1": 5.0, "Q4_0": 4.5, "Q4_K_M": 4.85, "Q4_K_S": 4.58,
    "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 2.63, "IQ4_XS": 4.25, "IQ4_NL": 4.5,
}
# A difference is called real when it exceeds this many standard errors of the difference.
NOISE_SIGMAS = 2.0


def describe(values: Iterable[Optional[float]]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0}
    arr = np.asarray(vals)
    mean = statistics.fmean(vals)
    stdev = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {
        "n": len(vals),
        "mean": mean,
        "median": statistics.median(vals),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "min": min(vals),
        "max": max(vals),
        "stdev": stdev,
        "cv": stdev / mean if mean else None,
    }


def differs(a: dict[str, Any], b: dict[str, Any]) -> Optional[bool]:
    """Is the difference of two means larger than the run-to-run noise? None if it cannot be told."""
    if a.get("n", 0) < 2 or b.get("n", 0) < 2:
        return None
    se = math.sqrt(a["stdev"] ** 2 / a["n"] + b["stdev"] ** 2 / b["n"])
    if se == 0:
        return a["mean"] != b["mean"]
    return abs(a["mean"] - b["mean"]) > NOISE_SIGMAS * se


def pct_change(old: Optional[float], new: Optional[float]) -> Optional[float]:
    if old is None or new is None or old == 0:
        return None
    return (new - old) / old * 100


def case_key(r: ProbeResult) -> tuple[str, str, str, int]:
    return (r.target, r.scenario, r.case, r.concurrency)


def case_table(records: list[ProbeResult]) -> list[dict[str, Any]]:
    """One row per target, scenario, case and concurrency: two servers never share a row."""
    groups: dict[tuple, list[ProbeResult]] = defaultdict(list)
    for r in records:
        groups[case_key(r)].append(r)
    rows = []
    for (target, scenario, case, conc), rs in groups.items():
        ok = [r for r in rs if r.ok]
        rows.append({
            "target": target,
            "scenario": scenario,
            "case": case,
            "concurrency": conc,
            "requests": len(rs),
            "failures": len(rs) - len(ok),
            "failure_reasons": sorted({r.reason for r in rs if not r.ok}),
            "cold": sum(1 for r in ok if r.start == "cold"),
            "latency": describe(r.request_duration_s for r in ok),
            "ttft": describe(r.ttft_s for r in ok),
            "decode_tps": describe(r.output_tokens_per_s for r in ok),
            "prefill_tps": describe(r.prompt_tokens_per_s for r in ok),
            "tpot": describe(r.time_per_output_token_s for r in ok),
            "prompt_tokens": describe(r.prompt_eval_count for r in ok),
            "output_tokens_total": sum((r.eval_count or r.output_chunks) for r in ok),
            "structured_output": next((r.structured_output for r in rs if r.structured_output), None),
            **token_counts(ok),
        })
    return rows


def requested_tokens(r: ProbeResult) -> Optional[int]:
    """num_predict as sent; None when unset or unlimited (-1, -2)."""
    n = r.options.get("num_predict")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def stopped_early(r: ProbeResult) -> bool:
    """The model ended its answer before num_predict: its decode speed is over a shorter answer."""
    requested = requested_tokens(r)
    produced = r.eval_count if r.eval_count is not None else r.output_chunks
    return r.ok and requested is not None and r.done_reason == "stop" and produced < requested


def token_counts(ok: list[ProbeResult]) -> dict[str, Any]:
    """Requested versus produced output tokens, answers that stopped early, and thinking."""
    requested = sorted({n for n in map(requested_tokens, ok) if n is not None})
    thinking = [r for r in ok if r.thinking_tokens]
    return {
        "requested_tokens": requested[0] if len(requested) == 1 else (requested or None),
        "produced_tokens": describe(r.eval_count if r.eval_count is not None else r.output_chunks for r in ok),
        "stopped_early": sum(1 for r in ok if stopped_early(r)),
        "done_reasons": dict(sorted(Counter(r.done_reason or "none" for r in ok).items())),
        "thinking_requests": len(thinking),
        "thinking_tokens": describe(r.thinking_tokens for r in thinking),
        "first_thinking_s": describe(r.first_thinking_s for r in thinking),
        "first_answer_s": describe(r.first_answer_s for r in ok),
    }


def phase_shares(records: list[ProbeResult]) -> dict[str, Optional[float]]:
    """Mean share of end-to-end latency spent in load, prefill, decode, queue/transport and the rest."""
    ok = [r for r in records if r.ok and r.request_duration_s]
    if not ok:
        return {}
    total = sum(r.request_duration_s for r in ok)
    load = sum(r.load_duration_s or 0 for r in ok)
    prefill = sum(r.prompt_eval_duration_s or 0 for r in ok)
    decode = sum(r.eval_duration_s or 0 for r in ok)
    queue = sum(r.queue_duration_s or 0 for r in ok)
    other = max(total - load - prefill - decode - queue, 0.0)
    return {k: v / total for k, v in
            {"load": load, "prefill": prefill, "decode": decode, "queue": queue, "other": other}.items()}


def _fit(x: list[float], y: list[float]) -> dict[str, Any]:
    """Linear slope and the exponent of a power law y ~ x^k fitted in log-log space."""
    out: dict[str, Any] = {"points": len(x)}
    if len(set(x)) >= 2:
        slope, intercept = np.polyfit(x, y, 1)
        out.update(slope=float(slope), intercept=float(intercept))
    pos = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0]
    if len({a for a, _ in pos}) >= 3:
        k, _ = np.polyfit(np.log([a for a, _ in pos]), np.log([b for _, b in pos]), 1)
        out["exponent"] = float(k)
        out["growth"] = "sub-linear" if k < 0.85 else "super-linear" if k > 1.15 else "linear"
    return out


def prompt_length_impact(records: list[ProbeResult]) -> Optional[dict[str, Any]]:
    ok = [r for r in records if r.ok and r.concurrency == 1 and r.start == "warm" and r.prompt_eval_count]
    # Only scenarios that vary the prompt length: a scenario repeating one prompt is usually
    # served from Ollama's prompt cache, and its near-zero prefill would bend the fit.
    lengths: dict[str, set[int]] = defaultdict(set)
    for r in ok:
        lengths[r.scenario].add(r.prompt_eval_count)
    ok = [r for r in ok if len(lengths[r.scenario]) >= 2]
    by_case: dict[str, list[ProbeResult]] = defaultdict(list)
    for r in ok:
        by_case[f"{r.scenario}/{r.case}"].append(r)
    points = []
    for name, rs in by_case.items():
        points.append({
            "case": name,
            "prompt_tokens": statistics.median(r.prompt_eval_count for r in rs),
            "ttft": statistics.median(r.ttft_s for r in rs),
            "latency": statistics.median(r.request_duration_s for r in rs),
            "prefill": statistics.median(r.prompt_eval_duration_s or 0 for r in rs),
            "decode_tps": statistics.fmean(r.output_tokens_per_s for r in rs if r.output_tokens_per_s) if any(r.output_tokens_per_s for r in rs) else None,
        })
    if len({p["prompt_tokens"] for p in points}) < 2:
        return None
    points.sort(key=lambda p: p["prompt_tokens"])
    x = [p["prompt_tokens"] for p in points]
    decode = [p["decode_tps"] for p in points if p["decode_tps"]]
    decode_cv = statistics.stdev(decode) / statistics.fmean(decode) if len(decode) > 1 else None
    return {
        "points": points,
        "ttft_fit": _fit(x, [p["ttft"] for p in points]),
        "prefill_fit": _fit(x, [p["prefill"] for p in points]),
        "latency_fit": _fit(x, [p["latency"] for p in points]),
        "decode_tps_cv_across_lengths": decode_cv,
        "decode_stable": decode_cv is not None and decode_cv < 0.1,
    }


def temperature_impact(records: list[ProbeResult]) -> list[dict[str, Any]]:
    """Per scenario that ran several temperatures: latency and decode speed per temperature."""
    by_scenario: dict[str, dict[float, list[ProbeResult]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        t = r.options.get("temperature")
        if r.ok and r.concurrency == 1 and t is not None:
            by_scenario[r.scenario][float(t)].append(r)
    out = []
    for scenario, temps in by_scenario.items():
        if len(temps) < 2:
            continue
        base_t = min(temps)
        base_lat = describe(r.request_duration_s for r in temps[base_t])
        base_tps = describe(r.output_tokens_per_s for r in temps[base_t])
        rows = []
        for t in sorted(temps):
            lat = describe(r.request_duration_s for r in temps[t])
            tps = describe(r.output_tokens_per_s for r in temps[t])
            tokens = describe(r.eval_count for r in temps[t])
            rows.append({
                "temperature": t,
                "latency": lat,
                "decode_tps": tps,
                "output_tokens": tokens,
                "latency_change_pct": pct_change(base_lat.get("mean"), lat.get("mean")),
                "decode_tps_change_pct": pct_change(base_tps.get("mean"), tps.get("mean")),
                "latency_beyond_noise": differs(base_lat, lat) if t != base_t else None,
                "decode_tps_beyond_noise": differs(base_tps, tps) if t != base_t else None,
            })
        out.append({"scenario": scenario, "baseline_temperature": base_t, "rows": rows})
    return out


def concurrency_impact(records: list[ProbeResult]) -> list[dict[str, Any]]:
    """Per scenario with several levels: aggregate throughput, latency, and whether requests overlapped.

    Parallelism is judged from the server's own busy time: in a batch, the sum of
    each request's prefill + decode time over the batch's wall time is ~1 when the
    server ran them one after another and ~N when it ran N at once.
    """
    by_scenario: dict[str, dict[int, dict[tuple, list[ProbeResult]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        by_scenario[r.scenario][r.concurrency][(r.run_id, r.batch, r.case)].append(r)
    out = []
    for scenario, levels in by_scenario.items():
        if len(levels) < 2:
            continue
        rows = []
        for level in sorted(levels):
            tps, rps, overlap = [], [], []
            for batch in levels[level].values():
                wall = max(r.ended_at for r in batch) - min(r.started_at for r in batch)
                agg = batch_output_tokens_per_s(batch)
                if agg:
                    tps.append(agg)
                if wall > 0:
                    rps.append(sum(1 for r in batch if r.ok) / wall)
                    busy = sum((r.prompt_eval_duration_s or 0) + (r.eval_duration_s or 0) for r in batch if r.ok)
                    overlap.append(busy / wall)
            reqs = [r for b in levels[level].values() for r in b]
            rows.append({
                "concurrency": level,
                "batches": len(levels[level]),
                "aggregate_tps": describe(tps),
                "requests_per_s": describe(rps),
                "latency": describe(r.request_duration_s for r in reqs if r.ok),
                "ttft": describe(r.ttft_s for r in reqs if r.ok),
                "failures": sum(1 for r in reqs if not r.ok),
                "server_parallelism": statistics.fmean(overlap) if overlap else None,
            })
        base = rows[0]["aggregate_tps"].get("mean")
        for row in rows:
            row["throughput_gain"] = (row["aggregate_tps"].get("mean") / base) if base and row["aggregate_tps"].get("mean") else None
        top = rows[-1]
        par = top["server_parallelism"]
        if par is None:
            mode = "unknown"
        elif par >= 1.5:
            mode = f"parallel: at concurrency {top['concurrency']} the server was busy with {par:.1f} requests at a time"
        else:
            mode = (f"queued: at concurrency {top['concurrency']} the server worked on {par:.1f} request at a time, "
                    "so requests waited their turn (OLLAMA_NUM_PARALLEL)")
        out.append({"scenario": scenario, "rows": rows, "mode": mode, "parallel": bool(par and par >= 1.5)})
    return out


def resource_use(samples: list[dict[str, Any]], records: list[ProbeResult]) -> Optional[dict[str, Any]]:
    """CPU (% of one core) and resident memory of the server's process tree during the run."""
    samples = sorted(samples, key=lambda s: s["t"])
    if len(samples) < 2:
        return None
    cpu = []
    for a, b in zip(samples, samples[1:]):
        dt = b["t"] - a["t"]
        if dt > 0:
            cpu.append(max(b["cpu_seconds_total"] - a["cpu_seconds_total"], 0) / dt * 100)
    rss = [s["resident_bytes"] for s in samples]
    wall = samples[-1]["t"] - samples[0]["t"]
    ok = [r for r in records if r.ok]
    return {
        "samples": len(samples),
        "duration_s": wall,
        "cpu_percent_mean": statistics.fmean(cpu) if cpu else None,
        "cpu_percent_peak": max(cpu) if cpu else None,
        "rss_bytes_mean": statistics.fmean(rss),
        "rss_bytes_peak": max(rss),
        "rss_bytes_start": rss[0],
        "rss_bytes_end": rss[-1],
        "requests_per_s": len(ok) / wall if wall > 0 else None,
        "output_tokens_per_s": sum((r.eval_count or 0) for r in ok) / wall if wall > 0 else None,
    }


def theory(model_facts: dict[str, Any], running: Optional[dict[str, Any]], bandwidth: Optional[float],
           decode_tps_median: Optional[float], rss_peak: Optional[float]) -> dict[str, Any]:
    """Measured decode speed against a memory-bandwidth bound, memory against weights + KV cache."""
    out: dict[str, Any] = {}
    params = model_facts.get("parameter_count")
    quant = str(model_facts.get("quantization_level") or "").upper()
    bits = BITS_PER_WEIGHT.get(quant)
    if params and bits:
        out["weights_bytes"] = params * bits / 8
        out["weights_source"] = f"{params:,} parameters x {bits} bits ({quant})"
    elif running and running.get("size"):
        out["weights_bytes"] = running["size"]
        out["weights_source"] = "loaded size reported by the server (includes KV cache)"
    if bandwidth and out.get("weights_bytes"):
        # Each decoded token reads every weight once: tokens/s <= bandwidth / weight bytes.
        out["bandwidth_bytes_per_s"] = bandwidth
        out["decode_tps_bound"] = bandwidth / out["weights_bytes"]
        if decode_tps_median:
            out["decode_tps_measured"] = decode_tps_median
            out["efficiency"] = decode_tps_median / out["decode_tps_bound"]
    layers = model_facts.get("block_count")
    kv_heads = model_facts.get("head_count_kv") or model_facts.get("head_count")
    heads = model_facts.get("head_count")
    emb = model_facts.get("embedding_length")
    ctx = (running or {}).get("context_length") or model_facts.get("context_length")
    if layers and kv_heads and heads and emb and ctx:
        head_dim = emb / heads
        # K and V, per layer, per position, f16 (2 bytes): Ollama's default cache type.
        out["kv_cache_bytes"] = 2 * layers * ctx * kv_heads * head_dim * 2
        out["kv_cache_formula"] = f"2 x {layers} layers x {ctx} ctx x {kv_heads} kv heads x {head_dim:g} dims x 2 bytes"
    if out.get("weights_bytes") and out.get("kv_cache_bytes"):
        out["expected_memory_bytes"] = out["weights_bytes"] + out["kv_cache_bytes"]
        if rss_peak:
            out["rss_peak_bytes"] = rss_peak
            out["memory_ratio"] = rss_peak / out["expected_memory_bytes"]
    return out


def bottleneck(shares: dict[str, float], resources: Optional[dict[str, Any]], cpu_count: int,
               total_ram: Optional[int], concurrency: list[dict[str, Any]],
               theory_facts: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    evidence = []
    verdict = None
    if shares:
        evidence.append("latency share: " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in shares.items()))
    cpu_saturated = False
    if resources and resources.get("cpu_percent_mean") is not None:
        cap = cpu_count * 100
        evidence.append(f"server CPU: mean {resources['cpu_percent_mean']:.0f}%, peak {resources['cpu_percent_peak']:.0f}% "
                        f"of {cap}% ({cpu_count} cores)")
        cpu_saturated = resources["cpu_percent_peak"] >= 0.85 * cap
    if resources and total_ram:
        frac = resources["rss_bytes_peak"] / total_ram
        evidence.append(f"server memory: peak {resources['rss_bytes_peak'] / 2**20:.0f} MiB, {frac * 100:.1f}% of RAM")
        if frac > 0.9:
            verdict = "memory: the server's resident memory is close to the machine's RAM"
    for c in concurrency:
        evidence.append(f"concurrency ({c['scenario']}): {c['mode']}")
    if verdict is None and shares:
        if shares.get("load", 0) >= 0.3:
            verdict = "model load: cold starts dominate latency (keep_alive too short, or models evicting each other)"
        elif shares.get("queue", 0) >= 0.3:
            verdict = "queueing: requests wait for the server before it starts working on them"
        elif shares.get("prefill", 0) > shares.get("decode", 0):
            verdict = "prefill: evaluating the prompt takes most of the time (compute bound)"
        else:
            efficiency = (theory_facts or {}).get("efficiency")
            if efficiency is not None:
                evidence.append(f"decode reaches {efficiency * 100:.0f}% of the memory-bandwidth bound")
            if cpu_saturated and (efficiency is None or efficiency < 0.5):
                verdict = ("decode, compute bound: generating tokens takes most of the time and the server's CPU "
                           "is saturated well below the memory-bandwidth bound")
            else:
                verdict = "decode, memory-bandwidth bound: generating tokens takes most of the time"
        if cpu_saturated and not verdict.startswith("decode, compute"):
            verdict += "; the server's CPU is saturated while it works"
    return {"verdict": verdict or "not enough data", "cpu_saturated": cpu_saturated, "evidence": evidence}


def summarize(records: list[ProbeResult], samples: list[dict[str, Any]], system: dict[str, Any],
              running: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The whole report's numbers, per target and model.

    Targets are never pooled: two servers of one model are two distributions, and their
    facts (version, quantization, loaded size) and process samples are each their own.
    """
    by_target: dict[str, dict[str, list[ProbeResult]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_target[r.target][r.model].append(r)
    targets = {}
    for target in sorted(by_target):
        by_model = by_target[target]
        target_samples = [s for s in samples if s.get("target") == target]
        models = {}
        for model, rs in by_model.items():
            # A server's process tree serves all its models: its samples describe one model only
            # when that target ran nothing else.
            resources = resource_use(target_samples, rs) if len(by_model) == 1 else None
            models[model] = summarize_model(target, model, rs, resources, system, running)
        all_rs = [r for rs in by_model.values() for r in rs]
        targets[target] = {"models": models, "requests": len(all_rs), "failures": sum(1 for r in all_rs if not r.ok)}
    return {"targets": targets, "requests": len(records), "failures": sum(1 for r in records if not r.ok)}


def summarize_model(target: str, model: str, rs: list[ProbeResult], resources: Optional[dict[str, Any]],
                    system: dict[str, Any], running: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One model on one target: every table, experiment and verdict of its report section."""
    facts = (system.get("targets", {}).get(target, {}).get("models", {}) or {}).get(model, {})
    shares = phase_shares([r for r in rs if r.concurrency == 1])
    conc = concurrency_impact(rs)
    run_info = next((m for m in running.get(target, []) if same_model(str(m.get("name", "")), model)), None)
    decode = describe(r.output_tokens_per_s for r in rs if r.ok and r.concurrency == 1)
    theory_facts = theory(facts, run_info, system.get("memory_bandwidth_bytes_per_s"), decode.get("median"),
                          resources["rss_bytes_peak"] if resources else None)
    return {
        "target": target,
        "model": model,
        "facts": facts,
        "cases": case_table(rs),
        "phases": {f"{s}/{c}": phase_shares([r for r in rs if (r.scenario, r.case) == (s, c) and r.concurrency == 1])
                   for s, c in sorted({(r.scenario, r.case) for r in rs if r.concurrency == 1})},
        "phases_overall": shares,
        "prompt_length": prompt_length_impact(rs),
        "temperature": temperature_impact(rs),
        "concurrency": conc,
        "resources": resources,
        "decode_tps": decode,
        "theory": theory_facts,
        "bottleneck": bottleneck(shares, resources, system.get("cpu_count") or 1, system.get("total_ram_bytes"), conc,
                                 theory_facts),
    }


def sections(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(target, model, numbers) of every report section, in report order."""
    return [(target, model, m) for target, t in summary["targets"].items() for model, m in t["models"].items()]
