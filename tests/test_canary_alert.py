"""LLMAnswerChanged against a real Prometheus: a canary that matched starts to miss, the alert fires.

The exporter runs in this process against the fake server; Prometheus scrapes it every second
and evaluates prometheus/rules/alerts.yml. The fake's answers are `t0 t1 ... t<n-1>`: the canary
expects `t5`, so shortening the answers to 3 tokens is a model that changed under the same name.
"""

import os
import shutil
import subprocess
import textwrap

import pytest
import requests
import yaml

from tests.kit.exporters import ROOT, ThreadedExporter, free_port, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama

pytestmark = pytest.mark.prometheus


def _alerts(base):
    try:
        body = requests.get(base + "/api/v1/alerts", timeout=5).json()
    except (requests.RequestException, ValueError):
        return []
    return [a for a in body.get("data", {}).get("alerts", []) if a["labels"].get("alertname") == "LLMAnswerChanged"]


def _query(base, q):
    try:
        return requests.get(base + "/api/v1/query", params={"query": q}, timeout=5).json()["data"]["result"]
    except (requests.RequestException, ValueError, KeyError):
        return []


def test_llm_answer_changed_fires_in_a_real_prometheus(tmp_path):
    prometheus_bin = shutil.which("prometheus")
    assert prometheus_bin, "prometheus is not on PATH (make test builds it: scripts/install-prometheus.sh)"
    with FakeOllama(Behavior(tokens=8, load_time=0)) as fake:
        config = tmp_path / "canary.yaml"
        config.write_text(textwrap.dedent(f"""\
            targets: [{{name: local, url: {fake.url}, process_match: null}}]
            scenarios:
              - name: canary
                model: tiny
                api: chat
                schedule: {{interval: 1s}}
                timeout: 5s
                cases:
                  capital: {{prompt: "What is the capital of France?", expect: {{contains: t5}}}}
            """))
        with ThreadedExporter(str(config), results_path=str(tmp_path / "results.jsonl")) as exporter:
            prom_port = free_port()
            base = f"http://127.0.0.1:{prom_port}"
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [os.path.join(ROOT, "prometheus", "rules", "alerts.yml")],
                "scrape_configs": [{"job_name": "ollama-perf-exporter",
                                    "static_configs": [{"targets": [exporter.base.split("//")[1]]}]}],
            }))
            with open(tmp_path / "prometheus.log", "wb") as log:
                prom = subprocess.Popen([prometheus_bin, f"--config.file={tmp_path / 'prometheus.yml'}",
                                         f"--storage.tsdb.path={tmp_path / 'data'}",
                                         f"--web.listen-address=127.0.0.1:{prom_port}"],
                                        stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: _query(base, 'llm_probe_answer_matched{case="capital"} == 1'), timeout=60,
                         interval=0.5, what="Prometheus to see the canary match")
                assert not _alerts(base)
                fake.behavior = Behavior(tokens=3, load_time=0)  # the same name, another answer
                firing = wait_for(lambda: [a for a in _alerts(base) if a["state"] == "firing"], timeout=60,
                                  interval=0.5, what="LLMAnswerChanged to fire")
                labels = firing[0]["labels"]
                assert (labels["case"], labels["scenario"], labels["target"], labels["severity"]) == (
                    "capital", "canary", "local", "warning")
                assert "t0 t1" not in str(firing[0])  # no answer text in labels or annotations
            finally:
                prom.terminate()
                prom.wait(10)
