"""The probe against a fake server whose timing and failures we choose."""

import pytest

from exporter.ollama import OllamaClient
from exporter.probe import run_probe
from exporter.results import FAILURE_REASONS
from tests.kit.exporters import free_port
from tests.kit.fake_ollama import Behavior, FakeOllama


def probe(cfg, concurrency=1, transport=None):
    scenario = cfg.scenarios[0]
    client = OllamaClient(scenario.targets[0], transport=transport)
    return run_probe(client, scenario, scenario.cases[0], concurrency=concurrency)


def test_successful_stream_is_measured_from_both_sides(fake, make_config):
    fake.behavior = Behavior(tokens=10, first_token_delay=0.2, token_interval=0.02, load_time=0.3)
    r = probe(make_config(fake.url))
    assert r.ok and r.reason is None
    writes = fake.requests[-1].token_writes
    assert len(writes) == 10
    # Order and counts only (a loaded 2-core machine delays threads; `make bench` measures the
    # precision): TTFT covers the load and the first-token delay the server slept, every gap is
    # one between two tokens in order.
    assert r.ttft_s >= 0.5
    assert r.output_chunks == 10 and len(r.inter_token_gaps_s) == 9
    assert all(g >= 0 for g in r.inter_token_gaps_s)
    assert r.eval_count == 10 and r.load_duration_s == pytest.approx(0.3, abs=1e-3)
    assert r.prompt_eval_count == 2
    assert r.request_duration_s >= r.ttft_s + sum(r.inter_token_gaps_s) - 1e-9
    assert r.total_duration_s <= r.request_duration_s
    assert r.queue_duration_s == pytest.approx(r.request_duration_s - r.total_duration_s)
    assert r.time_per_output_token_s == pytest.approx((r.request_duration_s - r.ttft_s) / 9)
    assert r.output_tokens_per_s == pytest.approx(10 / r.eval_duration_s)
    assert r.client_tokens_per_s == pytest.approx(9 / sum(r.inter_token_gaps_s))
    # The record says when the request went out: the server got it after that, and the first
    # token arrived ttft_s after it, as the server wrote it (same monotonic clock; the server
    # logs a write after it returned, the kernel stamps the arrival before that).
    assert r.sent_at_monotonic <= fake.requests[-1].received
    assert abs(r.sent_at_monotonic + r.ttft_s - writes[0]) < 0.05
    assert "sent_at_monotonic" not in r.to_dict()


def test_chat_api(fake, make_config):
    cfg = make_config(fake.url, extra="api: chat\n")
    r = probe(cfg)
    assert r.ok and r.api == "chat" and r.output_chunks == fake.behavior.tokens
    assert fake.requests[-1].path == "/api/chat"
    assert fake.requests[-1].body["messages"][-1] == {"role": "user", "content": "hello there"}


def test_options_and_keep_alive_reach_the_server(fake, make_config):
    cfg = make_config(fake.url, extra="keep_alive: 0\noptions: {temperature: 0.7, num_predict: 5, seed: 3}\n")
    assert probe(cfg).ok
    body = fake.requests[-1].body
    assert body["options"] == {"temperature": 0.7, "num_predict": 5, "seed": 3}
    assert body["keep_alive"] == 0 and body["stream"] is True


@pytest.mark.parametrize(
    "mode,reason",
    [
        ("http_404", "model_not_found"),
        ("http_503", "server_busy"),
        ("http_500", "http_error"),
        ("stream_error", "stream_error"),
        ("malformed", "malformed_response"),
        ("no_done", "stream_error"),
        ("empty", "empty_response"),
        ("stall", "timeout"),
        ("close_early", "connection"),
    ],
)
def test_each_failure_is_a_result_with_its_reason(fake, make_config, mode, reason):
    fake.behavior = Behavior(mode=mode, load_time=0)
    cfg = make_config(fake.url, extra="timeout: 1s\n")
    r = probe(cfg)
    assert not r.ok
    assert r.reason == reason and reason in FAILURE_REASONS
    assert r.error and r.request_duration_s is not None
    assert r.request_duration_s < 5


def test_missing_model_is_model_not_found(fake, make_config):
    r = probe(make_config(fake.url, model="does-not-exist"))
    assert r.reason == "model_not_found" and r.http_status == 404
    assert "does-not-exist" in r.error


def test_connection_refused(make_config):
    r = probe(make_config(f"http://127.0.0.1:{free_port()}"))
    assert not r.ok and r.reason == "connection"


def test_unresolvable_host(make_config):
    r = probe(make_config("http://no-such-host.invalid:11434"))
    assert not r.ok and r.reason == "connection"


def test_stall_is_bounded_by_the_timeout(make_config):
    with FakeOllama(Behavior(mode="stall", load_time=0)) as server:
        cfg = make_config(server.url, extra="timeout: 0.5s\n")
        r = probe(cfg)
    assert r.reason == "timeout"
    assert 0.4 < r.request_duration_s < 2.0


def test_unique_prompt_defeats_the_prompt_cache(fake, make_config):
    cfg = make_config(fake.url, extra="unique_prompt: true\n")
    probe(cfg)
    probe(cfg)
    first, second = (r.body["prompt"] for r in fake.requests[-2:])
    assert first != second
    assert first.endswith("] hello there") and second.endswith("] hello there")
    assert probe(make_config(fake.url)).prompt_chars == len("hello there")
    assert fake.requests[-1].body["prompt"] == "hello there"


@pytest.mark.parametrize("mode,reason", [("ok", None), ("http_404", "model_not_found"),
                                         ("stream_error", "stream_error"),
                                         ("malformed", "malformed_response"), ("no_done", "stream_error"),
                                         ("stall", "timeout")])
def test_http_client_reader_gives_the_same_results(fake, make_config, mode, reason):
    """The fallback reader (https targets, non-Linux) classifies every outcome as the raw reader does."""
    fake.behavior = Behavior(mode=mode, tokens=5, load_time=0)
    r = probe(make_config(fake.url, extra="timeout: 1s\n"), transport="http.client")
    assert r.reason == reason
    if reason is None:
        assert r.ok and r.output_chunks == 5 and len(r.inter_token_gaps_s) == 4 and r.eval_count == 5
