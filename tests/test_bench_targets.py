"""`bench` over several targets: every statistic, section and comparison is per target, never pooled."""

import json
import os
import statistics

import pytest
import yaml

from exporter.config import load_text
from exporter.exit_codes import EXIT_OK, EXIT_REGRESSION
from exporter.report.advice import suggested_scenarios
from exporter.report.bench import run_bench
from exporter.report.compare import compare_records, regression_lines
from exporter.report.plots import _by_case
from exporter.report.stats import sections, summarize
from exporter.results import ProbeResult, read_results
from tests.kit.fake_ollama import Behavior, FakeOllama

BANDWIDTH = 10e9
# Decode ~15x apart: each target's requests form their own tight cluster, far from the other's.
# The first-token delay is the same on both; the gate below is judged on decode, which
# machine load shifts by far less than 20%.
FAST = dict(tokens=6, first_token_delay=0.01, token_interval=0.003, load_time=0.02, quantization="Q4_1",
            model_size=100_000_000)
SLOW = dict(tokens=6, first_token_delay=0.01, token_interval=0.05, load_time=0.02, quantization="Q8_0",
            model_size=300_000_000)


def two_target_yaml(fast_url, slow_url=None):
    targets = f'  - {{name: fast, url: "{fast_url}", process_match: null}}\n'
    if slow_url:
        targets += f'  - {{name: slow, url: "{slow_url}", process_match: null}}\n'
    return f"""
targets:
{targets}scenarios:
  - name: seq
    model: tiny
    repeats: 8
    warmup: 1
    options: {{temperature: 0, num_predict: 8}}
    cases:
      short: {{prompt: "hi"}}
"""


def test_report_keeps_two_targets_apart(tmp_path):
    out = str(tmp_path / "o")
    with FakeOllama(Behavior(**FAST)) as fast, FakeOllama(Behavior(**SLOW)) as slow:
        assert run_bench(load_text(two_target_yaml(fast.url, slow.url)), out, quiet=True,
                         memory_bandwidth=BANDWIDTH) == EXIT_OK
    records = list(read_results(os.path.join(out, "results.jsonl")))
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert sorted(summary["targets"]) == ["fast", "slow"]
    for target, _model, m in sections(summary):
        [row] = m["cases"]
        mine = [r.request_duration_s for r in records if r.target == target and r.ok]
        assert row["target"] == target and row["requests"] == len(mine) == 8
        assert row["latency"]["mean"] == pytest.approx(statistics.fmean(mine))
        assert row["latency"]["max"] == pytest.approx(max(mine))
        # Facts come from each target's own server, not from the first target's.
        assert m["facts"]["quantization_level"] == {"fast": "Q4_1", "slow": "Q8_0"}[target]
        # The loaded size (the weights estimate here) is this target's too.
        assert m["theory"]["weights_bytes"] == {"fast": 100_000_000, "slow": 300_000_000}[target]
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "## Model `tiny` on target `fast`" in report and "## Model `tiny` on target `slow`" in report
    assert "| Model tiny (fast) | " in report and "| Model tiny (slow) | " in report
    # One summary row per target, each with its own mean.
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in report.splitlines()
            if line.startswith("| seq | short | 1 |")]
    rows = [cells for cells in rows if len(cells) == 13]  # the summary table's, not the token table's
    means = {f"{m['cases'][0]['latency']['mean']:.3f}" for _, _, m in sections(summary)}
    assert len(rows) == 2 and {cells[5] for cells in rows} == means and len(means) == 2
    # Every plot, per-target ones included, is shown in the report; the distributions have a
    # box per target and case.
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert all(f"]({p})" in report for p in pngs)
    assert set(_by_case(records, "request_duration_s")) == {"fast: seq/short", "slow: seq/short"}
    assert set(_by_case([r for r in records if r.target == "fast"], "request_duration_s")) == {"seq/short"}


def test_a_regression_on_one_target_fails_the_gate_where_pooling_hid_it(tmp_path, capsys):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    with FakeOllama(Behavior(**FAST)) as fast, FakeOllama(Behavior(**SLOW)) as slow:
        config = load_text(two_target_yaml(fast.url, slow.url))
        assert run_bench(config, old, quiet=True, memory_bandwidth=BANDWIDTH) == EXIT_OK
        fast.behavior = Behavior(**{**FAST, "token_interval": 0.015})  # the fast target decodes 5x slower
        capsys.readouterr()
        assert run_bench(config, new, compare=old, quiet=True, fail_on_regression=20,
                         memory_bandwidth=BANDWIDTH) == EXIT_REGRESSION
    stderr = capsys.readouterr().err
    assert "seq/short c=1 (tiny on fast): latency" in stderr
    comparison = json.load(open(os.path.join(new, "comparison.json")))
    assert {(c["target"], c["case"]) for c in comparison["cases"]} == {("fast", "short"), ("slow", "short")}
    decode = ("latency", "tpot", "decode_tps")
    assert {r["target"] for r in comparison["regressions"] if r["quantity"] in decode} == {"fast"}
    assert {("fast", "latency"), ("fast", "tpot")} <= {(r["target"], r["quantity"]) for r in comparison["regressions"]}
    latency = {c["target"]: next(q for q in c["quantities"] if q["quantity"] == "latency") for c in comparison["cases"]}
    assert latency["fast"]["n_old"] == latency["fast"]["n_new"] == 8  # one target's requests, not both
    report = open(os.path.join(new, "REPORT.md")).read()
    assert any(line.startswith("| fast | tiny | seq | short | 1 | latency |") and "**REGRESSION**" in line
               for line in report.splitlines())
    assert "- seq/short (concurrency 1, target fast): latency" in report

    # The same records pooled as one target, as the report used to: the two servers' clusters
    # make the pooled median jump between them, and the gate lets the regression through.
    def pooled(directory):
        out = list(read_results(os.path.join(directory, "results.jsonl")))
        for r in out:
            r.target = "pooled"
        return out

    [case] = compare_records(pooled(old), pooled(new), fail_pct=20)
    assert not case["regressed"]


def test_a_target_in_one_run_only_is_named_not_pooled(tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    with FakeOllama(Behavior(**FAST)) as fast, FakeOllama(Behavior(**SLOW)) as slow:
        assert run_bench(load_text(two_target_yaml(fast.url, slow.url)), old, quiet=True,
                         memory_bandwidth=BANDWIDTH) == EXIT_OK
        assert run_bench(load_text(two_target_yaml(fast.url)), new, compare=old, quiet=True,
                         memory_bandwidth=BANDWIDTH) == EXIT_OK
    comparison = json.load(open(os.path.join(new, "comparison.json")))
    assert comparison["unmatched_targets"] == [{"target": "slow", "only_in": "old"}]
    assert [c["target"] for c in comparison["cases"]] == ["fast"]
    assert all(q["n_old"] == 8 for q in comparison["cases"][0]["quantities"] if q["quantity"] == "latency")
    report = open(os.path.join(new, "REPORT.md")).read()
    assert "Target `slow` ran only in the old run: nothing of it is compared." in report


def record(target, **fields):
    r = ProbeResult(target=target, scenario="s", model="m", case="c", ok=True, start="warm",
                    request_duration_s=1.0, eval_count=10, eval_duration_s=1.0)
    for k, v in fields.items():
        setattr(r, k, v)
    return r


def test_resource_samples_and_running_facts_are_each_targets_own():
    records = [record("a", started_at=0.0, ended_at=1.0), record("b", started_at=0.0, ended_at=1.0)]
    samples = [{"t": t, "target": name, "cpu_seconds_total": t * cpu, "resident_bytes": rss}
               for name, cpu, rss in (("a", 0.5, 100 * 2**20), ("b", 2.0, 900 * 2**20)) for t in (0.0, 1.0, 2.0)]
    system = {"cpu_count": 4, "targets": {"a": {"models": {"m": {"quantization_level": "Q4_0"}}},
                                          "b": {"models": {"m": {"quantization_level": "F16"}}}}}
    running = {"a": [{"name": "m", "size": 1}], "b": [{"name": "m", "size": 2}]}
    summary = summarize(records, samples, system, running)
    a, b = summary["targets"]["a"]["models"]["m"], summary["targets"]["b"]["models"]["m"]
    assert a["resources"]["rss_bytes_peak"] == 100 * 2**20 and b["resources"]["rss_bytes_peak"] == 900 * 2**20
    assert a["resources"]["cpu_percent_mean"] == pytest.approx(50)
    assert b["resources"]["cpu_percent_mean"] == pytest.approx(200)
    assert (a["facts"]["quantization_level"], b["facts"]["quantization_level"]) == ("Q4_0", "F16")
    assert [row["requests"] for row in a["cases"]] == [1] and summary["requests"] == 2


def test_suggestions_run_on_the_target_they_were_found_on():
    scenario = {"name": "s", "model": "m", "api": "generate", "repeats": 3, "timeout": 60.0, "unique_prompt": False,
                "targets": [{"name": "a", "url": "http://a"}, {"name": "b", "url": "http://b"}],
                "cases": [{"name": "c", "prompt": "p", "system": None, "options": {}}]}

    def rec(current, suggested):
        return {"kind": "request", "setting": "num_ctx", "current": current, "suggested": suggested,
                "scenario": "s", "case": "c", "sweep": True}

    doc = yaml.safe_load(suggested_scenarios([("a", "m", [rec(8192, 2048)]), ("b", "m", [rec(32768, 4096)])],
                                             [scenario]))
    by_name = {s["name"]: s for s in doc["scenarios"]}
    assert set(by_name) == {"try-num_ctx-a", "try-num_ctx-b"}
    assert by_name["try-num_ctx-a"]["targets"] == ["a"] and by_name["try-num_ctx-b"]["targets"] == ["b"]
    assert set(by_name["try-num_ctx-b"]["cases"]) == {"num_ctx_32768", "num_ctx_4096"}
    # One target: names as before.
    doc = yaml.safe_load(suggested_scenarios([("a", "m", [rec(8192, 2048)])], [scenario]))
    assert [s["name"] for s in doc["scenarios"]] == ["try-num_ctx"]


def test_regression_lines_name_the_target_only_when_there_are_several():
    reg = {"target": "a", "model": "m", "scenario": "s", "case": "c", "concurrency": 1, "quantity": "ttft",
           "worse_pct": 50.0, "worse_ci_low_pct": 40.0, "worse_ci_high_pct": 60.0}
    assert regression_lines({"targets": ["a"], "regressions": [reg]})[0].startswith("s/c c=1 (m): ttft +50.0% worse")
    assert regression_lines({"targets": ["a", "b"], "regressions": [reg]})[0].startswith("s/c c=1 (m on a): ttft")
