"""Exact live statistics per case: a recent window, a baseline and its run-to-run noise.

A prober sends a few requests a minute, so quantiles interpolated inside histogram
buckets are artefacts of the bucket edges. This sink keeps the measured values
themselves and publishes exact statistics of them; prometheus/rules/regression.yml
compares the recent window with the baseline.

Per series (target, scenario, model, case, concurrency, start, quantity):

- every finished run contributes one number, the median of its successful requests;
- the recent window is the last max(recent_runs, recent_seconds) of runs, and its
  quantiles are exact quantiles of the raw request values it holds (numpy's default,
  linear interpolation between order statistics);
- exporter/regression.py judges the recent median against a reference level that holds
  through a regression, at a threshold measured on the series' own history (docs/regression.md);
  the gauges publish its verdict, and prometheus/rules/regression.yml compares them.

Time comes from the records (the newest ended_at of a run), never from the clock, so
the results file can rebuild the same state after a restart and a simulation can
drive it over simulated days.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, Optional

from prometheus_client.core import GaugeMetricFamily

from . import live_restart
from .keyspace import CASE
from .live_restart import REBUILD_MAX_BYTES, RebuildStats
from .live_window import Policy, Series, Snapshot, quantile
from .regression import Detector, Settings, block_seconds
from .results import (
    Acceptance,
    ProbeResult,
    RunSummary,
)
from .sinks import Sink
from .state import Part, StateStore
from .textformat import Family, Labels, fmt

log = logging.getLogger(__name__)

SERIES_LABELS = ("target", "scenario", "model", "case", "concurrency", "start", "quantity")
QUANTILES = (0.5, 0.9, 0.95, 0.99)

# quantity label -> how to read it from a record. Higher is worse unless listed in LOWER_IS_WORSE.
QUANTITIES: dict[str, Callable[[ProbeResult], Optional[float]]] = {
    "time_to_first_token_seconds": lambda r: r.ttft_s,
    "request_duration_seconds": lambda r: r.request_duration_s,
    "time_per_output_token_seconds": lambda r: r.time_per_output_token_s,
    "load_duration_seconds": lambda r: r.load_duration_s,
    "output_tokens_per_second": lambda r: r.output_tokens_per_s,
    "prompt_tokens_per_second": lambda r: r.prompt_tokens_per_s,
}
LOWER_IS_WORSE = frozenset({"output_tokens_per_second", "prompt_tokens_per_second"})

MAX_RUNS_IN_FLIGHT = 256
BG = " Computed by the exporter from the measured requests of scheduled probe runs."


RECENT_QUANTILE = Family(
    "llm_probe_recent_quantile", "summary",
    "Exact quantiles of the successful requests in the recent window (last max(3 runs, 15 min)), "
    "in the unit of `quantity`; _count and _sum over the same requests." + BG)
# Summary-style: exact quantiles labelled `quantile` (the exposition format allows that label on
# summaries only), with the window's request count and sum as _count and _sum.
RECENT_REQUESTS = Family("llm_probe_recent_requests", "gauge", "Successful requests in the recent window." + BG)
RECENT_RUNS = Family("llm_probe_recent_runs", "gauge", "Runs in the recent window." + BG)
BASELINE_MEDIAN = Family(
    "llm_probe_baseline_median", "gauge",
    "Reference level of the recent median: the median over the day before the recent window, "
    "without the time-of-day profile; it does not follow a regression until it is accepted." + BG)
EXPECTED = Family(
    "llm_probe_regression_expected", "gauge",
    "What the recent median is compared with: the reference level at this time of day (with the "
    "daily profile where the case has one), in the unit of `quantity`." + BG)
BASELINE_NOISE = Family(
    "llm_probe_baseline_noise", "gauge",
    "How much the recent median varies around its reference when nothing changed, measured on the "
    "case's history (robust standard deviation), in the unit of `quantity`." + BG)
BASELINE_RUNS = Family("llm_probe_baseline_runs", "gauge", "Runs in the history the noise is measured on." + BG)
THRESHOLD_RATIO = Family(
    "llm_probe_regression_threshold_ratio", "gauge",
    "Relative change of the recent median against llm_probe_regression_expected that counts as a "
    "regression now; lower while a regression episode is going on, so that it keeps firing." + BG)
IMPROVEMENT = Family(
    "llm_probe_regression_improvement_ratio", "gauge",
    "Relative improvement of the recent median beyond the noise (0 when there is none); never pages." + BG)
EPISODE_START = Family(
    "llm_probe_regression_since_timestamp_seconds", "gauge",
    "Start of the regression episode going on (the recent window that first crossed); absent when none. "
    "It ends when the level is back, or accepted (`ollama-perf-exporter accept`, POST /-/accept, or after "
    "accept_after)." + BG)
SEASONAL = Family(
    "llm_probe_regression_seasonal", "gauge",
    "What the case is compared with beyond its reference: 1 the same time of day (its history shows a daily "
    "cycle), 2 the same time of week (a weekly pattern), 3 both, 0 neither." + BG)
HISTORY = Family(
    "llm_probe_regression_history_seconds", "gauge",
    "Span of the history the threshold and the daily profile are measured on; shorter than the "
    "baseline setting while the case is new." + BG)
LIVE_FAMILIES = (RECENT_QUANTILE, RECENT_REQUESTS, RECENT_RUNS, BASELINE_MEDIAN, EXPECTED, BASELINE_NOISE,
                 BASELINE_RUNS, THRESHOLD_RATIO, IMPROVEMENT, EPISODE_START, SEASONAL, HISTORY)
SETTING_NAMES = ("recent", "baseline", "accept_after", "seasonality")
SEASONALITY_CODE = {"off": 0, "auto": 1, "daily": 2, "weekly": 3}


class LiveCase:
    """The live windows of one case key: per (start, quantity) a Series, its regression Detector,
    and what each last published."""

    __slots__ = ("series", "detectors", "published")

    def __init__(self):
        self.series: dict[tuple[str, str], Series] = {}
        self.detectors: dict[tuple[str, str], Detector] = {}
        self.published: dict[tuple[str, str], Snapshot] = {}

    def render(self, key: tuple) -> dict[str, str]:
        out: dict[str, list[str]] = {f.name: [] for f in LIVE_FAMILIES}
        case_labels = Labels(SERIES_LABELS[:5], key)
        for (start, quantity), s in self.published.items():
            labels = case_labels.plus(SERIES_LABELS[5:], (start, quantity))
            text = labels.text
            head, tail = labels.around("quantile")
            q = out[RECENT_QUANTILE.name]
            q.extend(f"{RECENT_QUANTILE.name}{head}{_qlabel(p)}{tail} {fmt(v)}\n" for p, v in s.quantiles.items())
            q.append(f"{RECENT_QUANTILE.name}_count{text} {fmt(s.recent_requests)}\n")
            q.append(f"{RECENT_QUANTILE.name}_sum{text} {fmt(s.recent_sum)}\n")
            v = s.regression
            values = [(RECENT_REQUESTS, s.recent_requests), (RECENT_RUNS, s.recent_runs), (BASELINE_RUNS, v.runs),
                      (HISTORY, v.history_s)]
            # Too little history to judge against: no threshold is better than a wrong one.
            if v.threshold is not None:
                values += [(BASELINE_MEDIAN, v.reference), (EXPECTED, v.expected),
                           (BASELINE_NOISE, v.noise * v.reference), (THRESHOLD_RATIO, v.threshold),
                           (IMPROVEMENT, v.improvement), (SEASONAL, (1 if v.seasonal else 0) + (2 if v.weekly else 0))]
            if v.since is not None:
                values.append((EPISODE_START, v.since))
            for family, value in values:
                out[family.name].append(f"{family.name}{text} {fmt(value)}\n")
        return {name: "".join(lines) for name, lines in out.items()}


class RegressionSettings:
    """llm_probe_regression_setting_seconds{scenario, setting}: the settings in force, read from the
    running config at scrape time (no state of its own, so a removed scenario leaves with its config)."""

    def __init__(self, live: "LiveStats"):
        self.live = live

    def describe(self):
        return []

    def collect(self):
        family = GaugeMetricFamily(
            "llm_probe_regression_setting_seconds",
            "Regression settings in force per scenario (recent, baseline, accept_after), in seconds; "
            "seasonality: 0 off, 1 auto, 2 daily, 3 weekly.", labels=["scenario", "setting"])
        for name, st in sorted(self.live.scenario_settings().items()):
            for setting, value in zip(SETTING_NAMES, (st.recent_s, st.baseline_s, st.accept_after_s,
                                                      SEASONALITY_CODE[st.seasonality])):
                family.add_metric([name, setting], value)
        yield family


class LiveStats(Sink):
    """The live-statistics sink: collects a run's requests, and at the end of the run turns
    them into the gauges of the metric contract (README: Live statistics and regression
    alerts), in the case slots of the state store."""

    PART = "live"

    def __init__(self, store: StateStore, policy: Policy = Policy(), settings: Settings = Settings()):
        self.policy = policy
        self.settings = settings  # for scenarios that configure() has not given their own
        self._by_scenario: dict[str, Settings] = {}
        self._memory_s: dict[str, float] = {}  # per scenario: how far back its detectors remember
        self.settings_collector = RegressionSettings(self)
        self.store = store
        store.add_part(Part(CASE, self.PART, LIVE_FAMILIES, lambda key, ctx: LiveCase(),
                            lambda key, state, ctx: state.render(key)))
        # run_id -> [newest ended_at, {series key: [values]}]; runs in flight, oldest first.
        self._pending: OrderedDict[str, list] = OrderedDict()
        # Runs already closed: a straggler that ends after its run's summary is not a new run.
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    # ---- settings ----
    def configure(self, config) -> None:
        """Take each scenario's `regression:` settings; series already kept follow them."""
        with self._lock:
            self._by_scenario = {sc.name: to_settings(getattr(sc, "regression", None), self.settings)
                                 for sc in config.scenarios}
            # The history holds baseline_blocks blocks of the schedule's runs; a cron schedule's
            # interval is not known here, so it is taken as hourly (the longest history a common
            # schedule keeps).
            self._memory_s = {}
            for sc in config.scenarios:
                st = self._by_scenario[sc.name]
                interval = getattr(sc, "interval", None) or 3600.0
                self._memory_s[sc.name] = st.memory_s(block_seconds(interval, st.recent_s, st.recent_runs))

        def follow(state: LiveCase, ctx, key) -> Optional[bool]:
            st = self._settings(key[1])
            changed = False
            for sub, det in state.detectors.items():
                if det.s != st:
                    det.s = st
                    state.series[sub].policy = self._policy(st)
                    changed = True
            return None if changed else False

        for key in self.store.keys(CASE):
            self.store.update(CASE, key, self.PART, lambda state, ctx, key=key: follow(state, ctx, key))

    def scenario_settings(self) -> dict[str, Settings]:
        with self._lock:
            return dict(self._by_scenario)

    def _settings(self, scenario: str) -> Settings:
        return self._by_scenario.get(scenario, self.settings)

    def _policy(self, st: Settings) -> Policy:
        p = self.policy
        if p.recent_seconds == st.recent_s:
            return p
        return Policy(p.recent_runs, st.recent_s, p.recent_max_runs, p.recent_max_values)

    # ---- sink interface ----
    def on_result(self, r: ProbeResult) -> None:
        if not r.ok or not r.run_id:
            return
        with self._lock:
            if r.run_id in self._closed:
                return
            self._collect(r, self._pending)
            # A run whose summary never comes (a crash between runs) must not pile up.
            while len(self._pending) > MAX_RUNS_IN_FLIGHT:
                self._pending.popitem(last=False)

    def on_run(self, run: RunSummary) -> None:
        with self._lock:
            self._closed[run.run_id] = None
            while len(self._closed) > MAX_RUNS_IN_FLIGHT:
                self._closed.popitem(last=False)
            pending = self._pending.pop(run.run_id, None)
        self._finish(pending, run.ended_at, publish=True)

    # ---- state ----
    @staticmethod
    def _collect(r: ProbeResult, runs: dict) -> None:
        pending = runs.get(r.run_id)
        if pending is None:
            pending = runs[r.run_id] = [r.ended_at, {}]
        pending[0] = max(pending[0], r.ended_at)
        base = (r.target, r.scenario, r.model, r.case, str(r.concurrency), r.start)
        values = pending[1]
        for quantity, read in QUANTITIES.items():
            v = read(r)
            if v is not None and math.isfinite(v) and v >= 0:
                values.setdefault(base + (quantity,), []).append(v)

    def _finish(self, pending: Optional[list], fallback_end: float, publish: bool) -> set[tuple]:
        """Close a run: one median per series, at the time of the run's newest record, and the
        regression verdict after it (every run, published or not: a rebuild replays them all).
        Returns the case keys it reached (those still in the key space)."""
        if pending is None:
            return set()
        t = pending[0] or fallback_end
        by_case: dict[tuple, list] = {}
        for key, values in pending[1].items():
            by_case.setdefault(key[:5], []).append((key[5:], values))

        touched = set()
        for case_key, runs in by_case.items():
            def add(state: LiveCase, ctx, runs=runs, case_key=case_key) -> Optional[bool]:
                for sub, values in runs:
                    series = state.series.get(sub)
                    if series is None:
                        st = self._settings(case_key[1])
                        series = state.series[sub] = Series(self._policy(st))
                        state.detectors[sub] = Detector(st, sub[1] not in LOWER_IS_WORSE)
                    series.add_run(t, values)
                    det = state.detectors[sub]
                    det.add_run(t, series.medians[-1])
                    recent = series.recent_count(t)
                    window = series.recent_values(recent)
                    det.judge(t, quantile(window, 0.5), series.times[-recent])
                    if publish:
                        state.published[sub] = self._snapshot(det, window, recent)
                return None if publish else False

            if self.store.update(CASE, case_key, self.PART, add):
                touched.add(case_key)
        return touched

    @staticmethod
    def _snapshot(det: Detector, window: list, recent: int) -> Snapshot:
        return Snapshot(
            quantiles={q: quantile(window, q) for q in QUANTILES},
            recent_requests=len(window),
            recent_sum=math.fsum(window),
            recent_runs=recent,
            regression=replace(det.verdict),
        )

    @classmethod
    def _republish(cls, state: LiveCase, sub: tuple) -> None:
        series = state.series[sub]
        recent = series.recent_count(series.times[-1])
        state.published[sub] = cls._snapshot(state.detectors[sub], series.recent_values(recent), recent)

    def snapshot(self, key: tuple) -> Optional[Snapshot]:
        def read(state: LiveCase, ctx) -> Optional[Snapshot]:
            sub = tuple(key[5:])
            series = state.series.get(sub)
            if series is None or not len(series.times):
                return None
            recent = series.recent_count(series.times[-1])
            return self._snapshot(state.detectors[sub], series.recent_values(recent), recent)

        return self.store.read(CASE, tuple(key[:5]), self.PART, read)

    # ---- accepting a new level ----
    def accept(self, a: Acceptance, publish: bool = True) -> int:
        """Take the recent level of every series in scope as its new reference (ends its episode).
        Returns how many series it applied to."""
        count = 0
        for case_key in self.store.keys(CASE):
            if not all(want is None or str(want) == got
                       for want, got in zip((a.target, a.scenario, a.model, a.case, a.concurrency), case_key)):
                continue

            def apply(state: LiveCase, ctx, case_key=case_key) -> Optional[bool]:
                nonlocal count
                n = 0
                for sub, det in state.detectors.items():
                    if a.matches(case_key + sub) and det.accept():
                        n += 1
                        series = state.series[sub]
                        recent = series.recent_count(series.times[-1])
                        window = series.recent_values(recent)
                        det.judge(series.times[-1], quantile(window, 0.5), series.times[-recent])
                        if publish:
                            state.published[sub] = self._snapshot(det, window, recent)
                count += n
                return None if (n and publish) else False

            self.store.update(CASE, case_key, self.PART, apply)
        return count

    # ---- restart ----
    def span(self) -> float:
        """How far back a rebuild must read: the longest memory (the history: baseline, or
        baseline_blocks blocks on a slow schedule; the weekly profile's 4 weeks) plus the
        reference's day."""
        with self._lock:
            settings = [self.settings, *self._by_scenario.values()]
            # Not configured (no schedules known): as long as an hourly schedule's memory.
            memory = list(self._memory_s.values()) or [self.settings.memory_s(3600.0)]
        return max(memory) + max(st.reference_s for st in settings)

    def rebuild(self, path: str | os.PathLike, max_bytes: int = REBUILD_MAX_BYTES) -> RebuildStats:
        """The state rebuilt from the results file (live_restart.py); configure() and the key space first."""
        return live_restart.rebuild(self, path, max_bytes)


def _qlabel(q: float) -> str:
    return QUANTILE_TEXT.get(q) or repr(q)


QUANTILE_TEXT = {q: repr(q) for q in QUANTILES}


def to_settings(model, default: Settings) -> Settings:
    """config.Regression (or None) -> regression.Settings."""
    if model is None:
        return default
    return replace(default, recent_s=float(model.recent), baseline_s=float(model.baseline),
                   seasonality=str(model.seasonality), accept_after_s=float(model.accept_after))
