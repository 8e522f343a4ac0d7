"""Probe timing beside a busy Prometheus (issue 21, item 6: the monitoring must not disturb
what it measures).

A real Prometheus (the `prometheus` binary on PATH) scrapes, every second, an exposition as
large as 100 targets of the default scenario make (about 110,000 series; the state store's own
rendering, served from memory) and evaluates the project's recording rules every second: far
busier than a stack that scrapes every 15 s. Beside it, and without it, the engine and the plain
`ollama` client stream from the stream server, interleaved, and their TTFT error is compared.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time

from benchmarks.bench_stats import cell_summary
from benchmarks.clients import MONO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = 100


class _Exposition(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - the base class's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


class BusyPrometheus:
    """Prometheus scraping a large exposition every second and evaluating the rules every second."""

    def __init__(self, body: bytes):
        self.body = body

    def __enter__(self) -> "BusyPrometheus":
        _Exposition.body = self.body
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exposition)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.dir = tempfile.mkdtemp(prefix="busy-prometheus-")
        rules = os.path.join(ROOT, "prometheus", "rules", "recording.yml")
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            f.write(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                    f"rule_files: [{rules}]\n"
                    f"scrape_configs:\n  - job_name: exporter\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.http.server_address[1]}']\n")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={self.dir}/prometheus.yml",
             f"--storage.tsdb.path={self.dir}/data", "--web.listen-address=127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(15)  # a few scrapes in: the head block holds every series
        self.cpu0 = _cpu_seconds(self.proc.pid)
        self.t0 = MONO()
        return self

    def cores_used(self) -> float:
        return (_cpu_seconds(self.proc.pid) - self.cpu0) / max(MONO() - self.t0, 1e-9)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def section_beside_prometheus(server, clients, quick: bool) -> list:
    """TTFT and gap error at concurrency 1 and 8, quiet and beside a busy Prometheus."""
    import random

    from benchmarks.render_scale import fleet_config, run
    from benchmarks.workloads import interleaved, run_batches
    from tests.kit.exporters import ProbeStack

    if not shutil.which("prometheus"):
        return []
    stack = ProbeStack(config=fleet_config(TARGETS))
    rng = random.Random(2)
    for t in stack.store.keys("run"):
        run(stack, rng, t[0], time.time(), f"{t[0]}-r")
    body = stack.store.render()
    compared = [c for c in clients if c.name in ("engine", "ollama-py")]
    out = []

    def measure(condition: str, prometheus_cores=None) -> None:
        for level in (1, 8):
            requests = (60 if quick else 160) if level == 1 else (120 if quick else 400)
            cells = interleaved(compared, 2, lambda c, r, level=level, requests=requests: run_batches(
                server, c, level, max(level, requests // 2), n=10, rate=100.0, ttft_range=(0.010, 0.050),
                seed=level * 500 + r))
            for cell in cells.values():
                row = cell_summary(cell)
                row.update(section="beside_prometheus", condition=condition, concurrency=level,
                           series=body.count(b"\n") - body.count(b"\n#"),
                           prometheus_cores=prometheus_cores() if prometheus_cores else None)
                out.append(row)

    measure("quiet")
    with BusyPrometheus(body) as prom:
        measure("beside a busy Prometheus", prom.cores_used)
    return out
