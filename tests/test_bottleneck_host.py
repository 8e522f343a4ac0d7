"""The CPU-host bottleneck verdict on real host series.

A real node_exporter (Debian's prometheus-node-exporter) and a real Prometheus loaded with
prometheus/rules/bottleneck.yml scrape this machine while something loads its CPUs:
- marker `prometheus`: CPU burners (one busy process per CPU) next to a fake Ollama whose
  /api/ps puts the model in system memory, as a CPU-only server does;
- markers `ollama` and `prometheus`: the real exporter probing the real Ollama, while other
  clients keep the server at work on every core.
There is no GPU here, so the GPU verdicts must be absent (not 0): nothing can be known of them.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from exporter.config import Target
from tests.kit.exporters import ROOT, free_port, server_stats, stop_process, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama
from tests.kit.host_exporters import node_exporter_binary, node_exporter_command
from tests.kit.real_ollama import keep_decoding

pytestmark = pytest.mark.prometheus

BOTTLENECK_RULES = os.path.join(ROOT, "prometheus", "rules", "bottleneck.yml")
BURNER = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"


def _spawn(args, log_path, **kw):
    log = open(log_path, "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, **kw)


class LivePrometheus:
    """node_exporter plus Prometheus (bottleneck.yml only, 1 s intervals) scraping `exporter_addr`."""

    def __init__(self, tmp_path, exporter_addr, target):
        self.tmp_path, self.exporter_addr, self.target = tmp_path, exporter_addr, target
        self.procs = []
        self.base = None

    def __enter__(self):
        import shutil

        prometheus_bin, node_bin = shutil.which("prometheus"), node_exporter_binary()
        assert prometheus_bin and node_bin, ("make test builds prometheus (scripts/install-prometheus.sh) "
                                           "and installs Debian's prometheus-node-exporter")
        node_addr, prom_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.procs.append(_spawn(node_exporter_command(node_bin, node_addr), self.tmp_path / "node-exporter.log"))
        cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [BOTTLENECK_RULES],
            "scrape_configs": [
                {"job_name": "ollama-perf-exporter", "static_configs": [{"targets": [self.exporter_addr]}]},
                # As docker/scrape/node-exporter.yml does: the host joins the Ollama target by name.
                {"job_name": "node-exporter", "static_configs": [{"targets": [node_addr],
                                                                  "labels": {"target": self.target}}]},
            ],
        }
        path = self.tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        self.procs.append(_spawn([prometheus_bin, f"--config.file={path}",
                                  f"--storage.tsdb.path={self.tmp_path / 'data'}",
                                  f"--web.listen-address={prom_addr}", "--log.level=warn"],
                                 self.tmp_path / "prometheus.log"))
        self.base = f"http://{prom_addr}"
        wait_for(lambda: _ok(self.base + "/-/ready"), timeout=30, what="Prometheus")
        return self

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            stop_process(proc)

    def query(self, q):
        body = requests.get(self.base + "/api/v1/query", params={"query": q}, timeout=10).json()
        assert body["status"] == "success", (q, body)
        return body["data"]["result"]

    def verdict(self):
        """{bottleneck: value} of the target's model(s), and the evidence, as a dict for reports."""
        out = {r["metric"]["bottleneck"]: float(r["value"][1])
               for r in self.query(f'target_model:llm_bottleneck:active{{target="{self.target}"}}')}
        for name in ("target:node_cpu_busy:ratio_rate2m", "target:node_pressure_cpu_waiting:ratio_rate2m",
                     "target:node_pressure_memory_waiting:ratio_rate2m",
                     "target_model:llm_server_model_vram:ratio_last10m",
                     "target_model:llm_probe_wait_duration:share_rate10m",
                     "target_model:llm_probe_queue_duration:share_rate10m",
                     "target_model:llm_probe_load_duration:share_rate10m"):
            for r in self.query(f'{name}{{target="{self.target}"}}'):
                out[name] = round(float(r["value"][1]), 3)
        return out


def _ok(url):
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_for_verdict(prom, want, timeout):
    seen = {}

    def reached():
        seen.update(prom.verdict())
        return all(seen.get(k) == v for k, v in want.items())

    try:
        wait_for(reached, timeout=timeout, interval=1, what=f"verdict {want}")
    except AssertionError:
        raise AssertionError(f"verdict never reached {want}; last seen {json.dumps(seen, indent=1)}") from None
    return seen


def test_cpu_burners_make_the_verdict_host_cpu(tmp_path):
    burn_s = 90
    with FakeOllama(Behavior(size_vram=0)) as fake:
        fake.loaded.add("tiny:latest")
        registry = CollectorRegistry()
        stats = server_stats([Target(name="cpu-host", url=fake.url, process_match=None)], registry)
        port = free_port()
        server, _ = start_http_server(port, "127.0.0.1", registry)
        stop = threading.Event()

        def poll_until_stopped():
            while not stop.is_set():
                stats.poll()
                stop.wait(0.5)

        threading.Thread(target=poll_until_stopped, daemon=True).start()
        burners = [_spawn([sys.executable, "-c", BURNER, str(burn_s)], tmp_path / f"burner{i}.log")
                   for i in range(os.cpu_count() or 1)]
        try:
            with LivePrometheus(tmp_path, f"127.0.0.1:{port}", "cpu-host") as prom:
                seen = _wait_for_verdict(prom, {"host_cpu": 1, "cpu_offload": 0, "none": 0}, timeout=60)
                assert (seen["target:node_cpu_busy:ratio_rate2m"] >= 0.9
                        or seen["target:node_pressure_cpu_waiting:ratio_rate2m"] >= 0.25)
                # No GPU exporter is scraped: the GPU verdicts cannot be known, so they are absent.
                assert "gpu_memory_bandwidth" not in seen and "gpu_compute" not in seen
                assert seen["target_model:llm_server_model_vram:ratio_last10m"] == 0
                sys.stderr.write(f"CPU-host verdict under CPU burners: {json.dumps(seen)}\n")
        finally:
            stop.set()
            for b in burners:
                stop_process(b)
            server.shutdown()


def _keep_cpus_busy(url, model, stop):
    """Other clients that keep a CPU-only server at work on every core. Decoding a 135M model
    leaves gaps (sampling, HTTP): measured here, Ollama used 1.7 of 2 cores and the host was 85%
    busy, under the rule's 90%. Two clients with ~1,200-token prompts (prefill runs all threads)
    kept it 97% busy."""
    threads = [threading.Thread(target=keep_decoding, args=(url, model, stop, 150, i), daemon=True)
               for i in range(2)]
    for t in threads:
        t.start()
    return threads


def _start_exporter(tmp_path, server, model):
    import re

    exporter_addr = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "scenarios.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        targets:
          - name: real
            url: {server.url}
            process_match: '{re.escape(server.binary)} serve'
        server_stats: {{interval: 1s}}
        scenarios:
          - name: decode
            model: {model}
            schedule: {{interval: 3s}}
            timeout: 60s
            keep_alive: 10m
            options: {{temperature: 0, seed: 42, num_predict: 32}}
            cases:
              short: {{prompt: "What is AI?"}}
        """))
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
    exporter = _spawn([sys.executable, "-m", "exporter", "--config.file", str(cfg),
                       "--web.listen-address", exporter_addr,
                       "--results.file", str(tmp_path / "results.jsonl")], tmp_path / "exporter.log", env=env)
    return exporter, exporter_addr


@pytest.mark.ollama
def test_real_ollama_verdict_on_this_cpu_host(real_ollama, tmp_path):
    from tests.kit.real_ollama import MODEL

    exporter, exporter_addr = _start_exporter(tmp_path, real_ollama, MODEL)
    stop = threading.Event()
    try:
        with LivePrometheus(tmp_path, exporter_addr, "real") as prom:
            # The exporter alone: its probes every 3 s are the only load Ollama sees.
            # (The first run loads the model and warms up: on two busy cores that takes a while.)
            wait_for(lambda: "queueing" in prom.verdict(), timeout=240, interval=2, what="probe results")
            time.sleep(15)
            alone = prom.verdict()
            # Other clients keep the server at work on every core between the probes.
            _keep_cpus_busy(real_ollama.url, MODEL, stop)
            # The rule reads 2-minute CPU rates: the load must fill one window, plus slack.
            _wait_for_verdict(prom, {"host_cpu": 1, "cpu_offload": 0, "none": 0}, timeout=200)
            time.sleep(30)  # let the 10-minute shares see the contended runs
            loaded = prom.verdict()
            assert loaded["host_cpu"] == 1
            sys.stderr.write(f"real Ollama, probes only: {json.dumps(alone)}\n"
                             f"real Ollama, with other clients keeping it busy: {json.dumps(loaded)}\n")
            for verdict in (alone, loaded):
                # No GPU is scraped: no GPU verdict; the model runs on the CPU: ratio 0, not "offloaded".
                assert "gpu_memory_bandwidth" not in verdict and "gpu_compute" not in verdict
                assert verdict["target_model:llm_server_model_vram:ratio_last10m"] == 0
                assert {"cpu_offload", "host_cpu", "host_memory", "queueing", "cold_load", "none"} <= set(verdict)
    finally:
        stop.set()
        stop_process(exporter)


@pytest.mark.ollama
def test_real_ollama_with_one_parallel_slot_names_queueing(tmp_path, monkeypatch):
    """OLLAMA_NUM_PARALLEL=1 and a second client decoding long answers: the probe waits for the
    slot inside the server's total_duration, and the verdict says queueing."""
    from tests.kit.real_ollama import MODEL, OllamaServer, ollama_binary

    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "1")
    models = tmp_path / "models"
    models.mkdir()
    server = OllamaServer(ollama_binary(), str(models), free_port(), str(tmp_path / "serve.log")).start()
    stop = threading.Event()
    exporter = None
    try:
        server.create_model()
        exporter, exporter_addr = _start_exporter(tmp_path, server, MODEL)
        second = threading.Thread(target=keep_decoding, args=(server.url, MODEL, stop), daemon=True)
        with LivePrometheus(tmp_path, exporter_addr, "real") as prom:
            wait_for(lambda: "queueing" in prom.verdict(), timeout=240, interval=2, what="probe results")
            second.start()
            seen = _wait_for_verdict(prom, {"queueing": 1}, timeout=150)
            sys.stderr.write(f"real Ollama, OLLAMA_NUM_PARALLEL=1, second client: {json.dumps(seen)}\n")
            assert seen["target_model:llm_probe_wait_duration:share_rate10m"] >= 0.2
    finally:
        stop.set()
        if exporter is not None:
            stop_process(exporter)
        server.stop()
