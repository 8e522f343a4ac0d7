"""Targets behind an authenticating proxy: credentials from the environment or a file, never shown."""

import base64
import logging

from exporter.runner import ScenarioRunner
from tests.kit.exporters import ProbeStack
from tests.kit.fake_ollama import FakeOllama

SECRET = "s3cr3t-token-value"


def run(cfg, registry):
    stack = getattr(registry, "_probe_stack", None) or ProbeStack(registry)
    registry._probe_stack = stack
    metrics = stack.load(cfg).metrics
    s = cfg.scenarios[0]
    ScenarioRunner(s, s.targets[0], [metrics]).run()
    return s


def test_bearer_token_from_env(make_config, registry, monkeypatch, caplog):
    monkeypatch.setenv("PROBE_TOKEN", SECRET)
    with FakeOllama() as server:
        server.require_auth = f"Bearer {SECRET}"
        cfg = make_config(server.url, target_extra="    auth: {bearer_token_env: PROBE_TOKEN}")
        with caplog.at_level(logging.DEBUG):
            run(cfg, registry)
        assert server.requests[-1].headers["Authorization"] == f"Bearer {SECRET}"
    assert registry.get_sample_value("llm_probe_success", {"target": "t1", "scenario": "s"}) == 1
    assert SECRET not in caplog.text


def test_basic_auth_from_file(make_config, registry, tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n")
    expected = "Basic " + base64.b64encode(f"probe:{SECRET}".encode()).decode()
    with FakeOllama() as server:
        server.require_auth = expected
        cfg = make_config(server.url,
                          target_extra=f"    auth: {{basic_user: probe, basic_password_file: '{secret_file}'}}")
        run(cfg, registry)
        assert server.requests[-1].headers["Authorization"] == expected
    assert registry.get_sample_value("llm_probe_success", {"target": "t1", "scenario": "s"}) == 1


def test_wrong_or_missing_credentials_fail_cleanly(make_config, registry, monkeypatch, caplog):
    from prometheus_client import generate_latest

    monkeypatch.setenv("PROBE_TOKEN", "wrong-" + SECRET)
    with FakeOllama() as server:
        server.require_auth = f"Bearer {SECRET}"
        cfg = make_config(server.url, target_extra="    auth: {bearer_token_env: PROBE_TOKEN}")
        with caplog.at_level(logging.DEBUG):
            run(cfg, registry)
        labels = {"target": "t1", "scenario": "s", "model": "tiny", "case": "short", "concurrency": "1"}
        assert registry.get_sample_value("llm_probe_request_failures_total", {**labels, "reason": "http_error"}) == 1
        monkeypatch.delenv("PROBE_TOKEN")
        run(cfg, registry)
        assert registry.get_sample_value("llm_probe_request_failures_total", {**labels, "reason": "connection"}) == 1
    assert SECRET not in caplog.text and "PROBE_TOKEN for target credentials is not set" in caplog.text
    assert SECRET.encode() not in generate_latest(registry)
