"""The open-loop rate sweep: Poisson arrivals, goodput under TTFT/TPOT limits, the knee."""

import json
import os

import numpy as np

from exporter.config import load_text
from exporter.report.bench import run_bench
from exporter.report.ratesweep import RateSweep, poisson_arrivals
from exporter.results import read_results
from tests.kit.fake_ollama import Behavior, FakeOllama


def test_poisson_arrivals_are_seeded_and_have_the_rate():
    a = poisson_arrivals(50, 100, np.random.default_rng(3))
    assert a == poisson_arrivals(50, 100, np.random.default_rng(3))
    assert 4700 < len(a) < 5300 and all(0 < x < 100 for x in a) and a == sorted(a)
    # The same seed at a higher rate: the same pattern compressed, never fewer arrivals.
    counts = [len(poisson_arrivals(r, 15, np.random.default_rng(0))) for r in (0.5, 1, 1.5, 2, 3)]
    assert counts == sorted(counts) and len(set(counts)) == 5
    gaps = np.diff(a)
    assert abs(gaps.mean() - 0.02) < 0.002 and abs(gaps.std() / gaps.mean() - 1) < 0.1  # exponential: CV 1


def test_rate_sweep_finds_the_knee_of_a_one_at_a_time_server(tmp_path):
    out = str(tmp_path / "o")
    # About 30 requests/s of capacity: one generation at a time, ~0.03 s each.
    with FakeOllama(Behavior(tokens=4, token_interval=0.01, load_time=0, parallel=1)) as server:
        cfg = load_text(f"""
targets: [{{name: t1, url: "{server.url}", process_match: null}}]
scenarios:
  - name: s
    model: tiny
    options: {{num_predict: 4}}
    cases: {{q: {{prompt: "hello"}}}}
""")
        sweep = RateSweep(rates=(4, 10, 60), duration_s=1.5, ttft_limit_s=0.5, tpot_limit_s=0.05)
        assert run_bench(cfg, out, quiet=True, memory_bandwidth=10e9, rate_sweep=sweep) == 0
    records = list(read_results(os.path.join(out, "rate_sweep.jsonl")))
    assert {r.case for r in records} == {"q@rate=4", "q@rate=10", "q@rate=60"}
    # Open loop: at 60/s the arrivals did not wait for the server, so they piled up in its queue.
    by_rate = {rate: [r for r in records if r.case == f"q@rate={rate}"] for rate in (4, 10, 60)}
    assert len(by_rate[60]) == len(poisson_arrivals(60, 1.5, np.random.default_rng(0)))
    summary = json.load(open(os.path.join(out, "summary.json")))
    [sat] = summary["saturation"]
    rows = {r["offered_rate"]: r for r in sat["rows"]}
    assert rows[4]["within_limits"] and rows[10]["within_limits"] and not rows[60]["within_limits"]
    assert rows[60]["ttft_p95"] > 0.5 > rows[10]["ttft_p95"]
    assert sat["knee_rate"] == 10
    assert rows[60]["throughput"] < 45  # served no faster than the server can go
    assert rows[60]["goodput"] < rows[60]["arrival_rate"]
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "## Saturation: open-loop request-rate sweep" in report and "**Knee: 10 requests/s**" in report
    assert "![Latency and goodput against offered load](saturation.png)" in report
    with open(os.path.join(out, "saturation.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_knee_is_the_highest_rate_within_limits_and_a_stall_below_it_is_listed():
    from exporter.report.ratesweep import saturation
    from exporter.results import ProbeResult

    def rec(rate, ttft, i):
        return ProbeResult(target="t", scenario="s", model="m", case=f"q@rate={rate:g}", ok=True, ttft_s=ttft,
                           request_duration_s=ttft + 0.5, eval_count=10, started_at=i, ended_at=i + ttft + 0.5)

    records = ([rec(0.5, 3.0 if i == 0 else 0.1, i) for i in range(5)]      # one stall at the lowest rate
               + [rec(1, 0.1, i) for i in range(10)] + [rec(2, 0.2, i) for i in range(20)]
               + [rec(4, 5.0, i) for i in range(40)])
    [sat] = saturation(records, {"ttft_limit_s": 1.0, "tpot_limit_s": 0.1, "duration_s": 10})
    assert [r["within_limits"] for r in sat["rows"]] == [False, True, True, False]
    assert sat["knee_rate"] == 2 and sat["broken_below_knee"] == [0.5]
