"""Ollama 0.11.4's own OpenAI-compatible API, multi-turn probes and a canary that flips, for real.

What 0.11.4's /v1/chat/completions does (openai/openai.go of the release): streams server-sent
events, `role` in every delta, the finish reason on a chunk with empty content, `usage` (prompt
and completion tokens only; no cached tokens, no timings) in a last chunk with empty choices when
`stream_options.include_usage` is set, then `data: [DONE]`; maps temperature, top_p, seed,
max_tokens, stop and the penalties onto its options (temperature and top_p default to 1.0, not to
the model's defaults); has no keep_alive; errors are OpenAI-shaped ({"error": {"message", "type",
"param", "code"}}), 404 for a missing model with type api_error.
"""

import json
import subprocess
import textwrap

import pytest

from exporter.config import load_text
from exporter.ollama import OllamaClient
from exporter.probe import probe_once, run_probe
from exporter.runner import ScenarioRunner
from tests.kit.exporters import CollectingSink
from tests.kit.real_ollama import MODEL

pytestmark = pytest.mark.ollama

OPTIONS = "{temperature: 0, seed: 42, num_predict: 12}"


def scenario(url, api, cases, model=MODEL, extra=""):
    lines = "\n".join(f"      {k}: {v}" for k, v in cases.items())
    cfg = load_text(textwrap.dedent(f"""\
        targets: [{{name: real, url: {url}, process_match: null}}]
        scenarios:
          - name: {api}
            model: {model}
            api: {api}
            timeout: 300s
            options: {OPTIONS}
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    cases:\n" + lines + "\n")
    return cfg.scenarios[0]


def run(s):
    rec = CollectingSink()
    ScenarioRunner(s, s.targets[0], [rec]).run()
    return rec.results


def test_v1_streams_the_same_answer_as_the_native_api(real_ollama):
    results = {}
    for api in ("chat", "openai"):
        s = scenario(real_ollama.url, api, {"q": "{prompt: 'What is the capital of France?'}"})
        results[api] = [run_probe(OllamaClient(s.targets[0]), s, s.cases[0], run_id="x") for _ in range(2)]
    native, v1 = results["chat"][-1], results["openai"][-1]
    assert native.ok and v1.ok, (native.error, v1.error)
    # Same options, same seed: the same tokens, counted the same (usage = prompt_eval_count, eval_count).
    assert (v1.prompt_eval_count, v1.eval_count, v1.done_reason) == (
        native.prompt_eval_count, native.eval_count, native.done_reason)
    assert v1.output_chunks == native.output_chunks and v1.response_chars == native.response_chars
    assert v1.ttft_s > 0 and len(v1.inter_token_gaps_s) == v1.output_chunks - 1
    # No server timings on /v1: absent, not zero.
    assert v1.eval_duration_s is None and v1.load_duration_s is None and v1.output_tokens_per_s is None
    assert native.eval_duration_s > 0


def test_v1_missing_model_and_cold_start(real_ollama):
    s = scenario(real_ollama.url, "openai", {"q": "{prompt: hi}"}, model="nope")
    r = run_probe(OllamaClient(s.targets[0]), s, s.cases[0])
    assert (r.reason, r.http_status) == ("model_not_found", 404)
    s = scenario(real_ollama.url, "openai", {"q": "{prompt: hi}"}, extra="repeats: 2\n")
    OllamaClient(s.targets[0]).unload(MODEL)
    # /api/ps answers on Ollama, on either API: the first request loaded the model.
    assert [r.start for r in run(s)] == ["cold", "warm"]


@pytest.mark.parametrize("api", ["chat", "openai"])
def test_multi_turn_on_the_real_server(real_ollama, api):
    turns = ["My name is Ada and I like sailing. Describe a good first boat for me. " * 3,
             "What safety gear should I carry?", "Summarise in one line."]
    s = scenario(real_ollama.url, api, {"conv": f"{{turns: {turns!r}}}"}, extra="unique_prompt: true\n")
    results = run(s)
    assert [r.turn for r in results] == [1, 2, 3] and all(r.ok for r in results), [r.error for r in results]
    counts = [r.prompt_eval_count for r in results]
    assert counts == sorted(counts) and counts[0] > 50  # each turn carries the conversation so far
    if api == "chat":
        # 0.11.4 counts every prompt token; the prefill time shows the cached prefix.
        assert [r.cache_source for r in results] == [None, "timing", "timing"]
        assert sum(r.cached_prompt_tokens for r in results[1:]) > 0
    else:
        assert all(r.cached_prompt_tokens is None for r in results)  # 0.11.4's usage has no cached_tokens


def test_a_canary_flips_when_the_system_prompt_changes(real_ollama, tmp_path):
    """The same case on the same weights: a Modelfile with another system prompt makes it fail."""
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f'FROM {MODEL}\nSYSTEM "You are a pirate. Answer every question with a sea shanty."\n')
    res = subprocess.run([real_ollama.binary, "create", "smollm2-pirate", "-f", str(modelfile)], env=real_ollama.env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    first = run(scenario(real_ollama.url, "chat", {"q": "{prompt: 'Name one colour.', expect: {regex: '.'}}"}))[0]
    expected = first.answer_head.strip()[:20]
    assert first.answer_matched and expected
    case = {"q": f"{{prompt: 'Name one colour.', expect: {{contains: {expected!r}}}}}"}
    same = run(scenario(real_ollama.url, "chat", case, extra="repeats: 2\n"))
    assert [r.answer_matched for r in same] == [True, True]
    flipped = run(scenario(real_ollama.url, "chat", case, model="smollm2-pirate", extra="repeats: 2\n"))
    assert all(r.ok for r in flipped) and [r.answer_matched for r in flipped] == [False, False]
    assert flipped[0].answer_sha256 != same[0].answer_sha256


@pytest.mark.parametrize("api", ["generate", "chat", "openai"])
def test_format_json_returns_parseable_json(real_ollama, api):
    """Ollama constrains the answer with its JSON grammar on every API (`format` natively,
    `response_format: {type: json_object}` on /v1). A schema with one short field keeps a 135M
    model's answer well inside the token limit, so the object closes."""
    schema = json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                         "required": ["city"]})
    ask = "prompt: 'What is the capital of France? Answer in JSON.', options: {num_predict: 64}"
    cases = {"json": f"{{{ask}, format: json}}", "schema": f"{{{ask}, format: {schema}}}"}
    s = scenario(real_ollama.url, api, cases)
    client = OllamaClient(s.targets[0])
    for case in s.cases:
        r, answer = probe_once(client, s, case)
        assert r.ok, r.error
        assert r.structured_output == case.name
        if case.name == "json":
            # Free JSON: a grammar keeps it JSON but not short. Ollama 0.33.1's 135M answer can run
            # past 64 tokens, cut mid-string; then it must at least be an object that was cut.
            try:
                parsed = json.loads(answer)
            except json.JSONDecodeError:
                assert answer.lstrip().startswith("{") and (r.eval_count or 0) >= 64, (r, answer)
                continue
        else:
            parsed = json.loads(answer)
            assert isinstance(parsed.get("city"), str), answer
        assert isinstance(parsed, dict), answer
    rec = run(s)
    assert [(r.case, r.structured_output, r.ok) for r in rec] == [("json", "json", True), ("schema", "schema", True)]
