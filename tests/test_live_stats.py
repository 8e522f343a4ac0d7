"""Exact live statistics: quantiles, the recent window, the baseline and its noise, bounds, restart."""

import math
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import load_text
from exporter.keyspace import CASE
from exporter.live_window import Policy, kth_distance, quantile, threshold
from exporter.results import ProbeResult, ResultsWriter, RunSummary
from exporter.service import Exporter
from tests.conftest import scenario_yaml
from tests.kit.exporters import open_live_stats, sample_value

T0 = 1_780_000_000.0
TTFT = "time_to_first_token_seconds"
LABELS = {"target": "t1", "scenario": "s", "model": "m", "case": "short", "concurrency": "1", "start": "warm"}


def record(run_id, t, ttft=None, ok=True, start="warm", case="short", scenario="s", model="m", **kw):
    return ProbeResult(target="t1", scenario=scenario, model=model, case=case, run_id=run_id, ok=ok, start=start,
                       started_at=t - 1, ended_at=t, ttft_s=ttft, **kw)


def feed(stats, t, values, run_id=None, sinks=(), **kw):
    """One run: its successful requests end at t - k, t - k + 1, ..., t."""
    run_id = run_id or f"r{t:.0f}"
    for k, v in enumerate(values):
        r = record(run_id, t - (len(values) - 1 - k), v, **kw)
        for s in (stats, *sinks):
            s.on_result(r) if hasattr(s, "on_result") else s.write(r)
    stats.on_run(RunSummary("t1", kw.get("scenario", "s"), run_id, t - 60, t + 0.5, len(values), 0))


def gauge(registry, name, quantity=TTFT, **extra):
    """A live-statistics sample from a registry, or from an Exporter's /metrics."""
    labels = {**LABELS, "quantity": quantity, **extra}
    if isinstance(registry, Exporter):
        return sample_value(registry, name, labels)
    return registry.get_sample_value(name, labels)


def samples(registry):
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for m in registry.collect() if m.name.startswith("llm_probe_") for s in m.samples
    )


def test_quantile_is_numpys_linear_quantile():
    rng = random.Random(1)
    for n in (1, 2, 3, 7, 100, 1001):
        values = sorted(rng.lognormvariate(0, 0.5) for _ in range(n))
        for q in (0, 0.5, 0.9, 0.95, 0.99, 1):
            assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12, abs=0)


def test_kth_distance_selects_from_the_sorted_distances():
    rng = random.Random(6)
    for _ in range(3000):
        xs = sorted(rng.choice((rng.random(), round(rng.random(), 1))) for _ in range(rng.randint(1, 30)))
        m = rng.choice(xs + [rng.random()])
        k = rng.randrange(len(xs))
        assert kth_distance(xs, m, k) == sorted(abs(x - m) for x in xs)[k]


def test_recent_quantiles_are_exact_over_the_requests_of_the_window():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    rng = random.Random(2)
    runs = [[rng.uniform(0.2, 0.6) for _ in range(7)] for _ in range(3)]
    for i, values in enumerate(runs):
        feed(stats, T0 + 3600 * i, values)  # hourly: the window is the last 3 runs
    pooled = [v for run in runs for v in run]
    for q in ("0.5", "0.9", "0.95", "0.99"):
        expected = np.quantile(pooled, float(q))
        assert gauge(registry, "llm_probe_recent_quantile", quantile=q) == pytest.approx(expected, rel=1e-12)
    assert gauge(registry, "llm_probe_recent_requests") == 21
    assert gauge(registry, "llm_probe_recent_quantile_count") == 21
    assert gauge(registry, "llm_probe_recent_quantile_sum") == pytest.approx(sum(pooled))
    assert gauge(registry, "llm_probe_recent_runs") == 3
    # Two deterministic-looking values in (0.25, 0.5]: no spread invented between bucket edges.
    feed(stats, T0 + 4 * 3600, [0.49, 0.49])
    feed(stats, T0 + 5 * 3600, [0.49])
    feed(stats, T0 + 6 * 3600, [0.49])
    assert gauge(registry, "llm_probe_recent_quantile", quantile="0.99") == pytest.approx(0.49)


def test_the_exposition_passes_promtool_check_metrics():
    import shutil
    import subprocess

    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    for i in range(12):
        feed(stats, T0 + 3600 * i, [0.3, 0.31])
    text = generate_latest(registry).decode()
    assert 'llm_probe_recent_quantile{case="short",concurrency="1",model="m",quantile="0.99"' in text
    assert "llm_probe_regression_threshold_ratio{" in text
    promtool = shutil.which("promtool")
    if promtool:  # Debian's prometheus package; the rule tests need it anyway
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_failures_are_left_out_and_cold_warm_and_quantities_are_apart():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    stats.on_result(record("a", T0, 0.3, eval_count=50, eval_duration_s=1.0, request_duration_s=1.3))
    stats.on_result(record("a", T0 + 1, 5.0, start="cold", load_duration_s=4.0, request_duration_s=6.0))
    stats.on_result(record("a", T0 + 2, 9.9, ok=False))
    stats.on_run(RunSummary("t1", "s", "a", T0 - 5, T0 + 3, 3, 1))
    assert gauge(registry, "llm_probe_recent_quantile", quantile="0.5") == 0.3
    assert gauge(registry, "llm_probe_recent_requests") == 1
    assert gauge(registry, "llm_probe_recent_quantile", quantile="0.5", start="cold") == 5.0
    assert gauge(registry, "llm_probe_recent_quantile", "output_tokens_per_second", quantile="0.5") == 50.0
    assert gauge(registry, "llm_probe_recent_quantile", "load_duration_seconds", quantile="0.5", start="cold") == 4.0
    assert gauge(registry, "llm_probe_recent_quantile", "request_duration_seconds", quantile="0.5") == 1.3


def test_recent_window_is_max_of_runs_and_minutes_and_the_baseline_is_before_it():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    medians = []
    for i in range(40):  # a run a minute, one request each
        v = 1.0 + 0.01 * (i % 7)
        medians.append(v)
        feed(stats, T0 + 60 * i, [v])
    # 15 minutes hold 15 runs (runs at exactly 15 minutes ago are outside).
    assert gauge(registry, "llm_probe_recent_runs") == 15
    assert gauge(registry, "llm_probe_recent_quantile", quantile="0.5") == pytest.approx(np.median(medians[-15:]))
    base = np.array(medians[:-15])
    assert gauge(registry, "llm_probe_baseline_runs") == len(base)
    assert gauge(registry, "llm_probe_baseline_median") == pytest.approx(np.median(base))
    mad = np.median(np.abs(base - np.median(base)))
    assert gauge(registry, "llm_probe_baseline_noise") == pytest.approx(1.4826 * mad)


def test_no_baseline_until_six_runs_precede_the_window():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    for i in range(8):
        feed(stats, T0 + 3600 * i, [1.0 + 0.01 * i])  # hourly: window = 3 runs
        if i < 8:
            assert gauge(registry, "llm_probe_baseline_runs") == max(i + 1 - 3, 0)
        assert gauge(registry, "llm_probe_baseline_median") is None
        assert gauge(registry, "llm_probe_regression_threshold_ratio") is None
    feed(stats, T0 + 3600 * 8, [1.0])
    assert gauge(registry, "llm_probe_baseline_runs") == 6
    assert gauge(registry, "llm_probe_baseline_median") == pytest.approx(1.025)
    assert gauge(registry, "llm_probe_regression_threshold_ratio") >= Policy().min_effect


def test_baseline_spans_a_day_but_a_slow_schedule_reaches_back_for_enough_runs():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    for i in range(2000):  # a run a minute for 33 h: the baseline is the day before the window
        feed(stats, T0 + 60 * i, [1.0])
    # 24 h back from the newest run (1441 runs) minus the 15 of the recent window.
    assert gauge(registry, "llm_probe_baseline_runs") == 24 * 60 + 1 - 15
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    for i in range(5 * 24):  # hourly for 5 days: the baseline reaches back 3 days, not 1
        feed(stats, T0 + 3600 * i, [1.0])
    # Runs 47 h .. 116 h: everything within 72 h except the 3 of the recent window.
    assert gauge(registry, "llm_probe_baseline_runs") == 72 + 1 - 3


def test_memory_is_bounded_whatever_the_schedule():
    p = Policy()
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    for i in range(6000):  # a run a second with 10 requests
        feed(stats, T0 + i, [1.0 + 0.001 * (i % 11)] * 10)
    (series,) = stats.store.read(CASE, tuple(LABELS.values())[:5], "live",
                                 lambda state, ctx: list(state.series.values()))
    assert len(series.times) <= p.baseline_max_runs + p.recent_max_runs + 64
    assert len(series.raw) <= p.recent_max_runs
    assert sum(len(r) for r in series.raw) <= p.recent_max_runs * 10
    assert gauge(registry, "llm_probe_recent_requests") <= p.recent_max_values
    assert gauge(registry, "llm_probe_baseline_runs") == p.baseline_max_runs
    # Huge runs: the raw values kept stay near the cap too.
    for i in range(50):
        feed(stats, T0 + 7000 + i, [1.0] * 3000)
    assert sum(len(r) for r in series.raw) <= p.recent_max_values + 3000
    # Runs whose summary never arrives are forgotten after a bound.
    for i in range(1000):
        stats.on_result(record(f"lost{i}", T0 + 10_000 + i, 1.0))
    assert len(stats._pending) <= 256 + 1


def test_sorted_baseline_stays_exact_while_runs_enter_and_leave():
    registry = CollectorRegistry()
    stats = open_live_stats(registry, Policy(baseline_max_runs=50, recent_max_runs=20))
    rng = random.Random(3)
    medians = []
    for i in range(400):
        v = rng.lognormvariate(0, 0.2)
        medians.append(v)
        feed(stats, T0 + 60 * i, [v])
        if i > 30 and i % 37 == 0:
            base = np.array(medians[:-15][-50:])
            assert gauge(registry, "llm_probe_baseline_median") == pytest.approx(np.median(base), rel=1e-12)
            assert gauge(registry, "llm_probe_baseline_noise") == pytest.approx(
                1.4826 * np.median(np.abs(base - np.median(base))), rel=1e-9)


def test_threshold_follows_noise_and_schedule():
    from exporter.live_window import Baseline
    p = Policy()
    quiet = threshold(p, Baseline(1.0, 0.005, 500, 60.0), 15, 15)
    noisy = threshold(p, Baseline(1.0, 0.10, 500, 60.0), 15, 15)
    assert quiet == p.min_effect
    assert noisy > 0.12
    # Fewer runs in the baseline: the noise itself is less certain, the threshold higher.
    assert threshold(p, Baseline(1.0, 0.10, 6, 60.0), 15, 15) > noisy
    # K grows with the number of windows a schedule makes a week.
    assert p.k(40320, 60, 500) == pytest.approx(p.k(10080, 15, 500))
    assert p.k(10080, 15, 500) > p.k(168, 3, 500)


def test_regression_inputs_for_the_alert_cases_of_the_issue():
    """TTFT 0.30 -> 0.45 s and decode 49 -> 31 tok/s move the recent median past the
    threshold; 0.49 -> 0.51 s does not (regression.yml compares exactly these gauges)."""
    for before, after, quantity, fires in (
        (0.30, 0.45, TTFT, True), (0.49, 0.51, TTFT, False), (49.0, 31.0, "output_tokens_per_second", True),
    ):
        registry = CollectorRegistry()
        stats = open_live_stats(registry)
        rng = random.Random(4)
        for i in range(120):
            v = (before if i < 100 else after) * rng.lognormvariate(0, 0.01)
            kw = {"eval_count": 100, "eval_duration_s": 100 / v} if quantity != TTFT else {}
            feed(stats, T0 + 60 * i, [v if quantity == TTFT else None], **kw)
        recent = gauge(registry, "llm_probe_recent_quantile", quantity, quantile="0.5")
        base = gauge(registry, "llm_probe_baseline_median", quantity)
        change = recent / base - 1 if quantity == TTFT else 1 - recent / base
        assert (change > gauge(registry, "llm_probe_regression_threshold_ratio", quantity)) is fires


def _run_both(tmp_path, runs, interval, writer_kw=None):
    path = tmp_path / "results.jsonl"
    writer = ResultsWriter(path, **(writer_kw or {}))
    registry = CollectorRegistry()
    live = open_live_stats(registry)
    rng = random.Random(5)
    for i in range(runs):
        t = T0 + interval * i
        for case in ("short", "long"):
            values = [rng.lognormvariate(math.log(0.3 if case == "short" else 2.0), 0.05) for _ in range(3)]
            feed(live, t, values, run_id=f"{case}{i}", sinks=[writer], case=case,
                 eval_count=64, eval_duration_s=rng.uniform(2, 2.2), request_duration_s=3.0)
    writer.close()
    rebuilt_registry = CollectorRegistry()
    stats = open_live_stats(rebuilt_registry).rebuild(path)
    return registry, rebuilt_registry, stats


def test_rebuild_from_the_results_file_gives_the_gauges_of_the_live_path(tmp_path):
    registry, rebuilt, stats = _run_both(tmp_path, runs=300, interval=60)
    assert stats.runs == 600 and stats.series == 2 * 4
    live = samples(registry)
    assert live and samples(rebuilt) == live
    assert gauge(rebuilt, "llm_probe_baseline_runs") > 200


def test_rebuild_reads_the_rotated_file_when_the_span_needs_it(tmp_path):
    # Hourly runs rotate out of PATH into PATH.1, PATH.2, ... long before three days have passed.
    registry, rebuilt, stats = _run_both(tmp_path, runs=100, interval=3600, writer_kw={"max_bytes": 60_000, "keep": 9})
    assert (tmp_path / "results.jsonl.3").exists()
    assert samples(rebuilt) == samples(registry)


def test_rebuild_survives_a_missing_or_garbled_file(tmp_path):
    registry = CollectorRegistry()
    assert open_live_stats(registry).rebuild(tmp_path / "nothing.jsonl").records == 0
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"not": "a record"}\n[1,2]\ngarbage\n{"target": "t1", "scenario"')
    assert open_live_stats(CollectorRegistry()).rebuild(path).records == 0


def test_reload_retires_the_series_of_removed_cases(tmp_path):
    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text(scenario_yaml("http://127.0.0.1:9", model="m", cases={"short": "a", "long": "b"}))
    exporter = Exporter(str(cfg_path), load_text(cfg_path.read_text(), "test"))
    stats = exporter.live_stats
    for case in ("short", "long"):
        feed(stats, T0, [0.3], run_id=case, case=case)
    assert gauge(exporter, "llm_probe_recent_requests", case="long") == 1
    cfg_path.write_text(scenario_yaml("http://127.0.0.1:9", model="m", cases={"short": "a"}))
    ok, _ = exporter.reload()
    assert ok
    assert gauge(exporter, "llm_probe_recent_requests", case="long") is None
    assert gauge(exporter, "llm_probe_recent_requests") == 1
    assert exporter.store.keys(CASE) == [("t1", "s", "m", "short", "1")]


def test_the_exporter_rebuilds_its_baseline_at_start_up(tmp_path):
    results = tmp_path / "results.jsonl"
    writer = ResultsWriter(results)
    for i in range(30):
        writer.write(record(f"r{i}", T0 + 3600 * i, 0.3 + 0.001 * i))
    writer.close()
    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text(scenario_yaml("http://127.0.0.1:9", model="m"))
    exporter = Exporter(str(cfg_path), load_text(cfg_path.read_text(), "test"), results_path=str(results))
    assert gauge(exporter, "llm_probe_baseline_runs") == 27
    assert gauge(exporter, "llm_probe_baseline_median") == pytest.approx(0.313)
