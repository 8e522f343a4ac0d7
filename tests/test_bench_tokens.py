"""Honest token counts: requested vs produced, answers that stopped early, thinking timed apart."""

import json
import os

import pytest

from exporter.config import load_text
from exporter.ollama import OllamaClient
from exporter.ollama.wire import chunk_from_line
from exporter.probe import run_probe
from exporter.report.bench import run_bench
from exporter.results import read_results
from tests.kit.fake_ollama import Behavior, FakeOllama

BANDWIDTH = 10e9


def test_chunk_keeps_thinking_apart_from_the_answer_and_counts_both_for_ttft():
    c = chunk_from_line(b'{"message": {"role": "assistant", "content": "", "thinking": "hmm"}, "done": false}', 1.0, True)
    assert (c.text_len, c.thinking_len, c.answer_len) == (3, 3, 0)
    c = chunk_from_line(b'{"response": "ok!", "done": false}', 1.0, False)
    assert (c.text_len, c.thinking_len, c.answer_len) == (3, 0, 3)
    c = chunk_from_line(b'{"response": "", "thinking": "so", "done": false}', 1.0, False)
    assert (c.text_len, c.thinking_len, c.answer_len) == (2, 2, 0)


@pytest.mark.parametrize("api", ["generate", "chat"])
def test_probe_times_first_thinking_and_first_answer_token(make_config, api):
    with FakeOllama(Behavior(tokens=8, thinking_tokens=3, first_token_delay=0.02, token_interval=0.02,
                             load_time=0)) as server:
        cfg = make_config(server.url, extra=f"api: {api}\nthink: true\n")
        scenario = cfg.scenarios[0]
        r = run_probe(OllamaClient(scenario.targets[0]), scenario, scenario.cases[0])
        writes = server.requests[-1].token_writes
    assert server.requests[-1].body["think"] is True
    assert r.ok and r.output_chunks == 8 and r.thinking_tokens == 3
    # TTFT is the first token of either kind; the answer starts with the 4th streamed token.
    assert r.first_thinking_s == r.ttft_s
    assert r.first_answer_s - r.first_thinking_s == pytest.approx(writes[3] - writes[0], abs=0.01)
    assert r.first_answer_s - r.first_thinking_s > 0.05
    d = r.to_dict()
    assert d["thinking_tokens"] == 3 and d["first_answer_s"] == r.first_answer_s


def test_probe_of_a_model_that_does_not_think(make_config):
    with FakeOllama(Behavior(tokens=4, load_time=0)) as server:
        cfg = make_config(server.url)
        scenario = cfg.scenarios[0]
        r = run_probe(OllamaClient(scenario.targets[0]), scenario, scenario.cases[0])
    assert r.ok and r.thinking_tokens == 0 and r.first_thinking_s is None and r.first_answer_s == r.ttft_s


def tokens_yaml(url):
    return f"""
targets:
  - {{name: t1, url: "{url}", process_match: null}}
scenarios:
  - name: tokens
    model: tiny
    api: chat
    think: true
    repeats: 3
    cases:
      full: {{prompt: "say a lot", options: {{num_predict: 4}}}}
      short: {{prompt: "say a little", options: {{num_predict: 8}}}}
      unlimited: {{prompt: "say anything"}}
"""


def test_report_shows_requested_vs_produced_and_flags_early_stops(tmp_path):
    out = str(tmp_path / "o")
    # The model "wants" 6 tokens (2 of them thinking): cut at 4 by num_predict, or stopping at 6 before 8.
    with FakeOllama(Behavior(tokens=6, thinking_tokens=2, token_interval=0.002, load_time=0)) as server:
        assert run_bench(load_text(tokens_yaml(server.url)), out, quiet=True, memory_bandwidth=BANDWIDTH) == 0
    records = list(read_results(os.path.join(out, "results.jsonl")))
    assert {r.case: r.done_reason for r in records} == {"full": "length", "short": "stop", "unlimited": "stop"}
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = {row["case"]: row for row in summary["targets"]["t1"]["models"]["tiny"]["cases"]}
    assert rows["full"]["requested_tokens"] == 4 and rows["full"]["produced_tokens"]["median"] == 4
    assert rows["full"]["stopped_early"] == 0 and rows["full"]["done_reasons"] == {"length": 3}
    assert rows["short"]["requested_tokens"] == 8 and rows["short"]["produced_tokens"]["median"] == 6
    assert rows["short"]["stopped_early"] == 3
    # Without num_predict nothing was requested, so nothing can stop early.
    assert rows["unlimited"]["requested_tokens"] is None and rows["unlimited"]["stopped_early"] == 0
    assert rows["short"]["thinking_requests"] == 3 and rows["short"]["thinking_tokens"]["median"] == 2
    assert rows["short"]["first_answer_s"]["median"] > rows["short"]["first_thinking_s"]["median"]
    report = open(os.path.join(out, "REPORT.md")).read()
    section = report.split("### Output tokens: requested vs produced", 1)[1].split("\n### ", 1)[0].splitlines()
    short = next(l for l in section if l.startswith("| tokens | short | 1 |"))
    cells = [c.strip() for c in short.strip("|").split("|")]
    assert cells[3:8] == ["8", "6", "6 .. 6", "3 / 3 **early**", "stop 3"] and cells[8] == "2"
    full = next(l for l in section if l.startswith("| tokens | full | 1 |"))
    assert "| 0 / 3 |" in full
    assert "cases with early stops: tokens/short." in report
