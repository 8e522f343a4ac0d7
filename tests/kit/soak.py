"""Soak: the exporter process at ten times its normal probe rate against the fake server.

Samples the exporter's RSS, open file descriptors and threads between runs, and says
whether descriptors or threads ended above where they started.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import psutil

from .exporters import ExporterProcess, wait_for
from .fake_ollama import Behavior, FakeOllama

# The default scenario runs every 60 s; ten times that rate is every 6 s. Three cases and a
# concurrency-4 batch per run, with one failing scenario, so failures are soaked too.
CONFIG = """
targets: [{{name: soak, url: "{url}", process_match: null}}]
server_stats: {{interval: 2s}}
scenarios:
  - name: soak
    model: tiny
    schedule: {{interval: {interval}s}}
    timeout: 10s
    concurrency: [1, 4]
    cases:
      short: {{prompt: "What is AI?"}}
      medium: {{prompt: "Explain machine learning."}}
      long: {{prompt: "Describe a transformer in detail."}}
  - name: soak-missing
    model: no-such-model
    schedule: {{interval: {interval}s}}
    timeout: 10s
    cases: {{short: {{prompt: "hi"}}}}
"""


def sample(proc: psutil.Process) -> dict:
    with proc.oneshot():
        return {"t": time.time(), "rss_bytes": proc.memory_info().rss, "fds": proc.num_fds(),
                "threads": proc.num_threads()}


def requests_made(exp: ExporterProcess) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in exp.scrape().splitlines()
               if line.startswith("llm_probe_requests_total{"))


def idle_sample(proc: psutil.Process, exp: ExporterProcess, interval: float) -> dict:
    """Sample between runs (no probe in flight), so counts compare like with like."""
    deadline = time.monotonic() + interval * 2
    best = sample(proc)
    while time.monotonic() < deadline:
        s = sample(proc)
        if s["threads"] <= best["threads"] and s["fds"] <= best["fds"]:
            best = s
        time.sleep(0.05)
    return best


def soak(duration: float, interval: float, report_every: float, out=sys.stdout) -> dict:
    with FakeOllama(Behavior(tokens=16, token_interval=0.005, load_time=0.05)) as server, \
            tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "soak.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(url=server.url, interval=interval))
        exp = ExporterProcess(["--config.file", cfg, "--results.file", os.path.join(tmp, "results.jsonl"),
                               "--log.level", "info"])
        proc = psutil.Process(exp.proc.pid)
        try:
            wait_for(lambda: requests_made(exp) >= 11, timeout=60, what="first runs")
            start = idle_sample(proc, exp, interval)
            rows = [{"elapsed_s": 0, "requests": requests_made(exp), **start}]
            print(f"{'elapsed':>8} {'requests':>9} {'RSS MiB':>8} {'fds':>5} {'threads':>7}", file=out)
            print(f"{0:>8.0f} {rows[0]['requests']:>9.0f} {start['rss_bytes'] / 2**20:>8.1f} "
                  f"{start['fds']:>5} {start['threads']:>7}",
                  file=out, flush=True)
            t0 = time.monotonic()
            while time.monotonic() - t0 < duration:
                time.sleep(min(report_every, max(duration - (time.monotonic() - t0), 0)))
                s = idle_sample(proc, exp, interval)
                row = {"elapsed_s": time.monotonic() - t0, "requests": requests_made(exp), **s}
                rows.append(row)
                print(f"{row['elapsed_s']:>8.0f} {row['requests']:>9.0f} {s['rss_bytes'] / 2**20:>8.1f} "
                      f"{s['fds']:>5} {s['threads']:>7}",
                      file=out, flush=True)
        finally:
            code = exp.stop()
    end = rows[-1]
    result = {
        "duration_s": duration, "interval_s": interval, "rows": rows, "exit_code": code,
        "requests": end["requests"] - rows[0]["requests"],
        "fds_start": rows[0]["fds"], "fds_end": end["fds"],
        "threads_start": rows[0]["threads"], "threads_end": end["threads"],
        "rss_start_mib": rows[0]["rss_bytes"] / 2**20, "rss_end_mib": end["rss_bytes"] / 2**20,
        "rss_max_mib": max(r["rss_bytes"] for r in rows) / 2**20,
    }
    result["leak"] = result["fds_end"] > result["fds_start"] or result["threads_end"] > result["threads_start"]
    return result
