"""`bench --compare` and `--fail-on-regression`: the test on raw records, the gate, the run differences."""

import json
import os
import subprocess
import sys

import numpy as np

from exporter.config import load_text
from exporter.exit_codes import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE
from exporter.report.bench import run_bench
from exporter.report.compare import bootstrap_median_change, compare_records, probability_of_superiority
from exporter.results import ProbeResult
from tests.kit.exporters import ROOT
from tests.kit.fake_ollama import Behavior, FakeOllama

# A first-token delay and token interval of several ms keep the fake's timings well above
# scheduling jitter, so an unchanged server compares as unchanged on a busy machine.
BANDWIDTH = 10e9  # given, so no test spends a second measuring it
STEADY = dict(tokens=6, first_token_delay=0.02, token_interval=0.005, load_time=0.02)


def compare_yaml(url, temperature=0):
    return f"""
targets:
  - {{name: t1, url: "{url}", process_match: null}}
scenarios:
  - name: seq
    model: tiny
    repeats: 8
    warmup: 1
    options: {{temperature: {temperature}, num_predict: 8}}
    cases:
      short: {{prompt: "hi"}}
      long: {{prompt: "one two three four five six seven eight"}}
"""


def records(values, attr="request_duration_s", case="c"):
    out = []
    for v in values:
        r = ProbeResult(target="t", scenario="s", model="m", case=case, ok=True)
        setattr(r, attr, float(v))
        out.append(r)
    return out


def test_bootstrap_is_seeded_and_separates_a_shift_from_noise():
    rng = np.random.default_rng(1)
    old = rng.normal(100, 5, 20)
    same = rng.normal(100, 5, 20)
    slower = rng.normal(130, 5, 20)
    assert bootstrap_median_change(old, slower, seed=7) == bootstrap_median_change(old, slower, seed=7)
    change, lo, hi = bootstrap_median_change(old, slower, seed=7)
    assert 0.2 < lo < change < hi < 0.4
    change, lo, hi = bootstrap_median_change(old, same, seed=7)
    assert lo < 0 < hi
    assert probability_of_superiority(old, slower) > 0.95
    assert probability_of_superiority(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.5


def test_compare_records_judges_direction_per_quantity_and_gates_on_the_interval():
    rng = np.random.default_rng(2)
    old = records(rng.normal(1.0, 0.02, 10))
    new = records(rng.normal(1.5, 0.02, 10))
    [case] = compare_records(old, new, fail_pct=30)
    latency = next(q for q in case["quantities"] if q["quantity"] == "latency")
    assert latency["verdict"] == "worse" and latency["regressed"] and case["regressed"]
    assert latency["worse_ci_low_pct"] > 30
    # Decode speed: higher is better, so a 50% rise is "better" and never a regression.
    old_tps = records(rng.normal(10, 0.2, 10), "eval_duration_s")
    new_tps = records(rng.normal(10 / 1.5, 0.2, 10), "eval_duration_s")
    for r in old_tps + new_tps:
        r.eval_count = 100
    [case] = compare_records(old_tps, new_tps, fail_pct=5)
    tps = next(q for q in case["quantities"] if q["quantity"] == "decode_tps")
    assert tps["verdict"] == "better" and not tps["regressed"] and tps["change_pct"] > 40
    # A threshold above the interval's lower end is not a regression "with confidence".
    [case] = compare_records(old, new, fail_pct=60)
    assert not case["regressed"]
    # Too few requests on one side: not judged.
    [case] = compare_records(old[:2], new, fail_pct=1)
    assert {q["verdict"] for q in case["quantities"] if q["quantity"] == "latency"} == {"too few requests"}


def test_unchanged_server_passes_the_gate(tmp_path):
    with FakeOllama(Behavior(**STEADY)) as server:
        cfg = load_text(compare_yaml(server.url))
        old, new = str(tmp_path / "old"), str(tmp_path / "new")
        assert run_bench(cfg, old, quiet=True, memory_bandwidth=BANDWIDTH) == EXIT_OK
        assert run_bench(cfg, new, compare=old, quiet=True, fail_on_regression=25, memory_bandwidth=BANDWIDTH) == EXIT_OK
    comparison = json.load(open(os.path.join(new, "comparison.json")))
    assert comparison["regressions"] == []
    assert {(c["scenario"], c["case"]) for c in comparison["cases"]} == {("seq", "short"), ("seq", "long")}
    latency = [q for c in comparison["cases"] for q in c["quantities"] if q["quantity"] == "latency"]
    assert all(q["n_old"] == q["n_new"] == 8 for q in latency)  # warm-ups are not results
    assert all(abs(q["change_pct"]) < 25 for q in latency)
    assert comparison["differences"] == []
    report = open(os.path.join(new, "REPORT.md")).read()
    assert "Regression gate passed" in report and "Nothing recorded differs" in report


def test_slower_server_fails_the_gate_with_exit_4_naming_the_case(tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    with FakeOllama(Behavior(**STEADY)) as server:
        config = tmp_path / "bench.yaml"
        config.write_text(compare_yaml(server.url))
        assert run_bench(load_text(compare_yaml(server.url)), old, quiet=True, memory_bandwidth=BANDWIDTH) == EXIT_OK
        server.behavior = Behavior(**{**STEADY, "token_interval": 0.03})  # decode 6x slower
        res = subprocess.run([sys.executable, "-m", "exporter", "bench", "--config.file", str(config), "--output", new,
                              "--compare", old, "--fail-on-regression", "20%", "--quiet", "--memory-bandwidth", "10"],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == EXIT_REGRESSION, res.stderr
    assert "regressed by more than 20%" in res.stderr
    assert "seq/short c=1 (tiny): latency" in res.stderr and "seq/long c=1 (tiny): tpot" in res.stderr
    # TTFT did not change: it is not named.
    assert "ttft" not in res.stderr
    comparison = json.load(open(os.path.join(new, "comparison.json")))
    regressed = {(r["case"], r["quantity"]) for r in comparison["regressions"]}
    assert {("short", "latency"), ("long", "tpot"), ("short", "decode_tps")} <= regressed
    report = open(os.path.join(new, "REPORT.md")).read()
    assert "**Regression gate failed**" in report
    assert any(l.startswith("| tiny | seq | short | 1 | latency |") and "**REGRESSION** **worse**" in l
               for l in report.splitlines())


def test_comparison_names_what_differs_between_the_runs(tmp_path):
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    with FakeOllama(Behavior(**STEADY, version="0.11.4", digest="sha-old", quantization="Q4_1")) as server:
        assert run_bench(load_text(compare_yaml(server.url)), old, quiet=True, memory_bandwidth=BANDWIDTH) == EXIT_OK
        server.behavior = Behavior(**STEADY, version="0.12.0", digest="sha-new", quantization="Q8_0")
        server.loaded.clear()
        assert run_bench(load_text(compare_yaml(server.url, temperature=0.7)), new, compare=old, quiet=True,
                         memory_bandwidth=BANDWIDTH) == EXIT_OK
    diffs = {d["what"]: (d["old"], d["new"]) for d in json.load(open(os.path.join(new, "comparison.json")))["differences"]}
    assert diffs["Ollama version (t1)"] == ("0.11.4", "0.12.0")
    assert diffs["tiny quantization (t1)"] == ("Q4_1", "Q8_0")
    assert diffs["tiny digest (t1)"] == ("sha-old", "sha-new")
    assert json.loads(diffs["options of seq/short"][0])["temperature"] == 0
    assert json.loads(diffs["options of seq/short"][1])["temperature"] == 0.7
    assert "URL (t1)" not in diffs and "host name" not in diffs
    report = open(os.path.join(new, "REPORT.md")).read()
    assert "| Ollama version (t1) | `0.11.4` | `0.12.0` |" in report
    assert "| tiny quantization (t1) | `Q4_1` | `Q8_0` |" in report


def test_fail_on_regression_needs_compare_and_a_bench_directory(tmp_path):
    with FakeOllama(Behavior(**STEADY)) as server:
        cfg = load_text(compare_yaml(server.url))
        assert run_bench(cfg, str(tmp_path / "o"), quiet=True, fail_on_regression=10) == EXIT_USAGE
        assert run_bench(cfg, str(tmp_path / "o"), compare=str(tmp_path), quiet=True) == EXIT_USAGE
    res = subprocess.run([sys.executable, "-m", "exporter", "bench", "--output", str(tmp_path / "x"),
                          "--fail-on-regression", "ten"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == EXIT_USAGE and "percentage" in res.stderr


def test_a_server_default_that_changed_between_versions_is_a_difference():
    """Ollama 0.32.10 stopped applying repeat_penalty 1.1 by default: a case that leaves it to the
    server ran with other settings on either side; one that pins it did not."""
    from exporter.report.compare import system_differences

    def rec(case, options, ctx):
        return ProbeResult(target="t1", scenario="s", model="m", case=case, options=options, context_length=ctx)

    old_sys = {"targets": {"t1": {"ollama_version": "0.11.4"}}}
    new_sys = {"targets": {"t1": {"ollama_version": "0.33.1"}}}
    old = [rec("free", {"temperature": 0}, 4096), rec("pinned", {"repeat_penalty": 1.1}, 4096)]
    new = [rec("free", {"temperature": 0}, 32768), rec("pinned", {"repeat_penalty": 1.1}, 4096)]
    diffs = {d["what"]: (d["old"], d["new"]) for d in system_differences(old_sys, new_sys, old, new)}
    assert diffs["repeat_penalty of s/free, left to the server (t1)"] == (
        "1.1 (Ollama 0.11.4 default)", "1.0 (Ollama 0.33.1 default)")
    assert not any(w.startswith("repeat_penalty of s/pinned") for w in diffs)
    assert diffs["context length loaded for s/free (t1)"] == ("4096", "32768")
    assert not any(w.startswith("context length loaded for s/pinned") for w in diffs)
    # Both sides before (or both after) the change: no difference.
    later = {"targets": {"t1": {"ollama_version": "0.32.9"}}}
    assert not any("repeat_penalty" in d["what"] for d in system_differences(old_sys, later, old, old))
    assert any("repeat_penalty" in d["what"] for d in system_differences(later, new_sys, old, old))


def test_host_differences_and_facts_an_older_run_did_not_record():
    from exporter.report.compare import system_differences

    old = {"cpu_model": "A", "cpu_count": 2, "targets": {}}
    new = {"cpu_model": "B", "cpu_count": 2, "hostname": "h2", "exporter_version": "0.2", "targets": {}}
    diffs = system_differences(old, new, [], [])
    assert diffs == [{"what": "CPU", "old": "A", "new": "B"}]
