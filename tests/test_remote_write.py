"""Central storage by the existing engines: docker/compose.remote-write.yml runs Prometheus in agent
mode with remote_write. Here its own start script runs prometheus (the pinned version, on PATH) in agent mode against a
real exporter, writing to a second prometheus with the remote-write receiver on."""

import os
import re
import shutil
import subprocess

import pytest
import requests
import yaml

from tests.kit.exporters import ROOT, ThreadedExporter, free_port, scenario_yaml, wait_for

OVERRIDE = os.path.join(ROOT, "docker", "compose.remote-write.yml")
AGENT_CONFIG = os.path.join(ROOT, "prometheus", "agent.yml")
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
ENV_EXAMPLE = os.path.join(ROOT, ".env.example")


def _agent_service():
    with open(OVERRIDE, encoding="utf-8") as f:
        return yaml.safe_load(f)["services"]["prometheus-agent"]


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"expected {old!r} in the agent's start script or config"
    return text.replace(old, new)


def _query(base: str, promql: str) -> list:
    """The query's result vector; empty while the server is still starting."""
    try:
        r = requests.get(base + "/api/v1/query", params={"query": promql}, timeout=5)
    except requests.RequestException:
        return []
    return r.json()["data"]["result"] if r.status_code == 200 else []


@pytest.mark.prometheus
def test_agent_remote_writes_the_exporters_series_with_the_site_label(tmp_path, fake):
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is not on PATH (make test builds it: scripts/install-prometheus.sh)"
    config = tmp_path / "scenarios.yaml"
    config.write_text(scenario_yaml(fake.url))
    receiver_port, agent_port = free_port(), free_port()
    (tmp_path / "receiver.yml").write_text("global: {scrape_interval: 15s}\n")
    procs = []
    try:
        with ThreadedExporter(str(config)) as exporter:
            procs.append(subprocess.Popen(
                [prometheus, f"--config.file={tmp_path / 'receiver.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{receiver_port}", "--web.enable-remote-write-receiver"],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "receiver.log", "w")))
            # The compose file's agent config and start script, with this machine's addresses.
            agent_yml = open(AGENT_CONFIG, encoding="utf-8").read()
            agent_yml = _replace(agent_yml, "exporter:9877", exporter.base.split("//")[1])
            agent_yml = _replace(agent_yml, "localhost:9090", f"127.0.0.1:{agent_port}")
            agent_yml = _replace(agent_yml, "scrape_interval: 15s", "scrape_interval: 1s")
            agent_yml = _replace(agent_yml, "scrape_timeout: 10s", "scrape_timeout: 1s")
            (tmp_path / "agent.yml").write_text(agent_yml)
            service = _agent_service()
            assert service["entrypoint"] == ["/bin/sh", "-c"]
            script = service["command"][0].replace("$$", "$")
            for old, new in (("/etc/prometheus/agent.yml", str(tmp_path / "agent.yml")),
                             ("/tmp/agent.yml", str(tmp_path / "agent-filled.yml")),
                             ("/bin/prometheus", prometheus),
                             ("--storage.agent.path=/prometheus", f"--storage.agent.path={tmp_path / 'wal'}"),
                             ("0.0.0.0:9090", f"127.0.0.1:{agent_port}")):
                script = _replace(script, old, new)
            # A query string with & and | checks the escaping of sed's special characters.
            url = f"http://127.0.0.1:{receiver_port}/api/v1/write?via=agent&x=a|b"
            env = {"PATH": os.environ["PATH"], "PROMETHEUS_REMOTE_WRITE_URL": url, "OLLAMA_PERF_SITE": "lab-1"}
            procs.append(subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL,
                                          stderr=open(tmp_path / "agent.log", "w")))
            filled = wait_for(lambda: (tmp_path / "agent-filled.yml").exists()
                              and yaml.safe_load((tmp_path / "agent-filled.yml").read_text()), what="filled config")
            assert filled["remote_write"][0]["url"] == url and filled["global"]["external_labels"] == {"site": "lab-1"}

            receiver = f"http://127.0.0.1:{receiver_port}"
            try:
                found = wait_for(lambda: _query(receiver, 'llm_probe_success{site="lab-1"}'), timeout=60,
                                 interval=0.5, what="the exporter's series on the receiver")
            except AssertionError:
                raise AssertionError("agent log:\n" + (tmp_path / "agent.log").read_text()[-3000:]) from None
            (series,) = found
            assert series["metric"]["target"] == "t1" and series["metric"]["job"] == "ollama-perf-exporter"
            assert series["value"][1] == "1"
            # The agent forwards everything it scrapes, its own health included.
            assert wait_for(lambda: _query(receiver, 'prometheus_remote_storage_samples_total{site="lab-1"}')
                            or _query(receiver, 'up{job="prometheus-agent", site="lab-1"}'), interval=0.5,
                            what="the agent's own series")
            # And the agent keeps no queryable storage of its own.
            r = requests.get(f"http://127.0.0.1:{agent_port}/api/v1/query", params={"query": "up"}, timeout=5)
            assert r.status_code != 200 or r.json().get("status") != "success"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _compose_config(env_text: str, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(env_text)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GRAFANA_", "OLLAMA_", "PROMETHEUS_", "ALERTMANAGER_", "EXPORTER_", "COMPOSE_",
                                "DOCKER_"))}
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed: `make test` installs Debian's docker-compose package"
    return subprocess.run([exe, "--project-directory", ROOT, "--env-file", str(env_file), "-f", COMPOSE,
                           "-f", OVERRIDE, "config"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@pytest.mark.prometheus
def test_remote_write_override_is_valid_and_needs_the_url_and_site(tmp_path):
    example = open(ENV_EXAMPLE, encoding="utf-8").read()
    res = _compose_config(example, tmp_path)
    assert res.returncode != 0 and "PROMETHEUS_REMOTE_WRITE_URL" in res.stderr
    res = _compose_config(example + "PROMETHEUS_REMOTE_WRITE_URL=https://mimir.example/api/v1/push\n"
                                    "OLLAMA_PERF_SITE=lab-1\n", tmp_path)
    assert res.returncode == 0, res.stderr
    agent = yaml.safe_load(res.stdout)["services"]["prometheus-agent"]
    assert agent["environment"] == {"PROMETHEUS_REMOTE_WRITE_URL": "https://mimir.example/api/v1/push",
                                    "OLLAMA_PERF_SITE": "lab-1"}
    assert agent["read_only"] and agent["user"] != "0" and not agent.get("ports")


def test_env_example_documents_the_override_variables():
    text = "\n".join(line for line in open(OVERRIDE, encoding="utf-8") if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", open(ENV_EXAMPLE, encoding="utf-8").read(), re.M))
    assert used and used <= documented, sorted(used - documented)
