"""Multi-turn probes (case `turns`) and correctness canaries (case `expect`) against the fake server."""

import textwrap

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ConfigError, load_text
from exporter.conversation import cache_hit_ratio, estimate_cache
from exporter.results import ProbeResult
from exporter.runner import ScenarioRunner, planned_requests
from tests.kit.exporters import CollectingSink, ProbeStack
from tests.kit.fake_ollama import Behavior

CONV = "{turns: [hello there, tell me more, and once more]}"


def config(url, api="openai", cases=None, extra=""):
    cases = cases or {"conv": CONV}
    lines = "\n".join(f"      {k}: {v}" for k, v in cases.items())
    return load_text(textwrap.dedent(f"""\
        targets: [{{name: t1, url: {url}, process_match: null}}]
        scenarios:
          - name: s
            model: tiny
            api: {api}
            schedule: {{interval: 1h}}
            timeout: 5s
        """) + textwrap.indent(textwrap.dedent(extra), "    ") + "    cases:\n" + lines + "\n", "test")


def run(cfg, registry=None):
    stack = ProbeStack(registry, cfg)
    rec = CollectingSink()
    scenario = cfg.scenarios[0]
    ScenarioRunner(scenario, scenario.targets[0], [stack.metrics, rec]).run()
    return rec.results


def labels(case="conv", **kw):
    return {"target": "t1", "scenario": "s", "model": "tiny", "case": case, "concurrency": "1", **kw}


def test_turns_replay_the_conversation_with_the_answers_so_far(fake):
    fake.behavior = Behavior(tokens=3, openai_cached=True)
    registry = CollectorRegistry()
    cfg = config(fake.url)
    assert planned_requests(cfg.scenarios[0]) == 3
    results = run(cfg, registry)
    assert [r.turn for r in results] == [1, 2, 3] and all(r.ok for r in results)
    last = fake.requests[-1].body["messages"]
    assert last == [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "t0 t1 t2 "},
                    {"role": "user", "content": "tell me more"}, {"role": "assistant", "content": "t0 t1 t2 "},
                    {"role": "user", "content": "and once more"}]
    # The server's own cached counts (usage.prompt_tokens_details.cached_tokens).
    assert [(r.cached_prompt_tokens, r.cache_source) for r in results] == [(0, "server"), (5, "server"),
                                                                            (11, "server")]
    ratio = cache_hit_ratio(results)
    assert ratio == pytest.approx(16 / sum(r.prompt_eval_count for r in results))
    assert registry.get_sample_value("llm_probe_prompt_cache_hit_ratio", labels()) == pytest.approx(ratio)
    assert registry.get_sample_value("llm_probe_prompt_cached_tokens_total", labels()) == 16
    for turn, r in enumerate(results, 1):
        assert registry.get_sample_value("llm_probe_turn_time_to_first_token_seconds",
                                         labels(turn=str(turn))) == pytest.approx(r.ttft_s)
    assert registry.get_sample_value("llm_probe_requests_total", labels()) == 3


def test_native_chat_turns_estimate_the_cache_from_prefill_time(fake):
    results = run(config(fake.url, api="chat", extra="unique_prompt: true\n"))
    assert fake.requests[-1].path == "/api/chat" and len(fake.requests[-1].body["messages"]) == 5
    assert fake.requests[-1].body["messages"][0]["content"].endswith("] hello there")  # the tag on turn 1 only
    assert results[0].cache_source is None
    for previous, r in zip(results, results[1:]):
        assert r.cache_source == "timing"
        assert 0 <= r.cached_prompt_tokens <= previous.prompt_eval_count + previous.eval_count


def test_a_failed_turn_ends_the_conversation(fake):
    fake.behavior = Behavior(mode="http_500")
    results = run(config(fake.url))
    assert len(results) == 1 and results[0].reason == "http_error" and results[0].turn == 1


def _turn(turn, prompt, output=4, duration=None, cached=None, source=None):
    return ProbeResult("t", "s", "m", "c", ok=True, turn=turn, prompt_eval_count=prompt, eval_count=output,
                       prompt_eval_duration_s=duration, cached_prompt_tokens=cached, cache_source=source)


def test_cache_estimates():
    first = _turn(1, 100, duration=1.0)  # 100 tokens/s from scratch
    # The count is the whole prompt (Ollama 0.11.4): 0.1 s of prefill is 10 tokens; the rest was cached,
    # at most the 104 tokens carried over.
    second = _turn(2, 120, duration=0.1)
    estimate_cache(second, first, first)
    assert (second.cached_prompt_tokens, second.cache_source) == (104, "timing")
    third = _turn(3, 140, duration=0.5)
    estimate_cache(third, second, first)
    assert (third.cached_prompt_tokens, third.cache_source) == (90, "timing")
    # A server that counts only what it evaluated: fewer tokens than the conversation it holds.
    counted = _turn(2, 9)
    estimate_cache(counted, first, first)
    assert (counted.cached_prompt_tokens, counted.cache_source, counted.prompt_size_tokens) == (104, "count", 113)
    # The server's own figure is never replaced; without timings or counts nothing is guessed.
    told = _turn(2, 120, duration=0.1, cached=7, source="server")
    estimate_cache(told, first, first)
    assert told.cached_prompt_tokens == 7
    bare = _turn(2, 120)
    estimate_cache(bare, first, first)
    assert bare.cached_prompt_tokens is None and cache_hit_ratio([first, bare]) is None


def test_canary_matches_and_keeps_only_a_hash_and_the_head(fake):
    fake.behavior = Behavior(tokens=300)
    registry = CollectorRegistry()
    cases = {"good": '{prompt: hi, expect: {regex: "^t0 t1"}}', "bad": "{prompt: hi, expect: {contains: zebra}}",
             "conv": "{turns: [a, b], expect: {equals: \"  t0 t1 t2  \"}}"}
    cfg = config(fake.url, api="chat", cases=cases, extra="options: {num_predict: 3}\nrepeats: 2\n")
    by_case = {c.name: c for c in cfg.scenarios[0].cases}
    assert by_case["good"].options == {"temperature": 0.0, "seed": 42, "num_predict": 3}
    results = run(cfg, registry)
    verdicts = [(r.case, r.turn, r.answer_matched) for r in results]
    assert verdicts == [("good", None, True)] * 2 + [("bad", None, False)] * 2 + [
        ("conv", 1, None), ("conv", 2, True)] * 2
    r = results[0]
    assert r.answer_head == "t0 t1 t2 " and len(r.answer_sha256) == 16 and "answer" not in r.to_dict()
    assert fake.requests[0].body["options"] == {"temperature": 0.0, "seed": 42, "num_predict": 3}
    assert registry.get_sample_value("llm_probe_answer_matched", labels("good")) == 1
    assert registry.get_sample_value("llm_probe_answer_matched", labels("bad")) == 0
    assert registry.get_sample_value("llm_probe_answer_mismatches_total", labels("bad")) == 2
    assert registry.get_sample_value("llm_probe_answer_mismatch_streak", labels("bad")) == 2
    assert registry.get_sample_value("llm_probe_answer_mismatch_streak", labels("good")) == 0
    assert registry.get_sample_value("llm_probe_answer_matched", labels("conv")) == 1


def test_a_long_answer_keeps_200_characters(fake):
    fake.behavior = Behavior(tokens=300)
    results = run(config(fake.url, api="chat", cases={"c": "{prompt: hi, expect: {contains: t299}}"}))
    assert results[0].answer_matched and len(results[0].answer_head) == 200


@pytest.mark.parametrize("case, extra, problem", [
    ("{prompt: a, turns: [b]}", "", "give exactly one of prompt or turns"),
    ("{system: s}", "", "give exactly one of prompt or turns"),
    ("{turns: []}", "", "at least 1 item"),
    ("{turns: [a, b]}", "api: generate\n", "turns need a chat API"),
    ("{prompt: a, expect: {regex: a, contains: b}}", "", "give exactly one of regex, contains or equals"),
    ("{prompt: a, expect: {regex: '('}}", "", "not a valid regular expression"),
    ("{prompt: a, expect: {contains: b}, options: {temperature: 0.7}}", "", "runs at temperature 0"),
])
def test_config_problems(case, extra, problem):
    api = "generate" if "api:" in extra else "chat"
    with pytest.raises(ConfigError) as e:
        config("http://x", api=api, cases={"c": case})
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_bench_report_for_an_openai_target_without_ollama_endpoints(tmp_path):
    """A server with /v1 only (no /api/ps, no timings): the report builds from fields that exist."""
    import json

    from exporter.report.bench import run_bench
    from tests.kit.fake_ollama import FakeOllama

    with FakeOllama(Behavior(tokens=6, has_ps=False, openai_cached=True)) as server:
        cfg = config(server.url, cases={"short": "{prompt: hi}",
                                        "conv": "{turns: [hi there, more please], expect: {contains: t1}}"},
                     extra="repeats: 2\n")
        out = str(tmp_path / "out")
        assert run_bench(cfg, out, quiet=True) == 0
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "## Conversations (cases with turns)" in report and "## Correctness canaries" in report
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    turns = summary["conversations"]["turns"]
    assert [(t["turn"], t["cache_source"]) for t in turns] == [(1, "server"), (2, "server")]
    assert summary["conversations"]["canaries"][0]["matched"] == 2


def test_the_shipped_scenario_file_loads():
    from pathlib import Path

    from exporter.config import load_file

    cfg = load_file(Path(__file__).parent.parent / "scenarios" / "apis-and-canaries.yaml")
    by_name = {s.name: s for s in cfg.scenarios}
    assert by_name["v1"].api == "openai" and len(by_name["conversation"].cases[0].turns) == 4
    assert by_name["canary"].cases[0].options == {"temperature": 0.0, "seed": 42, "num_predict": 16}
