"""The exporter as a whole: HTTP endpoints, reload, scrape lint, and the real process with signals."""

import shutil
import signal
import subprocess
import sys

import pytest
import requests

from exporter.config import load_file
from exporter.results import read_results
from exporter.service import Exporter
from tests.kit.exporters import ROOT, ExporterProcess, ThreadedExporter, sample_value, scenario_yaml, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama

# The server-stats families, which the golden exposition (tests/test_golden.py) leaves out.
SERVER_FAMILIES = ["llm_server_up", "llm_server_info", "llm_server_model_loaded_bytes", "llm_server_model_vram_bytes"]
# Families of cases with turns (a conversation) or expect (a canary) only: a plain case has none of their samples.
CONVERSATION_AND_CANARY = ("llm_probe_prompt_cache", "llm_probe_prompt_cached", "llm_probe_turn_", "llm_probe_answer_")
# Families whose samples need a case's history (a baseline, a threshold): served, but empty after one run.
NEEDS_HISTORY = ("llm_probe_baseline_", "llm_probe_regression_")


@pytest.fixture
def running_exporter(tmp_path, fake):
    """An exporter with its HTTP server on a free port, probing the fake server; stopped afterwards."""
    config_path = tmp_path / "scenarios.yaml"
    config_path.write_text(scenario_yaml(
        fake.url, extra="repeats: 2\nconcurrency: [1, 2]\nslo: {ttft: 5s, objective: 99%}\n",
        top_extra="server_stats: {interval: 1s}\n",
        cases={"short": "hi", "long": "a much longer prompt " * 10},
    ))
    with ThreadedExporter(str(config_path), results_path=str(tmp_path / "results.jsonl")) as running:
        exporter = running.exporter
        wait_for(lambda: sample_value(exporter, "llm_probe_success", {"target": "t1", "scenario": "s"})
                 is not None, what="first scenario run")
        yield exporter, running.base, config_path


def test_every_golden_family_is_served(running_exporter, golden_families):
    exporter, base, _ = running_exporter
    wait_for(lambda: "llm_server_model_loaded_bytes{" in requests.get(base + "/metrics", timeout=5).text,
             what="server stats")
    text = requests.get(base + "/metrics", timeout=5).text
    for name in golden_families + SERVER_FAMILIES:
        assert f"\n# TYPE {name} " in text, name
    # One run: samples of every family that needs no history (baselines need six runs) and no
    # local server process (the fake server is a thread of this test).
    for name in golden_families:
        if not name.startswith(("llm_server_process", *NEEDS_HISTORY, *CONVERSATION_AND_CANARY)):
            assert f"\n{name}" in text, name
    assert 'llm_server_info{target="t1",version="0.11.4"} 1.0' in text
    assert 'llm_probe_success{scenario="s",target="t1"} 1.0' in text
    # Labels never carry prompt text.
    assert "much longer" not in text and '="hi"' not in text


def test_endpoints(running_exporter):
    exporter, base, _ = running_exporter
    home = requests.get(base + "/", timeout=5)
    assert home.status_code == 200 and 'href="metrics"' in home.text and "tiny" in home.text
    assert requests.get(base + "/-/healthy", timeout=5).status_code == 200
    assert requests.get(base + "/-/ready", timeout=5).status_code == 200
    assert requests.get(base + "/-/reload", timeout=5).status_code == 405
    assert requests.get(base + "/nope", timeout=5).status_code == 404


def test_reload_refuses_a_bad_config_and_keeps_the_old_one(running_exporter, fake):
    exporter, base, config_path = running_exporter
    good = config_path.read_text()
    config_path.write_text(good.replace("model: tiny", "model: tiny\n    bogus_key: 1"))
    r = requests.post(base + "/-/reload", timeout=5)
    assert r.status_code == 500 and "scenarios[0].bogus_key: unknown key" in r.text
    assert sample_value(exporter, "llm_exporter_config_last_reload_successful") == 0
    assert exporter.config.scenarios[0].name == "s"
    assert exporter.scheduler.next_runs()["probe:s@t1"] is not None

    config_path.write_text(good.replace("name: s\n", "name: renamed\n"))
    r = requests.post(base + "/-/reload", timeout=5)
    assert r.status_code == 200
    assert sample_value(exporter, "llm_exporter_config_last_reload_successful") == 1
    wait_for(lambda: sample_value(exporter, "llm_probe_success", {"target": "t1", "scenario": "renamed"}) == 1,
             what="the reloaded scenario to run")
    # The old scenario's series are gone, so an alert on them can resolve.
    assert sample_value(exporter, "llm_probe_success", {"target": "t1", "scenario": "s"}) is None
    assert sample_value(exporter, "llm_probe_requests_total", {
        "target": "t1", "scenario": "s", "model": "tiny", "case": "short", "concurrency": "1"}) is None


def test_results_file_gets_every_request(running_exporter):
    exporter, base, config_path = running_exporter
    wait_for(lambda: sample_value(exporter, "llm_exporter_results_lines_total") == 12, what="12 lines")
    records = list(read_results(config_path.parent / "results.jsonl"))
    assert len(records) == 12  # 2 cases x (2 sequential + 2 batches of 2)
    assert {r.concurrency for r in records} == {1, 2}
    assert all(r.ok and r.ttft_s > 0 for r in records)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not on PATH (make test builds it: scripts/install-prometheus.sh)")
def test_promtool_finds_no_problem_in_a_scrape(running_exporter):
    exporter, base, _ = running_exporter
    wait_for(lambda: "llm_server_up" in requests.get(base + "/metrics", timeout=5).text, what="server stats")
    text = requests.get(base + "/metrics", timeout=5).text
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "" and res.stderr.strip() == ""


def test_skipped_runs_are_counted(tmp_path):
    """A run takes ~0.8 s and is scheduled every 0.3 s: the overlapping runs are skipped and counted, never stacked."""
    with FakeOllama(Behavior(tokens=3, token_interval=0.4, load_time=0)) as server:
        cfg_path = tmp_path / "c.yaml"
        cfg_path.write_text(scenario_yaml(server.url).replace("interval: 1h", "interval: 0.3s"))
        exporter = Exporter(str(cfg_path), load_file(str(cfg_path)))
        exporter.start()
        try:
            wait_for(lambda: (sample_value(exporter,
                "llm_probe_skipped_runs_total", {"target": "t1", "scenario": "s"}) or 0) >= 2
                and len(server.requests) >= 2, what="skipped runs and a second run")
        finally:
            exporter.shutdown(5)
        spans = [(r.received, r.token_writes[-1]) for r in server.requests if r.token_writes]
    # Never stacked: each run's request arrives after the previous one's last token was written.
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_process_reloads_on_sighup_and_stops_cleanly_on_sigterm(tmp_path):
    with FakeOllama(Behavior(tokens=4, token_interval=0.01)) as server:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(scenario_yaml(server.url, extra="repeats: 3\n"))
        results = tmp_path / "results.jsonl"
        exp = ExporterProcess(["--config.file", str(cfg), "--results.file", str(results)])
        try:
            wait_for(lambda: 'llm_probe_success{scenario="s",target="t1"} 1.0' in exp.scrape(), what="first run")
            cfg.write_text("scenarios: [[[")
            exp.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "llm_exporter_config_last_reload_successful 0.0" in exp.scrape(), what="refused reload")
            assert requests.get(exp.base + "/-/ready", timeout=2).status_code == 200
        finally:
            code = exp.stop(signal.SIGTERM)
        assert code == 0, exp.output
        assert "reload refused" in exp.output and "invalid YAML" in exp.output
        data = results.read_bytes()
        assert data.endswith(b"\n") and len(list(read_results(results))) == 3


def test_bad_config_exits_non_zero_and_starts_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scenarios: [{name: s, model: m, cases: {a: {prompt: p}}, repeets: 2}]")
    proc = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    out = proc.stderr
    assert proc.returncode == 1 and "scenarios[0].repeets: unknown key" in out


def test_metrics_are_rendered_in_the_background_and_served_gzipped(running_exporter):
    import gzip

    exporter, base, _ = running_exporter
    before = requests.get(base + "/metrics", timeout=5, headers={"Accept-Encoding": "identity"})
    assert before.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    exporter.probe_metrics.skipped("t1", "s")
    exporter.exposition.invalidate()
    line = 'llm_probe_skipped_runs_total{scenario="s",target="t1"} 1.0'
    wait_for(lambda: line in requests.get(base + "/metrics", timeout=5).text, what="the next rendering")
    raw = requests.get(base + "/metrics", timeout=5, headers={"Accept-Encoding": "gzip"}, stream=True).raw
    assert raw.headers["Content-Encoding"] == "gzip"
    assert line in gzip.decompress(raw.read(decode_content=False)).decode()
