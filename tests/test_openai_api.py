"""`api: openai` against the fake server: /v1/chat/completions streamed as server-sent events."""

import pytest

from exporter.config import ConfigError
from exporter.ollama import OllamaClient
from exporter.probe import run_probe
from exporter.results import FAILURE_REASONS
from exporter.runner import COLD_LOAD_FALLBACK_S, WarmHistory, _label_start
from tests.kit.exporters import CollectingSink
from tests.kit.fake_ollama import Behavior

OPENAI = "api: openai\n"


def probe(cfg, transport=None):
    scenario = cfg.scenarios[0]
    client = OllamaClient(scenario.targets[0], transport=transport)
    return run_probe(client, scenario, scenario.cases[0])


@pytest.mark.parametrize("usage", ["last", "finish", "none"])
@pytest.mark.parametrize("transport", ["raw", "http.client"])
def test_stream_is_measured_from_both_sides(fake, make_config, usage, transport):
    fake.behavior = Behavior(tokens=10, first_token_delay=0.2, token_interval=0.02, load_time=0.3,
                             openai_usage=usage, openai_crlf=usage == "finish")
    r = probe(make_config(fake.url, extra=OPENAI + "options: {temperature: 0, num_predict: 20, seed: 3}\n"), transport)
    req = fake.requests[-1]
    assert req.path == "/v1/chat/completions" and req.headers["Accept"] == "text/event-stream"
    assert req.body == {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "stream": True,
                        "stream_options": {"include_usage": True}, "temperature": 0, "max_tokens": 20, "seed": 3}
    assert r.ok and r.api == "openai" and r.done_reason == "stop"
    # The role-only first chunk is not a token: TTFT is the first text, as the server wrote it.
    assert r.output_chunks == 10 and len(r.inter_token_gaps_s) == 9 and r.ttft_s >= 0.5
    assert abs(r.sent_at_monotonic + r.ttft_s - req.token_writes[0]) < 0.05
    if usage == "none":
        assert r.prompt_eval_count is None and r.eval_count is None
    else:
        assert (r.prompt_eval_count, r.eval_count) == (2, 10)
    # This API gives no server timings: absent, never zero, and nothing derived from them.
    for field in ("load_duration_s", "prompt_eval_duration_s", "eval_duration_s", "total_duration_s",
                  "output_tokens_per_s", "prompt_tokens_per_s", "queue_duration_s"):
        assert getattr(r, field) is None, field
    assert r.time_per_output_token_s == pytest.approx((r.request_duration_s - r.ttft_s) / 9)


@pytest.mark.parametrize("mode,reason", [
    ("http_404", "model_not_found"), ("http_503", "server_busy"), ("http_429", "server_busy"),
    ("http_500", "http_error"), ("stream_error", "stream_error"), ("malformed", "malformed_response"),
    ("no_done", "stream_error"), ("empty", "empty_response"), ("stall", "timeout"), ("close_early", "connection"),
])
def test_each_failure_is_a_result_with_its_reason(fake, make_config, mode, reason):
    fake.behavior = Behavior(mode=mode, load_time=0)
    r = probe(make_config(fake.url, extra=OPENAI + "timeout: 1s\n"))
    assert not r.ok and r.reason == reason and reason in FAILURE_REASONS and r.error


def test_bearer_token_file(fake, make_config, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    fake.require_auth = "Bearer s3cret"
    cfg = make_config(fake.url, extra=OPENAI, target_extra=f"    auth: {{bearer_token_file: {token}}}")
    assert probe(cfg).ok
    token.write_text("wrong")
    r = probe(make_config(fake.url, extra=OPENAI, target_extra=f"    auth: {{bearer_token_file: {token}}}"))
    assert (r.ok, r.reason, r.http_status) == (False, "http_error", 401)


def test_a_url_ending_in_v1_is_not_doubled(fake, make_config):
    assert probe(make_config(fake.url + "/v1", extra=OPENAI)).ok
    assert fake.requests[-1].path == "/v1/chat/completions"


def test_cold_from_the_running_models_list_where_the_server_has_one(fake, make_config):
    from exporter.runner import ScenarioRunner

    fake.behavior = Behavior(load_time=0.6)
    cfg = make_config(fake.url, extra=OPENAI + "repeats: 2\n")
    rec = CollectingSink()
    ScenarioRunner(cfg.scenarios[0], cfg.scenarios[0].targets[0], [rec]).run()
    assert [r.start for r in rec.results] == ["cold", "warm"]


def test_cold_from_the_warm_history_where_it_has_none():
    from exporter.results import ProbeResult

    history = WarmHistory()
    key = ("t", "s", "c", None)
    # Too little history: warm. Then a TTFT far above the warm median is a load.
    assert [history.cold(key, t) for t in (0.05, 0.06, 0.05)] == [False] * 3
    assert history.cold(key, 0.05 + COLD_LOAD_FALLBACK_S + 0.1)
    assert not history.cold(key, 0.12)  # 2.4x the median: noise, not a load
    assert not history.cold(("t", "s", "other", None), 5.0)  # each case has its own history
    r = ProbeResult("t", "s", "m", "c", api="openai", ok=True, ttft_s=0.01)
    _label_start(r, None)
    assert r.start == "warm"


def test_config_rules_for_api_openai(make_config):
    cfg = make_config("http://x", extra=OPENAI + "options: {temperature: 0.5, num_predict: 8, stop: [x]}\n")
    assert cfg.scenarios[0].api == "openai"
    with pytest.raises(ConfigError) as e:
        make_config("http://x", extra=OPENAI + "keep_alive: 5m\noptions: {num_ctx: 2048, top_k: 4}\n")
    text = "\n".join(e.value.problems)
    assert "keep_alive and think are Ollama options" in text
    assert "api openai has no option num_ctx, top_k" in text


def test_a_server_without_ollamas_endpoints_is_up_without_a_version(make_config):
    from prometheus_client import CollectorRegistry

    from tests.kit.exporters import ProbeStack
    from tests.kit.fake_ollama import FakeOllama

    with FakeOllama(Behavior(has_ps=False)) as server:
        registry = CollectorRegistry()
        stack = ProbeStack(registry, make_config(server.url, extra=OPENAI))
        stack.servers.poll()
        assert registry.get_sample_value("llm_server_up", {"target": "t1"}) == 1
        assert not [s for m in registry.collect() if m.name == "llm_server_info" for s in m.samples]
        rec = CollectingSink()
        from exporter.runner import ScenarioRunner

        cfg = make_config(server.url, extra=OPENAI + "repeats: 2\n")
        ScenarioRunner(cfg.scenarios[0], cfg.scenarios[0].targets[0], [rec]).run()
        assert [r.ok for r in rec.results] == [True, True]
    with FakeOllama(Behavior()) as server:
        server.stop()  # nothing listens: down, as before
        registry = CollectorRegistry()
        stack = ProbeStack(registry, make_config(server.url, extra=OPENAI))
        stack.servers.poll()
        assert registry.get_sample_value("llm_server_up", {"target": "t1"}) == 0


def test_suggested_scenarios_never_give_api_openai_an_ollama_option():
    import yaml

    from exporter.config import load_text
    from exporter.report.advice import suggested_scenarios

    target = {"name": "t1", "url": "http://x", "process_match": None}
    src = {"name": "s", "model": "m", "api": "openai", "repeats": 1, "warmup": 0, "concurrency": [1],
           "keep_alive": None, "timeout": 60.0, "think": None, "unique_prompt": False, "targets": [target],
           "cases": [{"name": "c", "prompt": "hi", "system": None, "options": {"temperature": 0}}]}
    recs = [("t1", "m", [{"sweep": True, "scenario": "s", "case": "c", "setting": "num_ctx", "current": 2048,
                          "suggested": 4096},
                         {"sweep": True, "scenario": "s", "case": "c", "setting": "num_predict", "current": 64,
                          "suggested": 32}])]
    text = suggested_scenarios(recs, [src])
    scenarios = yaml.safe_load(text)["scenarios"]
    assert [s["name"] for s in scenarios] == ["try-num_predict"]
    load_text(text)  # a valid config
