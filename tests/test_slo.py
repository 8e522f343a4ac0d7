"""SLO config, judging each request at probe time, the series declared at config load, and the
`--config.check` warnings for objectives the request rate cannot judge (exporter/slo_check.py)."""

import os
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import yaml
from prometheus_client import CollectorRegistry

from exporter.cli import main
from exporter.config import ConfigError, load_text
from exporter.metrics import slo_good
from exporter.results import ProbeResult, RunSummary
from exporter.schedule import longest_gap_s
from exporter.slo_check import TIERS, slo_warnings
from tests.kit.exporters import ROOT, ProbeStack


def _config(slo_scenario="", slo_case="", schedule="{interval: 30s}", extra_case=""):
    return load_text(f"""
targets: [{{name: t, url: "http://127.0.0.1:1"}}]
scenarios:
  - name: s
    model: m
    schedule: {schedule}
    concurrency: [1, 2]
    {"slo: " + slo_scenario if slo_scenario else ""}
    sweep: {{temperature: [0, 0.5]}}
    cases:
      a: {{prompt: hi {", slo: " + slo_case if slo_case else ""}}}
      b: {{prompt: hi}}
      {extra_case}
""")


def _slos(config):
    return {c.name: c.slo for c in config.scenarios[0].cases}


def test_slo_on_the_scenario_applies_to_every_case_and_a_case_overrides_it():
    cfg = _config("{ttft: 1s, objective: 99%}",
                  "{request_duration: 20s, time_per_output_token: 100ms, objective: 0.999}")
    slos = _slos(cfg)
    for sweep in ("temperature=0", "temperature=0.5"):
        assert (slos[f"b@{sweep}"].ttft, slos[f"b@{sweep}"].objective) == (1.0, 0.99)
        a = slos[f"a@{sweep}"]
        assert (a.ttft, a.request_duration, a.time_per_output_token, a.objective) == (None, 20.0, 0.1, 0.999)


def test_no_slo_means_none():
    assert set(_slos(_config()).values()) == {None}


@pytest.mark.parametrize("objective, expected", [("99%", 0.99), ("99.9%", 0.999), (0.95, 0.95), ("50 %", 0.5)])
def test_objective_forms(objective, expected):
    assert _slos(_config(f"{{ttft: 2s, objective: '{objective}'}}" if isinstance(objective, str)
                         else f"{{ttft: 2s, objective: {objective}}}"))["a@temperature=0"].objective == expected


@pytest.mark.parametrize("slo, problem", [
    ("{objective: 99%}", "slo: give at least one of ttft, time_per_output_token, request_duration"),
    ("{ttft: 1s}", "slo.objective: required key missing"),
    ("{ttft: 1s, objective: 100%}", "slo.objective: must be between 0 and 1"),
    ("{ttft: 1s, objective: 99}", "slo.objective: must be between 0 and 1"),
    ("{ttft: 1s, objective: 0}", "slo.objective: must be between 0 and 1"),
    ("{ttft: 1s, objective: lots}", "slo.objective: expected a percentage"),
    ("{ttft: soon, objective: 0.9}", "slo.ttft: expected a duration"),
    ("{ttft: 0s, objective: 0.9}", "slo.ttft: duration must be positive"),
    ("{ttft: 1s, objective: 0.9, latency: 2s}", "slo.latency: unknown key"),
])
def test_bad_slos_are_refused_with_their_path(slo, problem):
    with pytest.raises(ConfigError) as exc:
        _config(slo_case=slo)
    assert any(p.startswith("scenarios[0].cases.a.") and problem in p for p in exc.value.problems), exc.value.problems


def _record(**kw):
    base = dict(target="t", scenario="s", model="m", case="a@temperature=0", concurrency=1, ok=True,
                ttft_s=0.5, request_duration_s=2.5, eval_count=21)
    base.update(kw)
    return ProbeResult(**base)


def test_judging_a_request():
    slo = _slos(_config(slo_case="{ttft: 1s, time_per_output_token: 100ms, request_duration: 3s, objective: 99%}"))[
        "a@temperature=0"]
    assert slo_good(_record(), slo)  # tpot (2.5 - 0.5) / 20 = 0.1: at the threshold is good
    assert not slo_good(_record(ok=False, reason="timeout"), slo)
    assert not slo_good(_record(ttft_s=1.01), slo)
    assert not slo_good(_record(request_duration_s=3.2, ttft_s=0.2), slo)  # also tpot 0.15
    assert not slo_good(_record(eval_count=11), slo)  # tpot 0.2
    assert not slo_good(_record(ttft_s=None), slo)  # a threshold it cannot show it met
    assert slo_good(_record(eval_count=1, request_duration_s=0.6), slo)  # one token: no pace to judge
    only_ttft = _slos(_config(slo_case="{ttft: 1s, objective: 99%}"))["a@temperature=0"]
    assert slo_good(_record(request_duration_s=500, eval_count=2), only_ttft)


def _value(reg, name, **labels):
    return reg.get_sample_value(name, labels)


def test_slo_counters_are_declared_at_load_and_count_good_and_bad():
    cfg = _config(slo_case="{ttft: 1s, objective: 99.5%}")
    reg = CollectorRegistry()
    stack = ProbeStack(reg, cfg)
    m = stack.metrics
    labels = dict(target="t", scenario="s", model="m", case="a@temperature=0", concurrency="2")
    assert _value(reg, "llm_probe_slo_requests_total", **labels) == 0
    assert _value(reg, "llm_probe_slo_good_requests_total", **labels) == 0
    objective = dict(target="t", scenario="s", model="m", case="a@temperature=0")
    assert _value(reg, "llm_probe_slo_objective_ratio", **objective) == 0.995
    # Cases without an SLO get no SLO series.
    assert _value(reg, "llm_probe_slo_requests_total", **{**labels, "case": "b@temperature=0"}) is None
    for r in (_record(concurrency=2), _record(concurrency=2, ttft_s=3.0),
              _record(concurrency=2, ok=False, reason="timeout"),
              _record(concurrency=2, case="b@temperature=0", ttft_s=9.0)):
        m.on_result(r)
    assert _value(reg, "llm_probe_slo_requests_total", **labels) == 3
    assert _value(reg, "llm_probe_slo_good_requests_total", **labels) == 1
    # Removing the SLO from the config removes its series, so its alerts resolve.
    stack.load(_config())
    assert _value(reg, "llm_probe_slo_requests_total", **labels) is None
    assert _value(reg, "llm_probe_slo_objective_ratio", **objective) is None
    m.on_result(_record(concurrency=2))
    assert _value(reg, "llm_probe_slo_requests_total", **labels) is None


def test_histograms_are_declared_cold_and_warm_so_the_first_cold_start_is_an_increase():
    reg = CollectorRegistry()
    ProbeStack(reg, _config())
    labels = dict(target="t", scenario="s", model="m", case="b@temperature=0.5", concurrency="1")
    for start in ("cold", "warm"):
        assert _value(reg, "llm_probe_time_to_first_token_seconds_count", **labels, start=start) == 0
        assert _value(reg, "llm_probe_request_duration_seconds_count", **labels, start=start) == 0
    for name in ("llm_probe_load_duration_seconds", "llm_probe_output_tokens_per_second",
                 "llm_probe_prompt_tokens_per_second", "llm_probe_time_per_output_token_seconds",
                 "llm_probe_inter_token_latency_seconds", "llm_probe_queue_duration_seconds",
                 "llm_probe_prompt_eval_duration_seconds", "llm_probe_eval_duration_seconds"):
        assert _value(reg, name + "_count", **labels) == 0, name


def test_buckets_fit_a_cpu_host_and_a_fast_gpu():
    reg = CollectorRegistry()
    stack = ProbeStack(reg, _config())
    m = stack.metrics
    m.on_result(_record(case="b@temperature=0", prompt_eval_count=30000, prompt_eval_duration_s=1.0, ttft_s=0.003,
                        request_duration_s=0.03))
    labels = dict(target="t", scenario="s", model="m", case="b@temperature=0", concurrency="1")
    # 30,000 tok/s prefill lands in a finite bucket, not +Inf; a 3 ms TTFT is told from 10 ms.
    assert _value(reg, "llm_probe_prompt_tokens_per_second_bucket", **labels, le="20000.0") == 0
    assert _value(reg, "llm_probe_prompt_tokens_per_second_bucket", **labels, le="50000.0") == 1
    assert _value(reg, "llm_probe_time_to_first_token_seconds_bucket", **labels, start="warm", le="0.005") == 1
    assert _value(reg, "llm_probe_time_to_first_token_seconds_bucket", **labels, start="warm", le="600.0") == 1
    assert _value(reg, "llm_probe_request_duration_seconds_bucket", **labels, start="warm", le="600.0") == 1
    from exporter.metrics import DURATION_BUCKETS, PER_REQUEST_HISTOGRAMS, TTFT_BUCKETS
    for buckets in [TTFT_BUCKETS, DURATION_BUCKETS] + [b for _, _, b, _ in PER_REQUEST_HISTOGRAMS]:
        assert len(buckets) <= 20  # each bucket is a series per label set


@pytest.mark.parametrize("schedule, gap", [
    ("{interval: 90s}", 90), ("{cron: '*/15 * * * *'}", 900), ("{cron: '0 * * * *'}", 3600),
    ("{cron: '0 9 * * 1-5'}", 3 * 86400),  # Friday 09:00 to Monday 09:00
])
def test_schedule_interval_is_the_longest_gap_between_runs(schedule, gap):
    cfg = _config(schedule=schedule)
    assert longest_gap_s(cfg.scenarios[0], now=datetime(2026, 11, 25, 12, tzinfo=timezone.utc)) == gap
    reg = CollectorRegistry()
    stack = ProbeStack(reg, cfg)
    m = stack.metrics
    assert _value(reg, "llm_probe_schedule_interval_seconds", target="t", scenario="s") == gap
    assert _value(reg, "llm_probe_schedule_start_timestamp_seconds", target="t", scenario="s") > 1.7e9
    # The last-run gauge appears only when a run has ended; the alert falls back to the schedule start.
    assert _value(reg, "llm_probe_last_run_timestamp_seconds", target="t", scenario="s") is None
    m.on_run(RunSummary("t", "s", "r1", 1.8e9, 1.8e9 + 5, 4, 0))
    assert _value(reg, "llm_probe_last_run_timestamp_seconds", target="t", scenario="s") == 1.8e9 + 5


def test_metrics_does_not_import_the_scheduler():
    # metrics needs only the schedule gap; the job machinery (APScheduler, the runner) stays out.
    code = ("import sys, exporter.metrics; "
            "print(sorted(m for m in sys.modules if m == 'exporter.scheduler' or m.startswith('apscheduler')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- --config.check: judgeable objectives

NOW = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)


def _one_scenario(objective, schedule="{interval: 60s}", repeats=1, concurrency="[1]", warmup=0,
                  cases="{a: {prompt: hi}}"):
    return load_text(f"""
scenarios:
  - name: s
    model: m
    schedule: {schedule}
    repeats: {repeats}
    warmup: {warmup}
    concurrency: {concurrency}
    slo: {{ttft: 1s, objective: '{objective}'}}
    cases: {cases}
""")


def _alerts_warned(warnings):
    return [re.search(r"judged by (\w+)", w).group(1) for w in warnings]


def test_the_tiers_are_those_of_the_rule_file():
    def seconds(window):
        return int(window[:-1]) * {"m": 60, "h": 3600, "d": 86400}[window[-1]]

    with open(os.path.join(ROOT, "prometheus", "rules", "slo.yml"), encoding="utf-8") as f:
        rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
    found = set()
    for r in rules:
        (long_w,) = set(re.findall(r"error_ratio_rate(\d+[mhd])\s", r["expr"]))
        (short_w,) = set(re.findall(r"error_ratio_rate(\d+[mhd])\[", r["expr"]))
        (burn,) = set(re.findall(r">\s*([\d.]+)\s", r["expr"]))
        found.add((r["alert"], float(burn), seconds(long_w), seconds(short_w), r["labels"]["severity"] == "critical"))
    assert found == {(t.alert, t.burn, t.long_s, t.short_s, t.page) for t in TIERS}


def test_one_request_a_minute_at_99_9_percent_pages_on_a_single_bad_request():
    (warning,) = slo_warnings(_one_scenario("99.9%"), now=NOW)
    assert warning.startswith(
        "scenario s, case a: objective 99.9% cannot be judged by LLMSLOErrorBudgetBurnFast (page:")
    assert "holds as few as 60 requests of a case (60 runs of 1, runs up to 1m apart)" in warning
    assert "a burn of 16.7 > 14.4, and pages on its own" in warning
    # 1 - 1/(60 x 14.4) = 99.884%; 70 requests an hour is a run every 51.4 s.
    assert ("with an objective of at most 99.88%, or with at least 70 requests of a case per 1h (a run every 51s"
            in warning)


@pytest.mark.parametrize("objective", ["99%", "99.88%"])
def test_objectives_that_need_more_than_one_bad_request_are_not_warned_of(objective):
    assert slo_warnings(_one_scenario(objective), now=NOW) == []


def test_every_judged_request_counts_and_warm_ups_do_not():
    # 99.99% needs 1/(14.4 x 0.0001) = 695 requests an hour for the fastest tier, and
    # 1/(1 x 0.0001) = 10000 in 3 days for the slowest: one a minute (4320) is short everywhere.
    assert _alerts_warned(slo_warnings(_one_scenario("99.99%", warmup=5), now=NOW)) == [t.alert for t in TIERS]
    # 2 repeats at concurrency 1, 2 and 4: 14 requests of a case a run, 840 an hour, 60480 in 3 days.
    assert slo_warnings(_one_scenario("99.99%", repeats=2, concurrency="[1, 2, 4]"), now=NOW) == []
    # The fastest tier needs 695 an hour. A run every 5 minutes of 3 repeats at concurrency 3 and 16
    # (57 a run, 684 an hour) is just short; 2 repeats at 13 and 16 (58 a run, 696 an hour) are enough.
    (warning,) = slo_warnings(_one_scenario("99.99%", schedule="{interval: 5m}", repeats=3, concurrency="[3, 16]"),
                              now=NOW)
    assert "judged by LLMSLOErrorBudgetBurnFast" in warning
    assert "as few as 684 requests of a case (12 runs of 57" in warning
    assert slo_warnings(_one_scenario("99.99%", schedule="{interval: 5m}", repeats=2, concurrency="[13, 16]"),
                        now=NOW) == []


def test_a_daily_run_cannot_be_judged_by_any_tier_at_99_percent():
    warnings = slo_warnings(_one_scenario("99%", schedule="{cron: '0 3 * * *'}", repeats=3), now=NOW)
    assert _alerts_warned(warnings) == [t.alert for t in TIERS]
    fast, slow, daily, steady = warnings
    assert "(1 run of 3, runs up to 1d apart)" in fast and "and pages on its own" in fast
    assert "and pages on its own" in slow
    assert "(1 run of 3, runs up to 1d apart)" in daily and "opens a ticket on its own" in daily
    assert "(3 runs of 3, runs up to 1d apart)" in steady and "opens a ticket on its own" in steady
    # 1/(14.4 x 0.01) = 6.9 requests an hour: 3 runs of 3, a run every 20 minutes.
    assert "at least 7 requests of a case per 1h (a run every 20m at 3 per run" in fast
    assert "an objective of at most 97.68%" in fast


def test_a_run_a_week_is_judged_by_no_objective_in_the_slowest_tier():
    # One request in 3 days: one bad request of one is a burn of 1 / (1 - objective), over the
    # 3-day tier's 1 at every objective. Only more requests help.
    warnings = slo_warnings(_one_scenario("50%", schedule="{cron: '0 3 * * 1'}"), now=NOW)
    assert _alerts_warned(warnings) == ["LLMSLOErrorBudgetBurnSteady"]
    assert "Judgeable with no objective at this rate, or with at least 2 requests of a case per 3d" in warnings[0]


def test_cases_sharing_an_objective_are_warned_of_once_and_named():
    cfg = _one_scenario(
        "99.9%", cases="{a: {prompt: hi}, b: {prompt: hi}, c: {prompt: hi, slo: {ttft: 1s, objective: 99%}}}")
    (warning,) = slo_warnings(cfg, now=NOW)
    assert warning.startswith("scenario s, cases a, b: objective 99.9%")
    (every,) = slo_warnings(_one_scenario("99.9%", cases="{a: {prompt: hi}, b: {prompt: hi}}"), now=NOW)
    assert every.startswith("scenario s, every case: objective 99.9%")
    assert slo_warnings(_config(), now=NOW) == []  # no slo, nothing to judge


def test_config_check_prints_the_warnings_to_stderr_and_still_succeeds(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("scenarios: [{name: s, model: m, slo: {ttft: 1s, objective: 99.9%}, cases: {a: {prompt: hi}}}]\n")
    assert main(["--config.file", str(path), "--config.check"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: OK: 1 scenario(s)")
    (line,) = err.splitlines()
    assert line.startswith("warning: scenario s, case a: objective 99.9% cannot be judged by LLMSLOErrorBudgetBurnFast")
    path.write_text("scenarios: [{name: s, model: m, slo: {ttft: 1s, objective: 99%}, cases: {a: {prompt: hi}}}]\n")
    assert main(["--config.file", str(path), "--config.check"]) == 0
    assert capsys.readouterr().err == ""
