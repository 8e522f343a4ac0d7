"""Exact live statistics: quantiles, the recent window, the regression gauges, bounds, acceptances, restart."""

import math
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import load_text
from exporter.keyspace import CASE
from exporter.live_window import Policy, quantile
from exporter.regression import Settings
from exporter.results import Acceptance, ProbeResult, ResultsWriter, RunSummary
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
    for i in range(60):
        feed(stats, T0 + 3600 * i, [0.3, 0.31 + 0.001 * (i % 3)])
    text = generate_latest(registry).decode()
    assert 'llm_probe_recent_quantile{case="short",concurrency="1",model="m",quantile="0.99"' in text
    assert "llm_probe_regression_threshold_ratio{" in text
    promtool = shutil.which("promtool")
    if promtool:  # scripts/install-prometheus.sh; the rule tests need it anyway
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


def test_recent_window_is_max_of_runs_and_minutes():
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


def test_no_threshold_until_the_history_holds_enough_and_the_gauges_say_so():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    rng = random.Random(8)
    for i in range(6 * 60):  # 6 hours of a run a minute: too short to know the noise
        feed(stats, T0 + 60 * i, [0.3 * rng.lognormvariate(0, 0.05)])
    assert gauge(registry, "llm_probe_regression_threshold_ratio") is None
    assert gauge(registry, "llm_probe_regression_expected") is None
    assert 5 * 3600 < gauge(registry, "llm_probe_regression_history_seconds") <= 6 * 3600
    for i in range(6 * 60, 16 * 60):
        feed(stats, T0 + 60 * i, [0.3 * rng.lognormvariate(0, 0.05)])
    assert gauge(registry, "llm_probe_regression_threshold_ratio") >= Settings().min_effect
    assert gauge(registry, "llm_probe_regression_expected") == pytest.approx(0.3, rel=0.05)
    assert gauge(registry, "llm_probe_baseline_median") == pytest.approx(0.3, rel=0.05)
    assert gauge(registry, "llm_probe_regression_seasonal") == 0
    assert gauge(registry, "llm_probe_regression_improvement_ratio") == 0
    assert gauge(registry, "llm_probe_regression_since_timestamp_seconds") is None
    assert gauge(registry, "llm_probe_baseline_runs") > 14 * 60


def test_memory_is_bounded_whatever_the_schedule():
    p = Policy()
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    for i in range(6000):  # a run a second with 10 requests
        feed(stats, T0 + i, [1.0 + 0.001 * (i % 11)] * 10)
    key = tuple(LABELS.values())[:5]
    (series,) = stats.store.read(CASE, key, "live", lambda state, ctx: list(state.series.values()))
    (det,) = stats.store.read(CASE, key, "live", lambda state, ctx: list(state.detectors.values()))
    assert len(series.times) <= p.recent_max_runs + 64
    assert len(series.raw) <= p.recent_max_runs
    assert sum(len(r) for r in series.raw) <= p.recent_max_runs * 10
    assert gauge(registry, "llm_probe_recent_requests") <= p.recent_max_values
    # The history is one block per recent window (15 min), whatever the schedule.
    assert len(det.blocks) <= 6000 / 900 + 1
    # Huge runs: the raw values kept stay near the cap too.
    for i in range(50):
        feed(stats, T0 + 7000 + i, [1.0] * 3000)
    assert sum(len(r) for r in series.raw) <= p.recent_max_values + 3000
    # Runs whose summary never arrives are forgotten after a bound.
    for i in range(1000):
        stats.on_result(record(f"lost{i}", T0 + 10_000 + i, 1.0))
    assert len(stats._pending) <= 256 + 1


def test_regression_inputs_for_the_alert_cases_of_the_issue():
    """TTFT 0.30 -> 0.45 s and decode 49 -> 31 tok/s move the recent median past the
    threshold; 0.49 -> 0.51 s does not (regression.yml compares exactly these gauges)."""
    for before, after, quantity, fires in (
        (0.30, 0.45, TTFT, True), (0.49, 0.51, TTFT, False), (49.0, 31.0, "output_tokens_per_second", True),
    ):
        registry = CollectorRegistry()
        stats = open_live_stats(registry)
        rng = random.Random(4)
        for i in range(16 * 60 + 30):  # 16 h of history, then 30 minutes after the change
            v = (before if i < 16 * 60 else after) * rng.lognormvariate(0, 0.01)
            kw = {"eval_count": 100, "eval_duration_s": 100 / v} if quantity != TTFT else {}
            feed(stats, T0 + 60 * i, [v if quantity == TTFT else None], **kw)
        recent = gauge(registry, "llm_probe_recent_quantile", quantity, quantile="0.5")
        expected = gauge(registry, "llm_probe_regression_expected", quantity)
        assert expected == pytest.approx(before, rel=0.02)
        change = recent / expected - 1 if quantity == TTFT else 1 - recent / expected
        assert (change > gauge(registry, "llm_probe_regression_threshold_ratio", quantity)) is fires
        assert (gauge(registry, "llm_probe_regression_since_timestamp_seconds", quantity) is not None) is fires


def test_accepting_a_new_level_ends_the_episode_and_moves_the_reference():
    registry = CollectorRegistry()
    stats = open_live_stats(registry)
    rng = random.Random(9)
    for i in range(18 * 60):
        feed(stats, T0 + 60 * i, [(0.3 if i < 16 * 60 else 0.45) * rng.lognormvariate(0, 0.02)])
    assert gauge(registry, "llm_probe_regression_since_timestamp_seconds") is not None
    assert stats.accept(Acceptance(at=T0 + 18 * 3600, target="t1", case="other")) == 0
    assert stats.accept(Acceptance(at=T0 + 18 * 3600, target="t1", case="short")) == 1
    assert gauge(registry, "llm_probe_regression_since_timestamp_seconds") is None
    assert gauge(registry, "llm_probe_baseline_median") == pytest.approx(0.45, rel=0.03)
    for i in range(18 * 60, 19 * 60):
        feed(stats, T0 + 60 * i, [0.45 * rng.lognormvariate(0, 0.02)])
    assert gauge(registry, "llm_probe_regression_since_timestamp_seconds") is None


def _run_both(tmp_path, runs, interval, writer_kw=None, accept_at=None, pattern=lambda t: 1.0):
    path = tmp_path / "results.jsonl"
    writer = ResultsWriter(path, **(writer_kw or {}))
    registry = CollectorRegistry()
    live = open_live_stats(registry)
    rng = random.Random(5)
    for i in range(runs):
        t = T0 + interval * i
        for case in ("short", "long"):
            level = (1.4 if accept_at and i >= accept_at - 60 and case == "short" else 1.0) * pattern(t)
            values = [level * rng.lognormvariate(math.log(0.3 if case == "short" else 2.0), 0.05) for _ in range(3)]
            feed(live, t, values, run_id=f"{case}{i}", sinks=[writer], case=case,
                 eval_count=64, eval_duration_s=rng.uniform(2, 2.2), request_duration_s=3.0)
        if accept_at and i == accept_at:
            a = Acceptance(at=t + 1, target="t1", case="short")
            writer.write_acceptance(a)
            assert live.accept(a) == 4  # the case's quantities
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


def test_rebuild_replays_acceptances_in_order(tmp_path):
    # 20 hours a minute apart; a +40 % step on one case at 18 h, accepted an hour later.
    registry, rebuilt, stats = _run_both(tmp_path, runs=20 * 60, interval=60, accept_at=19 * 60)
    live = samples(registry)
    assert gauge(registry, "llm_probe_baseline_median") == pytest.approx(0.42, rel=0.05)
    assert samples(rebuilt) == live
    # Other readers skip the acceptance line.
    from exporter.results import read_results
    assert sum(1 for _ in read_results(tmp_path / "results.jsonl")) == 2 * 3 * 20 * 60


def test_rebuild_reads_the_rotated_file_when_the_span_needs_it(tmp_path):
    # Hourly runs rotate out of PATH into PATH.1, PATH.2, ... long before the 29 days it reads.
    registry, rebuilt, stats = _run_both(tmp_path, runs=240, interval=3600, writer_kw={"max_bytes": 60_000, "keep": 40})
    assert (tmp_path / "results.jsonl.3").exists()
    assert samples(rebuilt) == samples(registry)


def test_rebuild_survives_a_missing_or_garbled_file(tmp_path, caplog):
    registry = CollectorRegistry()
    with caplog.at_level("WARNING"):
        assert open_live_stats(registry).rebuild(tmp_path / "nothing.jsonl").records == 0
    # A first start (the file does not exist yet) is not an error.
    assert not caplog.records
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
    for i in range(60):
        writer.write(record(f"r{i}", T0 + 3600 * i, 0.3 + 0.001 * (i % 5)))
    writer.close()
    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text(scenario_yaml("http://127.0.0.1:9", model="m"))
    exporter = Exporter(str(cfg_path), load_text(cfg_path.read_text(), "test"), results_path=str(results))
    exporter.rebuild()  # start() runs it on its own thread, then the probes
    assert 53 <= gauge(exporter, "llm_probe_baseline_runs") <= 59  # counted at the last refresh
    assert gauge(exporter, "llm_probe_baseline_median") == pytest.approx(0.302)
    setting = {"scenario": "s", "setting": "baseline"}
    assert sample_value(exporter, "llm_probe_regression_setting_seconds", setting) == 7 * 86400


def _call(app, method, path, query=""):
    status = {}

    def start_response(s, headers):
        status["s"] = s

    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query}, start_response))
    return status["s"], body.decode()


def test_accept_endpoint_and_command_record_the_acceptance(tmp_path):
    from exporter.cli import main
    from exporter.results import parse_acceptance_line

    results = tmp_path / "results.jsonl"
    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text(scenario_yaml("http://127.0.0.1:9", model="m"))
    exporter = Exporter(str(cfg_path), load_text(cfg_path.read_text(), "test"), results_path=str(results))
    app = exporter.app()
    # Until the rebuild at start-up has run, an acceptance would land among the replayed runs.
    assert _call(app, "POST", "/-/accept", "target=t1")[0].startswith("503")
    exporter.rebuild()
    for i in range(16 * 60):
        feed(exporter.live_stats, T0 + 60 * i, [0.3 + 0.001 * (i % 5)], scenario="s")
    app = exporter.app()
    assert _call(app, "GET", "/-/accept", "target=t1")[0].startswith("405")
    assert _call(app, "POST", "/-/accept", "case=short")[0].startswith("400")
    assert _call(app, "POST", "/-/accept", "target=t1&bogus=1")[0].startswith("400")
    assert _call(app, "POST", "/-/accept", "target=t1&case=nope")[0].startswith("404")
    status, body = _call(app, "POST", "/-/accept", "target=t1&scenario=s&case=short")
    assert status.startswith("200") and "accepted the current level of 1 series" in body, body
    exporter.writer.close()
    lines = results.read_bytes().splitlines()
    accepted = [a for a in map(parse_acceptance_line, lines) if a]
    assert len(accepted) == 1 and accepted[0].case == "short" and accepted[0].scenario == "s"
    # With the exporter stopped, the command appends the record for the next start to replay.
    assert main(["accept", "--target", "t1", "--case", "short", "--results.file", str(results)]) == 0
    assert sum(1 for a in map(parse_acceptance_line, results.read_bytes().splitlines()) if a) == 2


def test_the_exporter_serves_metrics_while_it_rebuilds_and_probes_after(tmp_path, monkeypatch):
    """Weeks of results take minutes to replay: /metrics answers meanwhile (no "exporter down"),
    /-/ready says not ready, and no probe runs before the replay is done."""
    import threading

    import requests

    from exporter.live_stats import LiveStats
    from tests.kit.exporters import ThreadedExporter, wait_for
    from tests.kit.fake_ollama import FakeOllama

    replaying, release = threading.Event(), threading.Event()
    original = LiveStats.rebuild

    def slow_rebuild(self, path, *args, **kwargs):
        replaying.set()
        assert release.wait(30)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(LiveStats, "rebuild", slow_rebuild)
    results = tmp_path / "results.jsonl"
    writer = ResultsWriter(results)
    for i in range(60):
        writer.write(record(f"r{i}", T0 + 3600 * i, 0.3))
    writer.close()
    with FakeOllama() as fake:
        cfg_path = tmp_path / "s.yaml"
        cfg_path.write_text(scenario_yaml(fake.url, model="m"))
        with ThreadedExporter(str(cfg_path), results_path=str(results)) as running:
            assert replaying.wait(10)
            assert requests.get(running.base + "/metrics", timeout=5).status_code == 200
            assert requests.get(running.base + "/-/ready", timeout=5).status_code == 503
            assert not running.exporter.scheduler.running and not fake.requests
            # A reload meanwhile is queued, not waited for (the rebuild holds the lock for minutes).
            cfg_path.write_text(scenario_yaml(fake.url, model="m", cases={"other": "hello"}))
            r = requests.post(running.base + "/-/reload", timeout=5)
            assert r.status_code == 200 and "right after" in r.text
            release.set()
            wait_for(lambda: requests.get(running.base + "/-/ready", timeout=5).status_code == 200, timeout=20,
                     what="ready after the rebuild")
            assert running.exporter.rebuilt.is_set()
            assert [c.name for c in running.exporter.config.scenarios[0].cases] == ["other"]


def test_an_exporter_whose_rebuild_fails_still_probes(tmp_path, monkeypatch, caplog):
    import requests

    from exporter.live_stats import LiveStats
    from tests.kit.exporters import ThreadedExporter, wait_for
    from tests.kit.fake_ollama import FakeOllama

    def broken(self, path, *args, **kwargs):
        raise RuntimeError("a bug in the replay")

    monkeypatch.setattr(LiveStats, "rebuild", broken)
    with FakeOllama() as fake:
        cfg_path = tmp_path / "s.yaml"
        cfg_path.write_text(scenario_yaml(fake.url, model="m"))
        with ThreadedExporter(str(cfg_path), results_path=str(tmp_path / "results.jsonl")) as running:
            wait_for(lambda: requests.get(running.base + "/-/ready", timeout=5).status_code == 200, timeout=20,
                     what="ready although the rebuild failed")
            wait_for(lambda: fake.requests, timeout=20, what="a probe")
    assert "cannot rebuild live statistics" in caplog.text


def test_rebuild_keeps_the_weeks_of_the_weekly_profile(tmp_path):
    # 22 days of runs every 15 minutes, weekends 20 % faster: blocks older than the 7-day history
    # live on as hourly medians, and the rebuild reads far enough back to find them again.
    def weekend(t):
        return 0.8 if (int(t // 86400) + 3) % 7 >= 5 else 1.0  # 1970-01-01 was a Thursday

    registry, rebuilt, stats = _run_both(tmp_path, runs=22 * 96, interval=900, pattern=weekend)
    assert stats.runs == 2 * 22 * 96
    seasonal = {dict(labels)["quantity"]: v for name, labels, v in samples(registry)
                if name == "llm_probe_regression_seasonal" and dict(labels)["case"] == "short"}
    # The time to first token follows the weekends; tokens/s (from the decode time) does not.
    assert seasonal["time_to_first_token_seconds"] == 2 and seasonal["output_tokens_per_second"] == 0
    assert samples(rebuilt) == samples(registry)


def test_rebuild_skips_what_is_older_than_the_history_it_needs(tmp_path):
    # 40 days of hourly runs in one file: the rebuild reads the last 29 (an hourly schedule's 672
    # blocks of history, and the reference's day), not all.
    registry, rebuilt, stats = _run_both(tmp_path, runs=40 * 24, interval=3600)
    size = (tmp_path / "results.jsonl").stat().st_size
    assert stats.bytes_read < 0.8 * size
    # The same series and recent windows. (The regression state replayed from 29 days can differ
    # from one that saw 40: an episode the young history started; docs/regression.md, Restart.)
    recent = [x for x in samples(registry) if x[0].startswith("llm_probe_recent")]
    assert recent and recent == [x for x in samples(rebuilt) if x[0].startswith("llm_probe_recent")]
    assert {x[1] for x in samples(rebuilt)} >= {x[1] for x in recent}
