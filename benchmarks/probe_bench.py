"""Measurement fidelity and footprint of the probe engine, against the plainest client.

    .venv/bin/python benchmarks/probe_bench.py [--quick] [--json PATH] [--markdown PATH]

Prints the tables and writes them to benchmarks/RESULTS.md, the raw numbers to
benchmarks/results.json (about 6 minutes; --quick about 3). --from-json PATH
prints the tables of an earlier run again.

This file is the driver. The parts, by role:
  clients.py      the streaming server wrapper and the three clients compared
  workloads.py    load patterns and the workloads run (WORKLOADS, in run order)
  footprint.py    the exporter process's own cost: /metrics scrape, memory
  bench_stats.py  what is measured (definitions), distributions, the goals
  render.py       RESULTS.md, one function per section (SECTIONS)

Adding a workload: write `section_x(server, clients, quick) -> list of row dicts` (in
workloads.py, or footprint.py when it measures the exporter process rather than the probes;
rows are what results.json keeps), and list it in workloads.WORKLOADS where it should run.
Then write `x(report) -> list of lines` in render.py, returning [] when report has no "x"
rows (an older results.json), and list it in render.SECTIONS where it should appear. A goal
to judge it by goes into bench_stats.TARGETS and evaluate's checks. --sections x runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

# Run as a script, this directory is on sys.path, not the repository: the parts are
# imported as the `benchmarks` package, and the stream server's child imports tests.kit.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from prometheus_client import disable_created_metrics  # noqa: E402

from benchmarks.bench_stats import capacity_max, evaluate  # noqa: E402
from benchmarks.clients import MONO, ROOT, EngineClient, OllamaPyClient, StreamServer  # noqa: E402
from benchmarks.footprint import memory_child  # noqa: E402
from benchmarks.render import render  # noqa: E402
from benchmarks.workloads import WORKLOADS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmark the probe engine's measurement error and footprint.")
    ap.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results.json"),
                    help="where to write raw results")
    ap.add_argument("--markdown", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"),
                    help="also write the printed tables to this file ('' for none)")
    ap.add_argument("--sections", default=",".join(w.key for w in WORKLOADS),
                    help="comma-separated subset to run (default: all)")
    ap.add_argument("--memory-child", choices=("engine", "ollama-py"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--probes", type=int, default=10000, help=argparse.SUPPRESS)
    ap.add_argument("--lines", type=int, default=100000, help=argparse.SUPPRESS)
    ap.add_argument("--from-json", metavar="PATH", help="print the tables of an earlier run's JSON and exit")
    args = ap.parse_args()
    disable_created_metrics()  # as the exporter's command line does

    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        report["targets"] = evaluate(report)
        print(render(report))
        return 0

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.url, args.probes, args.lines)))
        return 0

    sections = set(args.sections.split(","))
    started = MONO()
    report: dict = {"meta": {
        "mode": "quick" if args.quick else "full", "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }}
    for w in WORKLOADS:
        report[w.key] = []
    server = StreamServer()
    try:
        clients = [
            EngineClient("engine", server.url),
            EngineClient("engine-old", server.url, transport="http.client"),
            OllamaPyClient(server.url),
        ]
        # Warm both paths (imports, first connections) before measuring.
        for c in clients:
            for i in range(20):
                c.one(f"warm-{c.name}-{i}", 3, 1000.0, 0.0, 1)
        server.drain()
        for w in WORKLOADS:
            if w.key in sections:
                t = MONO()
                report[w.key] = w.run(server, clients, args.quick)
                print(f"[{w.key}: {MONO() - t:.0f} s]", file=sys.stderr, flush=True)
        for c in clients:
            c.close()
    finally:
        server.stop()
    report["capacity_max"] = capacity_max(report["capacity"])
    report["meta"]["elapsed_s"] = MONO() - started
    report["meta"]["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        report["targets"] = evaluate(report)
    except (StopIteration, KeyError, TypeError, IndexError):
        report["targets"] = []
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, default=str)
    text = render(report)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
