#!/usr/bin/env python3
"""`/metrics` at fleet scale: the state store's rendering for N targets x the default scenario.

Builds the exporter's store for N targets probed by scenarios/default.yaml's shape (3 cases,
concurrency 1, an SLO), feeds every case a day of hourly runs (so baselines, noise and
thresholds exist) plus a cold start and a failure, then times on this process's one thread:

- first: the first rendering, every key new (start-up, or a fleet file that adds every target);
- after a run: one target's run ended, so its keys render again; the rest is cached text;
- unchanged: nothing changed since the last rendering;
- gzip: the body compressed, as the first gzip scrape after a rendering does.

`--before` also times prometheus_client's generate_latest over the same samples, through
the store's Collector interface (parsing included, so it is an upper bound of the old path;
benchmarks/RESULTS.md section 4 has the old exporter's own numbers).
Prints a Markdown table; `make bench` puts it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/kit is not shipped

from exporter.config import load_text  # noqa: E402
from exporter.exposition import _gzip  # noqa: E402
from exporter.results import BatchSummary, ProbeResult, RunSummary  # noqa: E402
from tests.kit.exporters import ProbeStack  # noqa: E402

T0 = 1_780_000_000.0
CASES = ("short", "medium", "long")


def fleet_config(targets: int):
    doc = {
        "targets": [{"name": f"ollama-{i:04d}", "url": "http://127.0.0.1:9", "process_match": None}
                    for i in range(targets)],
        "limits": {"max_label_combinations": 10**7},
        "scenarios": [{
            "name": "default", "model": "llama3.2:1b", "schedule": {"interval": "60s"},
            "slo": {"ttft": "5s", "time_per_output_token": "250ms", "request_duration": "30s", "objective": "99%"},
            "cases": {c: {"prompt": c} for c in CASES},
        }],
    }
    return load_text(yaml.safe_dump(doc), "render-scale")


def _record(rng, target, case, run_id, t, start="warm", ok=True) -> ProbeResult:
    load = rng.uniform(1, 3) if start == "cold" else rng.uniform(0.002, 0.01)
    ttft = rng.lognormvariate(-1.5, 0.1) + load
    n = 32
    return ProbeResult(
        target=target, scenario="default", model="llama3.2:1b", case=case, concurrency=1, start=start, run_id=run_id,
        started_at=t - 3, ended_at=t, ok=ok, reason=None if ok else "timeout", ttft_s=ttft if ok else None,
        request_duration_s=ttft + 2.5 if ok else None, inter_token_gaps_s=[rng.uniform(0.05, 0.1) for _ in range(n - 1)]
        if ok else [], load_duration_s=load, prompt_eval_count=40, prompt_eval_duration_s=0.1, eval_count=n,
        eval_duration_s=2.4, total_duration_s=ttft + 2.4)


def run(stack: ProbeStack, rng, target: str, t: float, run_id: str, history: bool = False) -> None:
    for case in CASES:
        starts = ("warm",) if history else ("cold", "warm")
        for start in starts:
            r = _record(rng, target, case, run_id, t, start)
            for sink in stack.sinks:
                sink.on_result(r)
        if not history:
            for sink in stack.sinks:
                sink.on_result(_record(rng, target, case, run_id, t, ok=False))
        for sink in stack.sinks:
            sink.on_batch(BatchSummary(target, "default", "llama3.2:1b", case, 1, 3, 1, 12.5))
    for sink in stack.sinks:
        sink.on_run(RunSummary(target, "default", run_id, t - 10, t, 9, 1))


def measure(targets: int, history_runs: int, before: bool) -> dict:
    rng = random.Random(1)
    config = fleet_config(targets)
    stack = ProbeStack(config=config, clock=lambda: T0)
    names = [t.name for t in config.targets]
    for name in names:
        for k in range(history_runs):
            run(stack, rng, name, T0 - 3600 * (history_runs - k), f"{name}-h{k}", history=True)
        run(stack, rng, name, T0, f"{name}-now")
    store = stack.store
    gc.collect()
    t = time.perf_counter()
    chunks = store.render_chunks()
    first = time.perf_counter() - t
    body = sum(map(len, chunks))
    series = sum(c.count(b"\n") - c.count(b"\n#") - (1 if c.startswith(b"#") else 0) for c in chunks)
    after = []
    for i in range(5):
        run(stack, rng, names[i * len(names) // 5], T0 + 60 * (i + 1), f"next{i}")
        t = time.perf_counter()
        store.render_chunks()
        after.append(time.perf_counter() - t)
    t = time.perf_counter()
    store.render_chunks()
    unchanged = time.perf_counter() - t
    t = time.perf_counter()
    zipped = sum(map(len, _gzip(chunks)))
    gz = time.perf_counter() - t
    out = {"targets": targets, "keys": len(store.keys("case")), "series": series, "bytes": body, "gzip_bytes": zipped,
           "first_s": first, "after_run_s": sorted(after)[len(after) // 2], "unchanged_s": unchanged, "gzip_s": gz}
    if before:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(store)
        t = time.perf_counter()
        generate_latest(registry)
        out["prometheus_client_s"] = time.perf_counter() - t
    return out


def table(rows: list[dict]) -> str:
    head = ("| targets | case keys | series | MB | gzip MB | first render s | after a run s | unchanged s | gzip s |"
            + (" prometheus_client s |" if "prometheus_client_s" in rows[0] else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['targets']} | {r['keys']} | {r['series']} | {r['bytes'] / 1e6:.1f} "
                f"| {r['gzip_bytes'] / 1e6:.2f} | {r['first_s']:.2f} | {r['after_run_s']:.3f} "
                f"| {r['unchanged_s']:.3f} | {r['gzip_s']:.2f} |")
        if "prometheus_client_s" in r:
            line += f" {r['prometheus_client_s']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--history-runs", type=int, default=24)
    p.add_argument("--before", action="store_true", help="also time prometheus_client's generate_latest")
    args = p.parse_args(argv)
    rows = [measure(n, args.history_runs, args.before) for n in args.targets]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
