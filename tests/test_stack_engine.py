"""`docker compose up`, for real: the project's docker-compose.yml in a Docker engine.

The engine is a private dockerd (tests/kit/docker_engine.py). No image registry is
reachable here, so the upstream images are stand-ins under the same names and tags
(docker/standins/build.sh); the exporter's image is built by compose from our Dockerfile.
docker/compose.stack-test.yml only leaves Grafana out (no Grafana build exists here).

The tests run in file order on one stack, as a user's day goes: first start, a second server
that is down, scrapes and rules, Ollama restarted and killed, an alert, the exporter
recreated (an upgrade), the namespace holder restarted, down and up.
Once the images are ready the stack has a deadline (DEADLINE_S): past it the engine is
stopped, which fails whatever still waits on it; the engine is stopped at the end whatever
happened. (Building the images has its own timeout: a first run adds debootstrap.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kit.docker_engine import ComposeProject, DockerEngine
from tests.kit.exporters import ROOT, free_port, http_get, wait_for

pytestmark = pytest.mark.stack

DEADLINE_S = 480
PROJECT = "opestack"
MODEL = "smollm2-135m"
COMPOSE_FILES = ["docker-compose.yml", "docker/compose.stack-test.yml"]
# Nothing listens on this port of the exporter's own container: a second Ollama server that
# is down, on a name that always resolves, without any traffic leaving the engine's networks.
# (A name that does not resolve waits for the host's DNS, which the engine cannot reach.)
SECOND_URL = "http://exporter:11434"

SCENARIO = f"""\
targets:
  - name: local
    url: http://ollama:11434
  - name: second
    url: {SECOND_URL}
    process_match: null
server_stats: {{interval: 2s}}
scenarios:
  - name: stack
    model: ${{OLLAMA_PERF_MODEL}}
    schedule: {{interval: 10s}}
    keep_alive: 10m
    timeout: 30s
    options: {{temperature: 0, seed: 42, num_predict: 8}}
    slo: {{ttft: 10s, objective: 99%}}
    cases:
      short: {{prompt: "What is AI?"}}
      medium: {{prompt: "Explain machine learning in one sentence."}}
"""


def _ollama_binary() -> str:
    # The current release, the one docker-compose.yml pins: build.sh copies its bin/ollama and the
    # lib/ollama beside it (llama-server and the GGML libraries) into the stand-in image.
    from tests.kit.real_ollama import ollama_binary
    return ollama_binary("current")


class Stack:
    def __init__(self, engine: DockerEngine, compose: ComposeProject, ports: dict, started: float):
        self.engine, self.compose, self.ports, self.started = engine, compose, ports, started

    def url(self, service: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}{path}"

    def metrics(self) -> dict:
        """{(name, frozenset(labels)): value} of the exporter's /metrics; {} when it does not answer."""
        status, body = http_get(self.url("exporter", "/metrics"))
        if status != 200:
            return {}
        out = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def values(self, name: str, **labels) -> list[float]:
        want = set(labels.items())
        return [v for (n, ls), v in self.metrics().items() if n == name and want <= ls]

    def query(self, expr: str) -> list:
        status, body = http_get(self.url("prometheus", "/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def exec(self, service: str, *cmd: str, check=True) -> subprocess.CompletedProcess:
        return self.engine.docker(["exec", self.compose.container(service), *cmd], check=check)

    def results_lines(self) -> list[str]:
        return self.exec("exporter", "cat", "/var/lib/ollama-perf-exporter/results.jsonl").stdout.splitlines()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    t0 = time.monotonic()
    engine = DockerEngine().start()
    timer = threading.Timer(DEADLINE_S, engine.stop)
    timer.daemon = True
    work = tmp_path_factory.mktemp("stack")
    scenarios = work / "scenarios"
    scenarios.mkdir()
    (scenarios / "stack.yaml").write_text(SCENARIO)
    # Bind-mounted into containers that run as other users.
    scenarios.chmod(0o755)
    (scenarios / "stack.yaml").chmod(0o644)
    ports = {name: free_port() for name in ("exporter", "prometheus", "alertmanager", "ollama", "grafana")}
    env_file = work / ".env"
    env_file.write_text(
        f"OLLAMA_PERF_MODEL={MODEL}\n"
        f"OLLAMA_PERF_SCENARIO_DIR={scenarios}\n"
        "OLLAMA_PERF_SCENARIO_FILE=stack.yaml\n"
        f"EXPORTER_PORT={ports['exporter']}\nPROMETHEUS_PORT={ports['prometheus']}\n"
        f"ALERTMANAGER_PORT={ports['alertmanager']}\nOLLAMA_PORT={ports['ollama']}\nGRAFANA_PORT={ports['grafana']}\n"
    )
    compose = ComposeProject(engine, ROOT, PROJECT, env_file, COMPOSE_FILES)
    try:
        build = subprocess.run(
            [os.path.join(ROOT, "docker", "standins", "build.sh"), _ollama_binary()],
            env={**engine.env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
        assert build.returncode == 0, build.stderr[-3000:]
        # Leftovers of an interrupted earlier run go first.
        compose.run(["down", "--volumes", "--remove-orphans"])
        compose.run(["build"], timeout=600)
        print(f"\nstack: engine and images ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        timer.start()
        started = time.monotonic()
        compose.run(["up", "-d"])
        yield Stack(engine, compose, ports, started)
    finally:
        timer.cancel()
        try:
            if engine.proc and engine.proc.poll() is None:
                logs = compose.run(["logs", "--no-color", "--tail", "40"], check=False, timeout=60).stdout
                (work / "compose.log").write_text(logs)
                compose.run(["down", "--volumes", "--remove-orphans"], check=False, timeout=120)
        finally:
            engine.stop()
        print(f"stack: whole module took {time.monotonic() - t0:.0f}s (logs: {work / 'compose.log'})", file=sys.stderr)


def _running(stack: Stack, service: str) -> bool:
    return bool(stack.compose.state(service).get("Running"))


# ---------------------------------------------------------------- the scenarios, in order


def test_first_start_reports_while_the_model_is_prepared(stack):
    # The exporter answers before any model exists, and says why its probes fail.
    wait_for(lambda: stack.values("llm_probe_request_failures_total", target="local", reason="model_not_found")
             and max(stack.values("llm_probe_request_failures_total", target="local", reason="model_not_found")) > 0,
             timeout=120, interval=1, what="model_not_found failures of the local target")
    probe_success = stack.values("llm_probe_success", target="local")
    assert probe_success and max(probe_success) == 0
    # model-pull cannot reach a registry here: it fails on its own, nothing waits for it, and
    # it never tries the second server.
    wait_for(lambda: stack.compose.state("model-pull").get("Status") == "exited", timeout=180, interval=1,
             what="model-pull to finish")
    pull_log = stack.compose.run(["logs", "--no-color", "model-pull"]).stdout
    assert f"local: {MODEL}: pull failed" in pull_log, pull_log
    assert "second: not the local server" in pull_log, pull_log
    assert _running(stack, "exporter")

    # The model from the shipped GGUF, created in the running Ollama.
    from tests.kit.real_ollama import model_gguf
    ollama = stack.compose.container("ollama")
    stack.engine.docker(["cp", model_gguf(), f"{ollama}:/tmp/model.gguf"])
    stack.exec("ollama", "sh", "-c", "printf 'FROM /tmp/model.gguf\\n' > /tmp/Modelfile")
    stack.exec("ollama", "ollama", "create", MODEL, "-f", "/tmp/Modelfile")
    wait_for(lambda: stack.values("llm_probe_success", target="local") == [1.0],
             timeout=90, interval=1, what="a successful probe of the local target")
    assert stack.values("llm_server_up", target="local") == [1.0]
    assert stack.values("llm_server_process_resident_memory_bytes", target="local")[0] > 0


def test_a_second_server_that_is_down_reports_connection_and_nothing_else_suffers(stack):
    wait_for(lambda: sum(stack.values("llm_probe_request_failures_total", target="second", reason="connection")) > 0,
             timeout=60, interval=1, what="connection failures of the second target")
    assert stack.values("llm_server_up", target="second") == [0.0]
    assert stack.values("llm_server_process_resident_memory_bytes", target="second") == []
    assert stack.values("llm_server_up", target="local") == [1.0]
    assert set(stack.values("llm_probe_success", target="local")) == {1.0}


def test_prometheus_scrapes_the_exporter_and_every_recording_rule_has_data(stack):
    wait_for(lambda: [r for r in stack.query('up{job="ollama-perf-exporter"}') if r["value"][1] == "1"],
             timeout=60, interval=1, what="Prometheus scraping the exporter")
    status, body = http_get(stack.url("prometheus", "/api/v1/rules?type=record"))
    assert status == 200
    names = sorted({r["name"] for g in json.loads(body)["data"]["groups"] for r in g["rules"]})
    assert len(names) >= 15, names
    # GPU and host evidence comes from DCGM and AMD's exporter, which only the override files
    # start (docker/compose.gpu.yml, compose.rocm.yml), and from node_exporter, which this test's
    # docker/compose.stack-test.yml leaves out (no stand-in image): without them those rules have
    # nothing to record, by design. Everything built on our own series must.
    # bottleneck.yml's history group runs every 5 minutes at an offset Prometheus staggers within
    # those 5 minutes: it may first evaluate after this test's 2-minute wait.
    optional = [n for n in names if n.startswith(("target:gpu_", "target:node_")) or "per_joule" in n
                or n == "target_model:llm_server_model_vram_ratio:max_over_time5m"]
    assert len(optional) < len(names) / 2, optional
    names = [n for n in names if n not in optional]

    def missing():
        return [n for n in names if not stack.query(n)] or None

    try:
        wait_for(lambda: not missing(), timeout=120, interval=3, what="data in every recording rule")
    except AssertionError:
        pytest.fail(f"recording rules without data: {missing()}")


def _exporter_identity(stack: Stack) -> tuple:
    state = stack.compose.state("exporter")
    return stack.compose.container("exporter"), state["StartedAt"], state["Running"]


def _recovered(stack: Stack) -> bool:
    return (stack.values("llm_server_up", target="local") == [1.0]
            and bool(stack.values("llm_server_process_resident_memory_bytes", target="local")))


def _probes_again(stack: Stack, since: float) -> bool:
    last = stack.values("llm_probe_last_run_timestamp_seconds", target="local")
    return bool(last) and last[0] > since and set(stack.values("llm_probe_success", target="local")) == {1.0}


def test_restarting_ollama_leaves_the_exporter_running(stack):
    before = _exporter_identity(stack)
    old_pid = stack.compose.state("ollama")["Pid"]
    stack.compose.run(["restart", "ollama"])
    assert stack.compose.state("ollama")["Pid"] != old_pid
    assert _exporter_identity(stack) == before
    wait_for(lambda: _recovered(stack), timeout=60, interval=1, what="server metrics after the restart")
    since = time.time()
    wait_for(lambda: _probes_again(stack, since), timeout=60, interval=1, what="a good probe after the restart")
    assert _exporter_identity(stack) == before


def test_killing_ollama_is_reported_and_recovered(stack):
    before = _exporter_identity(stack)
    stack.compose.run(["kill", "ollama"])
    wait_for(lambda: stack.values("llm_server_up", target="local") == [0.0], timeout=30, interval=0.5,
             what="llm_server_up 0 for the local target")
    assert stack.values("llm_server_process_resident_memory_bytes", target="local") == []
    assert _exporter_identity(stack) == before
    stack.compose.run(["start", "ollama"])
    wait_for(lambda: _recovered(stack), timeout=60, interval=1, what="server metrics after start")
    since = time.time()
    wait_for(lambda: _probes_again(stack, since), timeout=60, interval=1, what="a good probe after start")
    assert _exporter_identity(stack) == before
    # The namespace's PID 1 reaps what Ollama's exits orphaned into it.
    zombies = stack.exec("exporter", "python", "-c",
                         "import psutil; print(sum(p.status() == 'zombie' for p in psutil.process_iter()))")
    assert zombies.stdout.strip() == "0"


def test_an_alert_reaches_alertmanager(stack):
    # The second server has been down since the start: OllamaServerDown (for: 2m) fires for it.
    def active():
        status, body = http_get(stack.url("alertmanager", "/api/v2/alerts"))
        return json.loads(body) if status == 200 else []

    def alert():
        return [a for a in active() if a["labels"].get("alertname") == "OllamaServerDown"
                and a["labels"].get("target") == "second"]

    alerts = wait_for(alert, timeout=max(30.0, stack.started + 240 - time.monotonic()), interval=2,
                      what="OllamaServerDown for the second target in Alertmanager")
    assert alerts[0]["labels"]["severity"] == "critical"
    assert alerts[0]["status"]["state"] == "active"
    names = {a["labels"]["alertname"] for a in active()}
    # The first start (model not there yet) and Ollama's restarts never made the exporter
    # look down, and the local server's short outages were shorter than the alert's `for`.
    assert "LLMExporterDown" not in names, names
    assert not [a for a in active() if a["labels"].get("alertname") == "OllamaServerDown"
                and a["labels"].get("target") == "local"]


def test_recreating_the_exporter_leaves_ollama_alone(stack):
    # An upgrade of the exporter (a rebuilt image) recreates its container: Ollama keeps running.
    ollama = stack.compose.container("ollama"), stack.compose.state("ollama")["StartedAt"]
    old_exporter = stack.compose.container("exporter")
    stack.compose.run(["up", "-d", "--force-recreate", "--no-deps", "exporter"])
    assert stack.compose.container("exporter") != old_exporter
    assert (stack.compose.container("ollama"), stack.compose.state("ollama")["StartedAt"]) == ollama
    wait_for(lambda: _recovered(stack), timeout=60, interval=1, what="server metrics from the new exporter")
    since = time.time()
    wait_for(lambda: _probes_again(stack, since), timeout=60, interval=1, what="a good probe from the new exporter")


def test_restarting_pidns_stops_both_and_up_brings_them_back(stack):
    # What the README says about the namespace holder itself.
    stack.compose.run(["restart", "pidns"])
    stack.compose.run(["up", "-d"])
    assert _running(stack, "ollama") and _running(stack, "exporter")
    wait_for(lambda: _recovered(stack), timeout=90, interval=1, what="server metrics after pidns restarted")
    since = time.time()
    wait_for(lambda: _probes_again(stack, since), timeout=60, interval=1, what="a good probe after pidns restarted")


def test_down_and_up_keeps_the_volumes_and_appends_to_the_results(stack):
    lines = stack.results_lines()
    assert lines
    scraped = float(stack.query('count_over_time(up{job="ollama-perf-exporter"}[1h])')[0]["value"][1])
    stack.compose.run(["down"])
    stack.compose.run(["up", "-d"])
    since = time.time()
    # The model survived in Ollama's volume: probes succeed with no new `ollama create`.
    wait_for(lambda: _probes_again(stack, since), timeout=120, interval=1, what="a good probe after down and up")
    after = stack.results_lines()
    assert after[:len(lines)] == lines and len(after) > len(lines)
    for line in after:
        json.loads(line)
    # Prometheus kept its samples from before the down.
    # Prometheus kept its samples from before the down: the count goes on from there, it does
    # not start again from zero (a `up == 1` answered from before the down is not a new scrape).
    def scrapes() -> float:
        try:
            result = stack.query('count_over_time(up{job="ollama-perf-exporter"}[1h])')
        except (AssertionError, OSError):  # Prometheus still starting
            return 0.0
        return float(result[0]["value"][1]) if result else 0.0

    wait_for(lambda: scrapes() > scraped, timeout=90, interval=1, what="new scrapes counted beside the old ones")
