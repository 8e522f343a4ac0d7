"""`bench`: the report's files, tables and statistics, checked against the raw records."""

import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np
import pytest

from exporter.config import load_text
from exporter.report.bench import run_bench
from exporter.report.stats import sections
from exporter.results import read_results
from tests.kit.exporters import ROOT
from tests.kit.fake_ollama import Behavior, FakeOllama

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench_yaml(url, process_match="null"):
    return f"""
targets:
  - {{name: t1, url: "{url}", process_match: {process_match}}}
scenarios:
  - name: lengths
    model: tiny
    repeats: 3
    options: {{temperature: 0, num_predict: 8}}
    cases:
      text: {{prompt: "one two three four"}}
    sweep: {{prompt_repeat: [1, 4, 16]}}
  - name: temps
    model: tiny
    repeats: 3
    cases: {{q: {{prompt: "hello"}}}}
    sweep: {{temperature: [0, 0.7, 1.5]}}
  - name: conc
    model: tiny
    repeats: 2
    concurrency: [1, 2, 4]
    cases: {{short: {{prompt: "hi"}}}}
"""


def check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, path
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100


def check_report(out, expect_resources):
    records = list(read_results(os.path.join(out, "results.jsonl")))
    summary = json.load(open(os.path.join(out, "summary.json")))
    system = json.load(open(os.path.join(out, "system.json")))
    report = open(os.path.join(out, "REPORT.md")).read()
    assert system["cpu_count"] and system["total_ram_bytes"] and system["python"]
    assert all(t.get("ollama_version") for t in system["targets"].values())
    assert summary["targets"]
    for target, model, m in sections(summary):
        assert (m["target"], m["model"]) == (target, model)
        for row in m["cases"]:
            rs = [r for r in records if (r.target, r.model, r.scenario, r.case, r.concurrency) ==
                  (target, model, row["scenario"], row["case"], row["concurrency"]) and r.ok]
            assert row["requests"] >= len(rs) > 0
            lat = [r.request_duration_s for r in rs]
            assert row["latency"]["mean"] == pytest.approx(statistics.fmean(lat))
            assert row["latency"]["median"] == pytest.approx(statistics.median(lat))
            assert row["latency"]["p95"] == pytest.approx(float(np.percentile(lat, 95)))
            assert row["ttft"]["mean"] == pytest.approx(statistics.fmean(r.ttft_s for r in rs))
            assert row["decode_tps"]["mean"] == pytest.approx(statistics.fmean(r.eval_count / r.eval_duration_s for r in rs))
            assert row["output_tokens_total"] == sum(r.eval_count for r in rs)
            # The summary table has this case with numbers in every column.
            line = next(l for l in report.splitlines()
                        if l.startswith(f"| {row['scenario']} | {row['case']} | {row['concurrency']} |"))
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert all(re.fullmatch(r"[0-9.]+", c) for c in cells[2:]), line
            assert cells[5] == f"{row['latency']['mean']:.3f}"
        assert m["prompt_length"] and len({p["prompt_tokens"] for p in m["prompt_length"]["points"]}) >= 3
        assert "growth" in m["prompt_length"]["prefill_fit"] or "growth" in m["prompt_length"]["ttft_fit"]
        assert [r["temperature"] for r in m["temperature"][0]["rows"]] == [0, 0.7, 1.5]
        assert [r["concurrency"] for r in m["concurrency"][0]["rows"]] == [1, 2, 4]
        assert m["bottleneck"]["verdict"] != "not enough data"
        assert (m["resources"] is not None) == expect_resources
    for heading in ("Experiment 1: prompt length impact", "Experiment 2: temperature impact",
                    "Experiment 3: concurrent requests", "Experiment 4: resource use", "Bottleneck",
                    "Comparison to theory", "Where the time goes"):
        assert heading in report
    pngs = [f for f in os.listdir(out) if f.endswith(".png")]
    expected = {"latency_distribution", "tokens_per_second", "ttft_by_case", "prompt_length_impact",
                "temperature_impact", "concurrency_impact"} | ({"resource_usage"} if expect_resources else set())
    assert {e for e in expected if any(p.startswith(e) for p in pngs)} == expected
    for p in pngs:
        check_png(os.path.join(out, p))
        assert f"]({p})" in report
    return summary


def test_bench_against_the_fake_server_and_compare(tmp_path):
    with FakeOllama(Behavior(tokens=6, token_interval=0.002, load_time=0.05)) as server:
        cfg = load_text(bench_yaml(server.url))
        first, second = str(tmp_path / "a"), str(tmp_path / "b")
        assert run_bench(cfg, first, quiet=True) == 0
        check_report(first, expect_resources=False)
        server.behavior = Behavior(tokens=6, token_interval=0.02, load_time=0.05)  # 10x slower decode
        assert run_bench(cfg, second, compare=first, quiet=True) == 0
    report = open(os.path.join(second, "REPORT.md")).read()
    assert f"## Comparison with `{first}`" in report
    tpot_line = next(l for l in report.splitlines()
                     if l.startswith("| tiny | lengths | text@prompt_repeat=4 | 1 | time per output token |"))
    assert tpot_line.endswith("| **worse** |")  # ten times slower decode is beyond the noise


def test_bench_cli_refuses_bad_config_and_missing_compare(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios: [{name: s, model: m, cases: {}}]")
    res = subprocess.run([sys.executable, "-m", "exporter", "bench", "--config.file", str(bad), "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1 and "scenarios[0].cases" in res.stderr
    with FakeOllama() as server:
        cfg = load_text(bench_yaml(server.url))
        assert run_bench(cfg, str(tmp_path / "o"), compare=str(tmp_path / "nowhere"), quiet=True) == 2


def test_all_failed_bench_still_writes_a_report(tmp_path):
    with FakeOllama(Behavior(mode="http_503")) as server:
        cfg = load_text(bench_yaml(server.url))
        assert run_bench(cfg, str(tmp_path / "o"), quiet=True) == 3
    report = open(tmp_path / "o" / "REPORT.md").read()
    assert "server_busy" in report


@pytest.mark.ollama
def test_day_one_bench_against_real_ollama(real_ollama, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{real_ollama.port}")
    monkeypatch.setenv("OLLAMA_PERF_MODEL", "smollm2-135m")
    out = str(tmp_path / "day1")
    res = subprocess.run([sys.executable, "-m", "exporter", "bench", "--config.file", "scenarios/day1-quick.yaml",
                          "--output", out], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "requests, 0 failed" in res.stderr
    summary = check_report(out, expect_resources=True)
    [(_, _, m)] = [s for s in sections(summary) if s[1] == "smollm2-135m"]
    assert m["theory"]["decode_tps_bound"] > 0 and m["theory"]["kv_cache_bytes"] > 0
    assert m["resources"]["cpu_percent_mean"] > 10 and m["resources"]["rss_bytes_peak"] > 100e6
