"""The Ollama-facing behaviour checks, on the current Ollama and on 0.11.4 (the `any_ollama` fixture).

What changed between them that the exporter must handle (../shared/reviews, "Ollama upstream"):
- 0.30.0: GGML models run in a child `llama-server` (0.11.4: an `ollama runner` child); the
  process figures must include it.
- 0.15.5: the default context is chosen by VRAM; what the server really loaded is recorded.
- 0.30.1: `prompt_eval_count` counts cached prompt tokens again (as 0.11.4 did).
- 0.30.9: a prompt longer than the context is an error when context shift is off (0.11.4 cut it
  in silence); its text must map to a failure reason.
- New response fields (0.12.0 `remote_model`/`remote_host`, `logprobs`, ...) must not break parsing.

Thinking by default (0.12.4) and remote models (0.12.0) need a reasoning or a cloud model, which
this offline machine does not have: they are checked against the fake server here and in
tests/test_bench_tokens.py (thinking timed apart from the answer).
"""

import json
import logging
import statistics
import textwrap
import urllib.error
import urllib.request

import psutil
import pytest

from exporter.config import load_text
from exporter.ollama import OllamaClient
from exporter.ollama.errors import error_message, http_failure, stream_failure
from exporter.runner import ScenarioRunner
from exporter.server_stats import ProcessTree
from tests.kit.exporters import CollectingSink, http_get
from tests.kit.fake_ollama import Behavior, FakeOllama
from tests.kit.real_ollama import MODEL

LONG_PROMPT = "Describe the architecture of a transformer neural network in detail. " * 12


def scenario(url, *, model=MODEL, api="generate", options="{temperature: 0, seed: 1, num_predict: 24}",
             extra="", cases=None):
    cases = cases or {"short": "What is AI?"}
    case_lines = "\n".join(f"      {k}: {{prompt: {v!r}}}" for k, v in cases.items())
    cfg = load_text(textwrap.dedent(f"""\
        targets: [{{name: real, url: {url}}}]
        scenarios:
          - name: versions
            model: {model}
            api: {api}
            schedule: {{interval: 1h}}
            timeout: 300s
            options: {options}
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    cases:\n" + case_lines + "\n")
    return cfg.scenarios[0]


def run(s):
    rec = CollectingSink()
    summary = ScenarioRunner(s, s.targets[0], [rec]).run()
    return summary, rec.results


def server_version(server) -> str:
    status, body = http_get(server.url + "/api/version")
    assert status == 200
    return json.loads(body)["version"]


def is_current(server) -> bool:
    return not server_version(server).startswith("0.11.")


def post(url: str, body: dict) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


pytestmark = pytest.mark.ollama


def test_process_figures_include_the_runner_child(any_ollama):
    """The model runs in a child (0.11.4 `ollama runner`, 0.30+ `llama-server`): the tree's CPU and
    RSS, which llm_server_process_* export, must include it."""
    tree = ProcessTree(r"(^|/)ollama serve\b", any_ollama.port)
    run(scenario(any_ollama.url))  # the model loaded, so the child exists
    before = tree.sample()
    summary, results = run(scenario(any_ollama.url, options="{temperature: 0, seed: 1, num_predict: 96}"))
    after = tree.sample()
    assert summary.failures == 0 and before is not None and after is not None
    assert after.root_pid == any_ollama.proc.pid
    root = psutil.Process(any_ollama.proc.pid)
    children = root.children(recursive=True)
    names = [" ".join(c.cmdline()) for c in children]
    if is_current(any_ollama):
        runner = [c for c, n in zip(children, names) if "llama-server" in n]
    else:
        runner = [c for c, n in zip(children, names) if " runner " in f"{n} "]
    assert runner, names
    assert after.processes >= 2
    # The child decodes: the tree's CPU grows by a good part of the server-reported decode time,
    # which the serving process alone does not spend.
    decode_s = sum(r.eval_duration_s for r in results)
    assert after.cpu_seconds_total - before.cpu_seconds_total > 0.5 * decode_s
    # The child holds the weights (SmolLM2-135M Q4_1: about 90 MB): the tree's RSS counts it.
    runner_rss = sum(c.memory_info().rss for c in runner)
    assert runner_rss > 50e6
    assert after.resident_bytes >= root.memory_info().rss + 0.8 * runner_rss


def test_the_context_really_used_is_recorded(any_ollama):
    client = OllamaClient(scenario(any_ollama.url).targets[0])
    _, pinned = run(scenario(any_ollama.url, options="{temperature: 0, seed: 1, num_predict: 4, num_ctx: 1024}"))
    assert [r.context_length for r in pinned] == [1024]
    # Unpinned: whatever the server chose (by VRAM from 0.15.5 on), as /api/ps says.
    _, default = run(scenario(any_ollama.url, options="{temperature: 0, seed: 1, num_predict: 4}"))
    listed = [m.context_length for m in client.running_models() if m.name == MODEL + ":latest"]
    assert listed and listed[0] and listed[0] != 1024
    assert [r.context_length for r in default] == listed


def test_cached_prompt_tokens_are_counted_and_prefill_is_not(any_ollama):
    """A repeated prompt is served from the KV cache. 0.11.4 and 0.30.1+ count the cached tokens in
    prompt_eval_count (0.30.0 did not) while the duration covers only the uncached part; a
    unique prompt (`unique_prompt: true`) defeats the cache."""
    opts = "{temperature: 0, seed: 1, num_predict: 2}"
    _, cached = run(scenario(any_ollama.url, options=opts, extra="repeats: 2\n", cases={"long": LONG_PROMPT}))
    _, unique = run(scenario(any_ollama.url, options=opts, extra="repeats: 2\nunique_prompt: true\n",
                             cases={"long": LONG_PROMPT}))
    a, b = cached
    assert a.prompt_eval_count == b.prompt_eval_count > 100
    assert b.start == "warm", b  # a reload in between would prefill again: not what this checks
    assert b.prompt_eval_duration_s < 0.5 * a.prompt_eval_duration_s
    c, d = unique
    assert min(c.prompt_eval_count, d.prompt_eval_count) >= b.prompt_eval_count
    # Compared with the cache hit rather than with each other: two cold prefills differ by 2x on a busy host.
    assert min(c.prompt_eval_duration_s, d.prompt_eval_duration_s) > 2 * b.prompt_eval_duration_s


@pytest.mark.parametrize("api", ["generate", "chat", "openai"])
def test_missing_model_is_model_not_found(any_ollama, api):
    summary, results = run(scenario(any_ollama.url, model="no-such-model", api=api))
    assert summary.failures == 1
    assert results[0].reason == "model_not_found", results[0].error
    assert results[0].http_status == 404


def test_prompt_longer_than_the_context(any_ollama):
    """With context shift off, 0.30.9+ refuses the prompt and 0.11.4 (which has no such switch)
    cuts it. The exporter maps the refusal, as the server words it, to `context_exceeded`."""
    status, body = post(any_ollama.url + "/api/generate", {
        "model": MODEL, "prompt": LONG_PROMPT * 3, "stream": True, "shift": False,  # about 430 tokens
        "options": {"num_ctx": 256, "num_predict": 4, "temperature": 0}})
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    if is_current(any_ollama):
        if status == 200:
            errors = [line["error"] for line in lines if "error" in line]
            assert errors, lines
            assert stream_failure(errors[0]).reason == "context_exceeded", errors[0]
        else:
            assert http_failure(status, error_message(body)).reason == "context_exceeded", body
    else:
        assert status == 200 and lines[-1]["done"] is True, lines
        assert lines[-1]["prompt_eval_count"] <= 256


def test_control_calls_parse_both_versions(any_ollama):
    """/api/version, /api/ps and /api/show as each version shapes them (0.33 adds fields to all three)."""
    client = OllamaClient(scenario(any_ollama.url).targets[0])
    run(scenario(any_ollama.url))
    assert client.version() == server_version(any_ollama)
    facts = client.show(MODEL)
    assert facts.architecture == "llama" and facts.context_length == 8192 and facts.block_count == 30
    running = [m for m in client.running_models() if m.name == MODEL + ":latest"]
    assert running and running[0].size > 50e6 and running[0].size_vram == 0 and running[0].digest


def test_decode_speed_is_measured_on_both(any_ollama):
    """The client's and the server's decode rates agree, whichever process decodes."""
    _, results = run(scenario(any_ollama.url, options="{temperature: 0, seed: 1, num_predict: 64}",
                              extra="repeats: 3\nwarmup: 1\n"))
    ratios = [r.client_tokens_per_s / r.output_tokens_per_s for r in results]
    assert abs(statistics.median(ratios) - 1) < 0.15, ratios


# ---- what needs a model this machine does not have: the fake server ----

@pytest.mark.parametrize("api", ["generate", "chat"])
def test_new_fields_are_ignored(make_config, api):
    extra = {"logprobs": [{"token": "t", "logprob": -0.1}], "new_field": {"nested": [1, 2]}, "context_length": 4096}
    with FakeOllama(Behavior(tokens=6, extra_fields=extra)) as server:
        s = make_config(server.url, extra=f"api: {api}\n").scenarios[0]
        _, results = run(s)
        running = OllamaClient(s.targets[0]).running_models()
    assert [r.ok for r in results] == [True] and results[0].output_chunks == 6 and results[0].eval_count == 6
    assert results[0].remote_host is None
    assert running and running[0].context_length == 4096


def test_remote_model_is_labelled_in_the_record_and_the_log(make_config, caplog):
    with FakeOllama(Behavior(tokens=4, remote_host="https://ollama.com:443")) as server:
        s = make_config(server.url).scenarios[0]
        with caplog.at_level(logging.WARNING, logger="exporter.runner"):
            _, results = run(s)
    assert results and all(r.ok and r.remote_host == "https://ollama.com:443" for r in results)
    assert sum("remote model" in m for m in caplog.messages) == 1
