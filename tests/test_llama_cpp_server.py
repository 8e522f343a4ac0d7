"""A second real engine: llama-cpp-python's OpenAI-compatible server (0.3.36, built from its sdist by
scripts/install-llama-cpp-server.sh) on the same SmolLM2 GGUF as the real Ollama, probed with
`api: openai`.

What this server does (llama_cpp/server/app.py and types.py of the release, and checked below):
streams `data: {...}` events and `data: [DONE]`, but ignores `stream_options` and sends no
`usage` in a stream (token counts are absent); has no /api/ps and no server timings; answers any
model name with its default model when it serves one model; a model whose file is missing fails
only after the 200 status has gone out (the body breaks off); `response_format` takes
`{"type": "json_object"}` but not OpenAI's `json_schema` (HTTP 500 with its validation error).
"""

import json
import textwrap
import urllib.request

import pytest

from exporter.config import load_text
from exporter.ollama import OllamaClient
from exporter.probe import probe_once
from exporter.runner import ScenarioRunner
from tests.kit.exporters import CollectingSink
from tests.kit.llama_cpp_server import MODEL

pytestmark = pytest.mark.llamacpp

QUESTION = "What is the capital of France?"


def scenario(url, cases, model=MODEL, extra=""):
    lines = "\n".join(f"      {k}: {v}" for k, v in cases.items())
    return load_text(textwrap.dedent(f"""\
        targets: [{{name: llamacpp, url: {url}, process_match: null}}]
        scenarios:
          - name: s
            model: {model}
            api: openai
            timeout: 300s
            options: {{temperature: 0, seed: 42, num_predict: 24}}
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    cases:\n" + lines + "\n").scenarios[0]


def probe(s, case=0):
    return probe_once(OllamaClient(s.targets[0]), s, s.cases[case])


def test_a_probe_succeeds_with_client_timings_and_absent_server_figures(llama_cpp_server):
    s = scenario(llama_cpp_server.url, {"q": f"{{prompt: {QUESTION!r}}}"}, extra="repeats: 3\n")
    rec = CollectingSink()
    ScenarioRunner(s, s.targets[0], [rec]).run()
    assert [r.ok for r in rec.results] == [True] * 3, [r.error for r in rec.results]
    for r in rec.results:
        assert r.api == "openai" and r.done_reason in ("stop", "length")
        assert r.ttft_s > 0 and r.request_duration_s > r.ttft_s
        assert r.output_chunks >= 2 and len(r.inter_token_gaps_s) == r.output_chunks - 1
        assert r.time_per_output_token_s is not None  # from the streamed chunks, without usage
        # No usage in its streams and no server timings in the API: absent, never zero.
        for field in ("prompt_eval_count", "eval_count", "load_duration_s", "prompt_eval_duration_s",
                      "eval_duration_s", "total_duration_s", "output_tokens_per_s", "queue_duration_s"):
            assert getattr(r, field) is None, field
        # No /api/ps: cold/warm comes from the TTFT rule, which needs a warm history first.
        assert r.start == "warm"


def test_the_stream_really_has_no_usage(llama_cpp_server):
    """The counts above are absent because the server sends none, not because the reader missed them."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "stream": True,
                       "stream_options": {"include_usage": True}, "max_tokens": 8, "temperature": 0}).encode()
    req = urllib.request.Request(llama_cpp_server.url + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        text = resp.read().decode()
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 2
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert not any("usage" in c for c in chunks)


def test_a_canary_matches_and_a_wrong_answer_is_caught(llama_cpp_server):
    # At temperature 0 with a seed the answer repeats: what it said once is what a canary expects.
    first, answer = probe(scenario(llama_cpp_server.url, {"q": f"{{prompt: {QUESTION!r}, expect: {{regex: .}}}}"}))
    expected = answer.strip()[:20]
    assert first.ok and first.answer_matched and expected, first.error
    s = scenario(llama_cpp_server.url, {"same": f"{{prompt: {QUESTION!r}, expect: {{contains: {expected!r}}}}}",
                                        "other": f"{{prompt: {QUESTION!r}, expect: {{equals: Berlin}}}}"},
                 extra="repeats: 2\n")
    rec = CollectingSink()
    ScenarioRunner(s, s.targets[0], [rec]).run()
    assert [(r.case, r.ok, r.answer_matched) for r in rec.results] == [
        ("same", True, True), ("same", True, True), ("other", True, False), ("other", True, False)]
    assert {r.answer_sha256 for r in rec.results} == {first.answer_sha256}


def test_model_names_and_a_missing_model_file(llama_cpp_server):
    # One model per alias: an unknown name is served by the default model. Only a canary notices
    # that the answer did not come from the model the scenario names.
    r, _ = probe(scenario(llama_cpp_server.url, {"q": "{prompt: hi}"}, model="no-such-model"))
    assert r.ok
    # An alias whose file is missing fails while the stream is already under way: the server closes
    # the body without an error event, so there is no error text to map, only a broken stream.
    r, _ = probe(scenario(llama_cpp_server.url, {"q": "{prompt: hi}"}, model="gone"))
    assert (r.ok, r.reason, r.http_status) == (False, "stream_error", None)


def test_structured_output(llama_cpp_server):
    schema = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    ask = f"prompt: '{QUESTION} Answer in JSON.', options: {{num_predict: 48}}"
    s = scenario(llama_cpp_server.url, {"json": f"{{{ask}, format: json}}", "schema": f"{{{ask}, format: {schema}}}"})
    r, answer = probe(s, 0)
    assert r.ok and r.structured_output == "json", r.error
    assert isinstance(json.loads(answer), dict), answer
    # OpenAI's json_schema is refused by 0.3.36 (it takes only text and json_object): a failure with
    # the server's own words, mapped from its OpenAI-style error body.
    r, _ = probe(s, 1)
    assert (r.ok, r.reason, r.http_status) == (False, "http_error", 500)
    assert "response_format" in r.error and "json_object" in r.error


def test_the_exporters_series_for_it(llama_cpp_server):
    """Through the sinks the exporter wires: up without version info (no /api/version), requests
    and TTFT counted, and no output tokens counted from a usage that never came."""
    from prometheus_client import CollectorRegistry

    from tests.kit.exporters import ProbeStack

    cfg = load_text(textwrap.dedent(f"""\
        targets: [{{name: llamacpp, url: {llama_cpp_server.url}, process_match: 'llama_cpp[.]server'}}]
        scenarios:
          - name: s
            model: {MODEL}
            api: openai
            repeats: 2
            options: {{temperature: 0, seed: 42, num_predict: 24}}
            cases:
              q: {{prompt: {QUESTION!r}}}
        """))
    s = cfg.scenarios[0]
    registry = CollectorRegistry()
    stack = ProbeStack(registry, cfg)
    ScenarioRunner(s, s.targets[0], stack.sinks).run()
    stack.servers.poll()
    labels = {"target": "llamacpp", "scenario": "s", "model": MODEL, "case": "q", "concurrency": "1"}
    assert registry.get_sample_value("llm_server_up", {"target": "llamacpp"}) == 1
    assert not [x for m in registry.collect() if m.name == "llm_server_info" for x in m.samples]
    # Its process tree is found by the command line, as for any engine.
    assert registry.get_sample_value("llm_server_process_resident_memory_bytes", {"target": "llamacpp"}) > 50e6
    assert registry.get_sample_value("llm_probe_requests_total", labels) == 2
    assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_count", {**labels, "start": "warm"}) == 2
    assert registry.get_sample_value("llm_probe_success", {"target": "llamacpp", "scenario": "s"}) == 1
    assert not registry.get_sample_value("llm_probe_output_tokens_total", labels)
    assert not registry.get_sample_value("llm_probe_output_tokens_per_second_count", labels)
