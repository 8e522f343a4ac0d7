"""End-to-end against the current real Ollama and SmolLM2-135M (see tests/kit/real_ollama.py).

The checks of Ollama-facing behaviour that run on 0.11.4 as well are in tests/test_ollama_versions.py.
"""

import textwrap
import time

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import load_text
from exporter.ollama import OllamaClient
from exporter.runner import ScenarioRunner
from tests.kit.exporters import CollectingSink, ProbeStack, free_port
from tests.kit.real_ollama import MODEL, VERSIONS, OllamaServer

pytestmark = pytest.mark.ollama


def config(url, *, model=MODEL, cases=None, extra="", name="e2e"):
    cases = cases or {"short": "What is AI?"}
    case_lines = "\n".join(f"      {k}: {{prompt: {v!r}}}" for k, v in cases.items())
    return load_text(textwrap.dedent(f"""\
        targets:
          - name: real
            url: {url}
        scenarios:
          - name: {name}
            model: {model}
            schedule: {{interval: 1h}}
            timeout: 120s
            options: {{temperature: 0, seed: 42, num_predict: 24}}
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    cases:\n" + case_lines + "\n")


def run(cfg, registry=None, stack=None):
    registry = registry or CollectorRegistry()
    metrics = (stack or ProbeStack(registry, cfg)).metrics
    rec = CollectingSink()
    scenario = cfg.scenarios[0]
    summary = ScenarioRunner(scenario, scenario.targets[0], [metrics, rec]).run()
    return summary, rec, registry


def labels(case="short", concurrency="1", **kw):
    return {"target": "real", "scenario": "e2e", "model": MODEL, "case": case, "concurrency": concurrency, **kw}


def test_default_shape_against_the_real_server(real_ollama):
    cfg = config(real_ollama.url, extra="repeats: 2\n", cases={
        "short": "What is AI?",
        "medium": "Explain the concept of machine learning in simple terms.",
        "long": "Describe the architecture of a transformer neural network in detail, " * 4,
    })
    registry = CollectorRegistry()
    stack = ProbeStack(registry, cfg)
    stats = stack.servers
    stats.poll()
    before = stats.snapshots()["real"].process
    assert before is not None and before.root_pid == real_ollama.proc.pid
    summary, rec, _ = run(cfg, registry, stack)
    stats.poll()
    after = stats.snapshots()["real"].process
    assert summary.failures == 0 and summary.requests == 6
    for case in ("short", "medium", "long"):
        warm = labels(case, start="warm")
        assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_sum", warm) > 0
        assert registry.get_sample_value("llm_probe_request_duration_seconds_sum", warm) > 0
        assert registry.get_sample_value("llm_probe_output_tokens_per_second_sum", labels(case)) > 0
        assert registry.get_sample_value("llm_probe_prompt_tokens_per_second_count", labels(case)) >= 1
    assert registry.get_sample_value("llm_server_info", {"target": "real", "version": VERSIONS["current"]}) == 1
    assert registry.get_sample_value("llm_server_up", {"target": "real"}) == 1
    loaded = registry.get_sample_value("llm_server_model_loaded_bytes", {"target": "real", "model": MODEL + ":latest"})
    assert loaded and loaded > 50e6
    assert registry.get_sample_value("llm_server_model_vram_bytes", {"target": "real", "model": MODEL + ":latest"}) == 0
    # Inference runs in the runner child: the tree's CPU must grow by a good part of the decode time.
    decode_s = sum(r.eval_duration_s for r in rec.results)
    assert after.cpu_seconds_total - before.cpu_seconds_total > 0.5 * decode_s
    assert after.processes >= 2 and after.resident_bytes > 100e6
    # The long prompt really is longer for the server.
    by_case = {r.case: r for r in rec.results}
    long_prompt, short_prompt = by_case["long"].prompt_eval_count, by_case["short"].prompt_eval_count
    assert long_prompt is None or long_prompt > short_prompt


def test_cold_start_is_labelled_and_next_is_warm(real_ollama):
    OllamaClient(config(real_ollama.url).targets[0]).unload(MODEL)
    time.sleep(0.5)
    summary, rec, registry = run(config(real_ollama.url, extra="repeats: 2\n"))
    assert [r.start for r in rec.results] == ["cold", "warm"]
    cold, warm = rec.results
    assert cold.load_duration_s > 0.05 and cold.load_duration_s > 5 * (warm.load_duration_s or 0)
    assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_count", labels(start="cold")) == 1
    assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_count", labels(start="warm")) == 1


def test_keep_alive_zero_makes_every_request_cold(real_ollama):
    client = OllamaClient(config(real_ollama.url).targets[0])
    client.unload(MODEL)
    # 0.33.1 unloads after answering the unload request, and a request arriving meanwhile keeps
    # the model: wait until it is gone, so the first request is a real load.
    deadline = time.monotonic() + 30
    while any(m.name == MODEL + ":latest" for m in client.running_models()) and time.monotonic() < deadline:
        time.sleep(0.1)
    summary, rec, _ = run(config(real_ollama.url, extra="repeats: 2\nkeep_alive: 0\n"))
    assert summary.failures == 0
    assert [r.start for r in rec.results] == ["cold", "cold"]
    assert all(r.load_duration_s > 0.05 for r in rec.results)


def test_concurrency_batches(real_ollama):
    cfg = config(real_ollama.url,
                 extra="repeats: 1\nconcurrency: [2, 4]\noptions: {temperature: 0, seed: 1, num_predict: 12}\n")
    summary, rec, registry = run(cfg)
    assert summary.failures == 0 and summary.requests == 6
    for level in ("2", "4"):
        assert registry.get_sample_value("llm_probe_batch_output_tokens_per_second", labels(concurrency=level)) > 0
    assert {b.concurrency: b.requests for b in rec.batches} == {2: 2, 4: 4}


def test_server_killed_mid_stream_then_recovers(real_ollama, tmp_path):
    """A second server on the same model folder: killed during a generation, then restarted."""
    port = free_port()
    server = OllamaServer(real_ollama.binary, real_ollama.models_dir, port, str(tmp_path / "serve.log")).start()
    try:
        cfg = config(server.url, extra="repeats: 1\noptions: {temperature: 0, seed: 1, num_predict: 2000}\n",
                     cases={"count": "Write the numbers from 1 to 500, separated by commas: 1, 2, 3, 4, 5,"})
        import threading

        run(config(server.url))  # the model loaded, so the kill lands in the stream, whatever the load takes
        # The answer runs 2,000 tokens (about 17 s here; Ollama 0.33.1 stops "count to 2000" after
        # 19 tokens), so a kill 0.3 s in lands in the stream.
        killer = threading.Timer(0.3, server.kill)
        killer.start()
        summary, rec, registry = run(cfg)
        killer.join()
        failed = rec.results[0]
        assert not failed.ok and failed.reason in ("stream_error", "connection"), failed
        assert registry.get_sample_value("llm_probe_success", {"target": "real", "scenario": "e2e"}) == 0
        server.stop()
        # Down: the next probe fails fast with a connection error, not a hang.
        summary, rec, _ = run(cfg)
        assert rec.results[0].reason == "connection" and rec.results[0].request_duration_s < 5
        server = OllamaServer(real_ollama.binary, real_ollama.models_dir, port, str(tmp_path / "serve.log")).start()
        summary, rec, registry = run(config(server.url))
        assert rec.results[0].ok
        assert registry.get_sample_value("llm_probe_success", {"target": "real", "scenario": "e2e"}) == 1
    finally:
        server.stop()


def test_cli_with_default_scenarios_serves_every_contract_metric(real_ollama, tmp_path, golden_families):
    """The issue's acceptance check: OLLAMA_HOST at a real server, the shipped default scenarios."""
    import os
    import shutil
    import subprocess

    from tests.kit.exporters import ExporterProcess, wait_for
    from tests.test_exporter import CONVERSATION_AND_CANARY, NEEDS_HISTORY, SERVER_FAMILIES

    env = dict(os.environ, OLLAMA_HOST=f"127.0.0.1:{real_ollama.port}", OLLAMA_PERF_MODEL=MODEL)
    exp = ExporterProcess(["--config.file", "scenarios/default.yaml", "--results.file", str(tmp_path / "r.jsonl")],
                          env=env)
    try:
        wait_for(lambda: 'llm_probe_success{scenario="default",target="local"} 1.0' in exp.scrape(), timeout=300,
                 interval=1, what="one run of the default scenarios")
        wait_for(lambda: "llm_server_process_cpu_seconds_total{" in exp.scrape(), timeout=60, what="process stats")
        text = exp.scrape()
        for name in golden_families + SERVER_FAMILIES + ["llm_server_process_cpu_seconds_total",
                                                         "llm_server_process_resident_memory_bytes"]:
            if name.startswith((*CONVERSATION_AND_CANARY, *NEEDS_HISTORY)):
                assert f"\n# TYPE {name} " in text, name  # served; its samples need a canary or history
            else:
                assert f"\n{name}" in text, name
        if shutil.which("promtool"):
            res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=60)
            assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    finally:
        code = exp.stop()
    assert code == 0, exp.output[-2000:]
