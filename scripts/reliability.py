#!/usr/bin/env python3
"""The fault matrix and a short soak, as one table.

    .venv/bin/python scripts/reliability.py            # fake-server and real-Ollama faults, 60 s soak
    .venv/bin/python scripts/reliability.py --no-real  # without building/starting Ollama
    .venv/bin/python scripts/reliability.py --no-real --quick --soak 0  # what tests/test_reliability_script.py runs
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# tests/kit is the test and benchmark kit; it is not shipped, so run from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from tests.kit import faults
from tests.kit.exporters import ExporterProcess, free_port, scenario_yaml, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama
from tests.kit.real_ollama import OllamaServer, ollama_binary
from tests.kit.soak import soak


def scrape_latency(exp, n: int = 200) -> tuple[float, float]:
    import statistics
    import time

    import requests

    times = []
    with requests.Session() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            session.get(exp.base + "/metrics", timeout=10).raise_for_status()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, statistics.quantiles(times, n=100)[98] * 1000


def scrapes_while_probes_stall(stalled: int = 64, scrapes: int = 200) -> str:
    """/metrics latency with `stalled` probes hanging on a server that never sends a token, against idle."""
    import requests

    lines = []
    with FakeOllama(Behavior(load_time=0)) as server, tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "c.yaml")

        def write_config(timeout: str) -> None:
            with open(cfg, "w") as f:
                f.write(scenario_yaml(server.url, extra=f"concurrency: [{stalled}]\ntimeout: {timeout}\n"))

        def probes() -> int:
            # Server polls post to the same server (/api/show); count the probes only.
            return sum(1 for r in list(server.requests) if r.path == "/api/generate")

        write_config("60s")
        exp = ExporterProcess(["--config.file", cfg])
        try:
            wait_for(lambda: probes() >= stalled, timeout=60, what="first batch")
            wait_for(lambda: 'llm_probe_success{scenario="s",target="t1"} 1.0' in exp.scrape(), timeout=60, what="idle")
            p50, p99 = scrape_latency(exp, scrapes)
            lines.append(f"| idle exporter | {p50:.2f} ms | {p99:.2f} ms |")
            # Make every request of the next batch stall, and start that batch now. A reload keeps
            # the schedule of an unchanged scenario (the hourly run would come an hour later); a
            # changed one is a new job that runs at once, so the reload changes the timeout.
            server.behavior = Behavior(mode="stall", load_time=0, stall_seconds=120)
            before = probes()
            write_config("61s")
            reply = requests.post(exp.base + "/-/reload", timeout=10)
            reply.raise_for_status()
            wait_for(lambda: probes() >= before + stalled, timeout=60, what="stalled batch")
            p50, p99 = scrape_latency(exp, scrapes)
            # The row means something only if the batch was still hanging when the scrapes ended:
            # its timeouts would have turned success to 0.
            if 'llm_probe_success{scenario="s",target="t1"} 1.0' not in exp.scrape():
                raise AssertionError("the stalled batch timed out before the scrapes ended")
            lines.append(f"| {stalled} probes stalled | {p50:.2f} ms | {p99:.2f} ms |")
        finally:
            exp.stop()
            server.stop_event.set()
    return "\n".join(["| /metrics while | p50 | p99 |", "|---|---|---|"] + lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-real", action="store_true", help="skip the faults that need a real Ollama")
    ap.add_argument("--soak", type=float, default=60, help="soak seconds (0: none; default 60)")
    ap.add_argument("--quick", action="store_true",
                    help="8 stalled probes and 20 scrapes instead of 64 and 200: every step runs, "
                         "the figures are rough")
    args = ap.parse_args(argv)
    outcomes = faults.fake_faults()
    if not args.no_real:
        with tempfile.TemporaryDirectory() as models:
            binary = ollama_binary()
            seed = OllamaServer(binary, models, free_port(), os.path.join(models, "serve.log")).start()
            try:
                seed.create_model()
            finally:
                seed.stop()

            def make_server():
                return OllamaServer(binary, models, free_port(), os.path.join(models, "serve.log")).start()

            outcomes += faults.real_faults(make_server)
    print(faults.table(outcomes))
    ok = all(o.ok for o in outcomes)
    print()
    print(scrapes_while_probes_stall(8, 20) if args.quick else scrapes_while_probes_stall())
    if args.soak:
        print(f"\nsoak: {args.soak:.0f} s at 10x the default probe rate")
        result = soak(args.soak, 6, max(args.soak / 4, 5))
        print(f"fds {result['fds_start']} -> {result['fds_end']}, threads {result['threads_start']} -> "
              f"{result['threads_end']}, RSS {result['rss_start_mib']:.1f} -> {result['rss_end_mib']:.1f} MiB, "
              f"{result['requests']:.0f} requests")
        ok = ok and not result["leak"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
