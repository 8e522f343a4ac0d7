"""Series cost: how many series the exporter exports per target and per scenario/case/concurrency
combination, and what a real Prometheus needs to hold them, with histograms stored the classic way
(a series per bucket, plus _sum and _count) and as native histograms with custom buckets
(`convert_classic_histograms_to_nhcb: true`, as prometheus/prometheus.yml scrapes the exporter).

    python benchmarks/series_cost.py [--live 20] [--targets 10 100 1000] [--per-exporter 100] [--scrapes 5]

--live N (default 20): the exporter process with the shipped default scenario and N targets, all
on the fake Ollama of tests/kit, after every target's first run (so the series a run adds are
there), scraped by a fresh Prometheus once per storage form; head series and resident memory
(VmRSS) per target, minus an idle Prometheus. This is the figure the per-target goal is about.

--targets: the real exporter's exposition before any run (`Exporter` with the default scenario,
every series declared at start-up as it is in production, server stats polled once), rendered
once and served as a fixed body, so the measurement is Prometheus's cost alone. Targets are split
over exporters of `--per-exporter` targets each, as sharded replicas would be. `--targets` with no
number skips this part.

Prometheus is the first `prometheus` on PATH (`make` puts the build of scripts/install-prometheus.sh
first); it scrapes every 15 s with a fresh TSDB, and after `--scrapes` scrapes the table gives its
head series, resident memory and Go heap in use, minus an idle Prometheus.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml


from exporter.config import load_text
from exporter.service import Exporter
# tests/kit is the test and benchmark kit; it is not shipped, so run from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402

from tests.kit.exporters import ROOT, ExporterProcess, free_port, http_get, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama

SCRAPE_INTERVAL = 15
STORAGE = {"classic": {}, "nhcb": {"convert_classic_histograms_to_nhcb": True}}


def exposition(targets: list[str], scenario: dict) -> bytes:
    """The /metrics body of an exporter probing `targets` with `scenario` (never started)."""
    doc = {
        "targets": [{"name": t, "url": "http://127.0.0.1:9", "process_match": None} for t in targets],
        "limits": {"max_label_combinations": 10**7},
        "scenarios": [scenario],
    }
    exporter = Exporter(None, load_text(yaml.safe_dump(doc), "series-cost"))
    try:
        exporter.server_stats.poll()  # llm_server_up 0 per target: nothing listens on port 9
        return exporter.exposition.render()
    finally:
        exporter.shutdown(0)


def samples(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


class StaticMetrics:
    def __init__(self, body: bytes):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def prometheus_version(prom: str) -> str:
    out = subprocess.run([prom, "--version"], capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr).split("\n")[0].strip()


def prometheus_cost(ports: list[int], scrapes: int, storage: str = "classic") -> dict:
    """Start a Prometheus scraping `ports`; after `scrapes` scrapes, its head series and memory."""
    prom = shutil.which("prometheus")
    if not prom:
        raise SystemExit("prometheus is not on PATH: scripts/install-prometheus.sh builds it")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        job = {"job_name": "ollama-perf-exporter", **STORAGE[storage],
               "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL}s", "scrape_timeout": "10s"},
            "scrape_configs": [job] if ports else [],
        }
        Path(tmp, "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen([prom, f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: http_get(base + "/-/ready")[0] == 200, timeout=60, what="prometheus ready")
            time.sleep(SCRAPE_INTERVAL * scrapes + 2)
            metrics = {}
            for line in http_get(base + "/metrics", timeout=30)[1].splitlines():
                name, _, value = line.partition(" ")
                if name in ("prometheus_tsdb_head_series", "go_memstats_heap_inuse_bytes"):
                    metrics[name] = float(value)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kb = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
            return {"head_series": metrics["prometheus_tsdb_head_series"],
                    "heap": metrics["go_memstats_heap_inuse_bytes"], "rss": rss_kb * 1024}
        finally:
            proc.terminate()
            proc.wait(30)


def live_cost(n: int, scrapes: int, idle: dict, storages: list[str]) -> None:
    """The exporter process probing `n` targets on the fake Ollama, after each target's first run."""
    model = "llama3.2:1b"
    scenario_text = Path(ROOT, "scenarios", "default.yaml").read_text().replace(
        "${OLLAMA_PERF_MODEL:-llama3.2:1b}", model)
    with FakeOllama(Behavior(models=(model + ":latest" if ":" not in model else model,))) as fake, \
            tempfile.TemporaryDirectory() as tmp:
        doc = yaml.safe_load(scenario_text)
        doc["targets"] = [{"name": f"ollama-{i:04d}", "url": fake.url, "process_match": None} for i in range(n)]
        Path(tmp, "config.yaml").write_text(yaml.safe_dump(doc))
        env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
        exporter = ExporterProcess(["--config.file", f"{tmp}/config.yaml", "--results.file", f"{tmp}/results.jsonl"],
                                   env=env)
        try:
            def every_target_ran() -> bool:
                text = exporter.scrape()
                return sum(1 for line in text.splitlines()
                           if line.startswith("llm_probe_last_run_timestamp_seconds{")) >= n
            wait_for(every_target_ran, timeout=120, interval=1, what=f"a first run on each of {n} targets")
            body = exporter.scrape().encode()
            print(f"live: {n} targets on the fake Ollama, after each target's first run: "
                  f"{samples(body):,} samples in one scrape\n")
            print("| storage | Prometheus head series | per target | Prometheus RSS (minus idle) | per target | "
                  "Go heap in use (minus idle) |")
            print("|---|---|---|---|---|---|")
            for storage in storages:
                cost = prometheus_cost([exporter.port], scrapes, storage)
                series = cost["head_series"] - idle["head_series"]
                rss, heap = cost["rss"] - idle["rss"], cost["heap"] - idle["heap"]
                print(f"| {storage} | {cost['head_series']:,.0f} | {series / n:,.0f} | {rss / 2**20:,.1f} MiB | "
                      f"{rss / n / 2**10:,.0f} KiB | {heap / 2**20:,.1f} MiB |", flush=True)
        finally:
            exporter.stop()
    print()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--live", type=int, default=20, metavar="N",
                    help="targets of the live exporter on the fake Ollama (0: skip)")
    ap.add_argument("--targets", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--per-exporter", type=int, default=100, help="targets per exporter (shard)")
    ap.add_argument("--scrapes", type=int, default=5)
    ap.add_argument("--storage", nargs="+", choices=sorted(STORAGE), default=list(STORAGE),
                    help="histogram storage forms to measure (nhcb needs Prometheus 3)")
    args = ap.parse_args()
    os.environ.setdefault("OLLAMA_PERF_MODEL", "llama3.2:1b")
    scenario = yaml.safe_load(Path(ROOT, "scenarios", "default.yaml").read_text().replace(
        "${OLLAMA_PERF_MODEL:-llama3.2:1b}", "llama3.2:1b"))["scenarios"][0]
    combos = len(scenario["cases"]) * len(scenario.get("concurrency", [1]))

    one, two = samples(exposition(["a"], scenario)), samples(exposition(["a", "b"], scenario))
    bare = dict(scenario, cases={"only": scenario["cases"]["short"]})
    one_case = samples(exposition(["a"], bare))
    per_target = two - one
    per_combo = (one - one_case) / (combos - 1)
    print(f"default scenario: {combos} case/concurrency combinations per target")
    print(f"series per target at start: {per_target}; per case/concurrency combination: {per_combo:.0f}; "
          f"per target and scenario besides: {per_target - combos * per_combo:.0f}; "
          f"exporter-wide: {one - per_target}")

    prom = shutil.which("prometheus")
    print(f"Prometheus: {prometheus_version(prom) if prom else 'not on PATH'}")
    idle = prometheus_cost([], args.scrapes)
    print(f"idle Prometheus: {idle['rss'] / 2**20:.0f} MiB RSS, {idle['head_series']:.0f} head series\n")
    if args.live:
        live_cost(args.live, args.scrapes, idle, args.storage)
    if not args.targets:
        return 0
    print("| targets | exporters | series per exporter scrape | exposition per exporter | storage | "
          "Prometheus head series | Prometheus RSS (minus idle) | Go heap in use (minus idle) | RSS per series |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.targets:
        names = [f"ollama-{i:04d}" for i in range(n)]
        shards = [names[i:i + args.per_exporter] for i in range(0, n, args.per_exporter)]
        bodies = {}
        servers = []
        for shard in shards:
            key = len(shard)
            # Target names differ between shards; body size and series count do not.
            body = exposition(shard, scenario)
            bodies.setdefault(key, body)
            servers.append(StaticMetrics(body))
        try:
            for storage in args.storage:
                cost = prometheus_cost([s.port for s in servers], args.scrapes, storage)
                body = bodies[len(shards[0])]
                rss = cost["rss"] - idle["rss"]
                heap = cost["heap"] - idle["heap"]
                series = cost["head_series"] - idle["head_series"]
                print(f"| {n} | {len(shards)} | {samples(body):,} | {len(body) / 2**20:.1f} MiB | {storage} | "
                      f"{cost['head_series']:,.0f} | {rss / 2**20:,.0f} MiB | {heap / 2**20:,.0f} MiB | "
                      f"{rss / max(series, 1):,.0f} B |", flush=True)
        finally:
            for s in servers:
                s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
