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
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric

from .live_window import Policy, quantile, Series, Snapshot
from .regression import Detector, Settings
from .results import (Acceptance, ProbeResult, RunSummary, iter_lines, parse_acceptance_line, parse_results_line,
                      results_file_parts)
from .sinks import Sink

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
# The rebuild streams the file, so this bounds the time it takes, not memory: 4 weeks of
# scenarios/default.yaml on 10 targets are about 1.6 GB.
REBUILD_MAX_BYTES = 4 << 30


class RecentQuantiles:
    """llm_probe_recent_quantile, exposed as a summary: exact quantiles labelled `quantile`
    (the exposition format allows that label on summaries only), with the window's request
    count and sum as _count and _sum."""

    NAME = "llm_probe_recent_quantile"

    def __init__(self, doc: str, registry: CollectorRegistry):
        self.doc = doc
        self._values: dict[tuple, tuple[dict, int, float]] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def set(self, key: tuple, quantiles: dict, count: int, total: float) -> None:
        with self._lock:
            self._values[key] = (dict(quantiles), count, total)

    def remove(self, key: tuple) -> None:
        with self._lock:
            self._values.pop(key, None)

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._values)

    def describe(self):
        return [Metric(self.NAME, self.doc, "summary")]

    def collect(self):
        family = Metric(self.NAME, self.doc, "summary")
        with self._lock:
            items = list(self._values.items())
        for key, (quantiles, count, total) in items:
            labels = dict(zip(SERIES_LABELS, key))
            for q, v in quantiles.items():
                family.add_sample(self.NAME, {**labels, "quantile": _qlabel(q)}, v)
            family.add_sample(self.NAME + "_count", labels, count)
            family.add_sample(self.NAME + "_sum", labels, total)
        yield family


class LiveStats(Sink):
    """The live-statistics sink: collects a run's requests, and at the end of the run
    turns them into the gauges of the metric contract (README: Live statistics and
    regression alerts)."""

    def __init__(self, registry: CollectorRegistry, policy: Policy = Policy(), settings: Settings = Settings()):
        self.policy = policy
        self.settings = settings  # for scenarios that configure() has not given their own
        self._by_scenario: dict[str, Settings] = {}
        bg = " Computed by the exporter from the measured requests of scheduled probe runs."

        def gauge(name, doc, extra=()):
            return Gauge(name, doc + bg, SERIES_LABELS + extra, registry=registry)

        self.recent_quantile = RecentQuantiles(
            "Exact quantiles of the successful requests in the recent window (last max(3 runs, 15 min)), "
            "in the unit of `quantity`; _count and _sum over the same requests." + bg, registry,
        )
        self.recent_requests = gauge("llm_probe_recent_requests", "Successful requests in the recent window.")
        self.recent_runs = gauge("llm_probe_recent_runs", "Runs in the recent window.")
        self.baseline_median = gauge(
            "llm_probe_baseline_median",
            "Reference level of the recent median: the median over the day before the recent window, "
            "without the time-of-day profile; it does not follow a regression until it is accepted.",
        )
        self.expected = gauge(
            "llm_probe_regression_expected",
            "What the recent median is compared with: the reference level at this time of day (with the "
            "daily profile where the case has one), in the unit of `quantity`.",
        )
        self.baseline_noise = gauge(
            "llm_probe_baseline_noise",
            "How much the recent median varies around its reference when nothing changed, measured on the "
            "case's history (robust standard deviation), in the unit of `quantity`.",
        )
        self.baseline_runs = gauge("llm_probe_baseline_runs", "Runs in the history the noise is measured on.")
        self.threshold_ratio = gauge(
            "llm_probe_regression_threshold_ratio",
            "Relative change of the recent median against llm_probe_regression_expected that counts as a "
            "regression now; lower while a regression episode is going on, so that it keeps firing.",
        )
        self.improvement = gauge(
            "llm_probe_regression_improvement_ratio",
            "Relative improvement of the recent median beyond the noise (0 when there is none); never pages.",
        )
        self.episode_start = gauge(
            "llm_probe_regression_since_timestamp_seconds",
            "Start of the regression episode going on (the recent window that first crossed); absent when none. "
            "It ends when the level is back, or accepted (`ollama-perf-exporter accept`, POST /-/accept, or after accept_after).",
        )
        self.seasonal = gauge(
            "llm_probe_regression_seasonal",
            "1 if the case is compared with the same time of day (its history shows a daily cycle), else 0.",
        )
        self.history = gauge(
            "llm_probe_regression_history_seconds",
            "Span of the history the threshold and the daily profile are measured on; shorter than the "
            "baseline setting while the case is new.",
        )
        self.setting = Gauge(
            "llm_probe_regression_setting_seconds",
            "Regression settings in force per scenario (recent, baseline, accept_after), in seconds; "
            "seasonality: 0 off, 1 auto, 2 daily." + bg, ("scenario", "setting"), registry=registry,
        )
        self._series: dict[tuple, Series] = {}
        self._detectors: dict[tuple, Detector] = {}
        # run_id -> [newest ended_at, {series key: [values]}]; runs in flight, oldest first.
        self._pending: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()

    def configure(self, config) -> None:
        """Take each scenario's `regression:` settings (and publish them)."""
        with self._lock:
            self._by_scenario = {sc.name: to_settings(getattr(sc, "regression", None), self.settings) for sc in config.scenarios}
            for key, det in self._detectors.items():
                st = self._settings(key[1])
                if det.s != st:
                    det.s = st
                    self._series[key].policy = self._policy(st)
            for labels in list(self.setting._metrics):
                if labels[0] not in self._by_scenario:
                    self.setting.remove(*labels)
            for name, st in self._by_scenario.items():
                for setting, value in (("recent", st.recent_s), ("baseline", st.baseline_s), ("accept_after", st.accept_after_s),
                                       ("seasonality", {"off": 0, "auto": 1, "daily": 2}[st.seasonality])):
                    self.setting.labels(name, setting).set(value)

    def _settings(self, scenario: str) -> Settings:
        return self._by_scenario.get(scenario, self.settings)

    def _policy(self, st: Settings) -> Policy:
        p = self.policy
        return p if p.recent_seconds == st.recent_s else Policy(p.recent_runs, st.recent_s, p.recent_max_runs, p.recent_max_values)

    # ---- sink interface ----
    def on_result(self, r: ProbeResult) -> None:
        if not r.ok or not r.run_id:
            return
        with self._lock:
            self._collect(r, self._pending)
            # A run whose summary never comes (a crash between runs) must not pile up.
            while len(self._pending) > MAX_RUNS_IN_FLIGHT:
                self._pending.popitem(last=False)

    def on_run(self, run: RunSummary) -> None:
        with self._lock:
            self._finish(self._pending.pop(run.run_id, None), run.ended_at, publish=True)

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

    def _finish(self, pending: Optional[list], fallback_end: float, publish: bool) -> list[tuple]:
        """Close a run: one median per series, at the time of the run's newest record, and the
        regression verdict after it (every run, published or not: a rebuild replays them all)."""
        if pending is None:
            return []
        t = pending[0] or fallback_end
        keys = []
        for key, values in pending[1].items():
            series = self._series.get(key)
            if series is None:
                st = self._settings(key[1])
                series = self._series[key] = Series(self._policy(st))
                self._detectors[key] = Detector(st, key[6] not in LOWER_IS_WORSE)
            series.add_run(t, values)
            det = self._detectors[key]
            det.add_run(t, series.medians[-1])
            recent = series.recent_count(t)
            values = series.recent_values(recent)
            det.judge(t, quantile(values, 0.5), series.times[-recent])
            keys.append(key)
            if publish:
                self._publish(key, self._snapshot(key, values, recent))
        return keys

    def snapshot(self, key: tuple) -> Optional[Snapshot]:
        series = self._series.get(key)
        if series is None or not len(series.times):
            return None
        recent = series.recent_count(series.times[-1])
        return self._snapshot(key, series.recent_values(recent), recent)

    def _snapshot(self, key: tuple, values: list, recent: int) -> Snapshot:
        return Snapshot(
            quantiles={q: quantile(values, q) for q in QUANTILES},
            recent_requests=len(values),
            recent_sum=math.fsum(values),
            recent_runs=recent,
            regression=replace(self._detectors[key].verdict),
        )

    def _publish(self, key: tuple, s: Snapshot) -> None:
        self.recent_quantile.set(key, s.quantiles, s.recent_requests, s.recent_sum)
        self.recent_requests.labels(*key).set(s.recent_requests)
        self.recent_runs.labels(*key).set(s.recent_runs)
        v = s.regression
        self.baseline_runs.labels(*key).set(v.runs)
        self.history.labels(*key).set(v.history_s)
        if v.threshold is not None:
            self.baseline_median.labels(*key).set(v.reference)
            self.expected.labels(*key).set(v.expected)
            self.baseline_noise.labels(*key).set(v.noise * v.reference)
            self.threshold_ratio.labels(*key).set(v.threshold)
            self.improvement.labels(*key).set(v.improvement)
            self.seasonal.labels(*key).set(1 if v.seasonal else 0)
        else:
            # Too little history to judge against: no threshold is better than a wrong one.
            for g in (self.baseline_median, self.expected, self.baseline_noise, self.threshold_ratio,
                      self.improvement, self.seasonal):
                _remove(g, key)
        if v.since is not None:
            self.episode_start.labels(*key).set(v.since)
        else:
            _remove(self.episode_start, key)

    def _gauges(self):
        return (
            self.recent_requests, self.recent_runs, self.baseline_median, self.expected, self.baseline_noise,
            self.baseline_runs, self.threshold_ratio, self.improvement, self.episode_start, self.seasonal, self.history,
        )

    # ---- accepting a new level ----
    def accept(self, a: Acceptance, publish: bool = True) -> int:
        """Take the recent level of every series in scope as its new reference (ends its episode).
        Returns how many series it applied to."""
        with self._lock:
            return self._accept_locked(a, publish)

    def _accept_locked(self, a: Acceptance, publish: bool) -> int:
        n = 0
        for key, det in self._detectors.items():
            if a.matches(key) and det.accept():
                n += 1
                series = self._series[key]
                recent = series.recent_count(series.times[-1])
                values = series.recent_values(recent)
                det.judge(series.times[-1], quantile(values, 0.5), series.times[-recent])
                if publish:
                    self._publish(key, self._snapshot(key, values, recent))
        return n

    def _retire(self, config) -> int:
        """Forget the series of target/scenario/model/case/concurrency combinations the config no longer has."""
        keep = {
            (t.name, s.name, s.model, c.name, str(level))
            for s in config.scenarios for t in s.targets for c in s.cases for level in s.concurrency
        }
        removed = 0
        with self._lock:
            for key in [k for k in self._series if k[:5] not in keep]:
                del self._series[key]
                removed += 1
            for key in self.recent_quantile.keys():
                if key[:5] not in keep:
                    self.recent_quantile.remove(key)
            for g in self._gauges():
                # prometheus_client keeps its children in _metrics; there is no public listing.
                for labels in list(g._metrics):
                    if tuple(labels[:5]) not in keep:
                        g.remove(*labels)
        return removed

    def retire(self, config) -> int:
        """Take the config's settings; forget what it no longer has."""
        self.configure(config)
        removed = self._retire(config)
        with self._lock:
            for key in [k for k in self._detectors if k not in self._series]:
                del self._detectors[key]
        return removed

    # ---- restart ----
    def span(self) -> float:
        """How far back a rebuild must read: the longest history (baseline) plus the reference's day."""
        settings = [self.settings, *self._by_scenario.values()]
        return max(st.baseline_s for st in settings) + max(st.reference_s for st in settings)

    def rebuild(self, path: str | os.PathLike, max_bytes: int = REBUILD_MAX_BYTES) -> "RebuildStats":
        """Rebuild the state from the results file, and its rotated files as far back as span()
        reaches, reading at most max_bytes in all: the runs, and the acceptances, replayed in the
        order of their times exactly as the live path met them, streamed (memory holds the state,
        never the file). configure() first, so that each scenario's settings apply."""
        began = time.monotonic()
        path = Path(path)
        span = self.span()
        parts: list[tuple[Path, int]] = []
        read = 0
        newest = None
        try:
            for part in results_file_parts(path):
                size = part.stat().st_size
                if newest is None:
                    newest = _last_time(part)
                start = max(size - (max_bytes - read), 0)
                if newest is not None:  # skip what is older than the span (an hour of margin)
                    start = max(start, _offset_of(part, newest - span - 3600))
                parts.append((part, start))
                read += size - start
                first = _first_time(part, start)
                if read >= max_bytes or (newest is not None and first is not None and newest - first >= span):
                    break
        except OSError as exc:
            # The exporter starts anyway; the history builds up again from new runs.
            log.error("cannot rebuild live statistics from %s: %s", path, exc)
            parts = []
        oldest = (newest - span) if newest is not None else -math.inf
        runs: dict[str, list] = {}
        accepts: list[Acceptance] = []
        records = kept = 0
        touched: set = set()
        latest = -math.inf

        def close(upto: float) -> None:
            nonlocal kept
            accepts.sort(key=lambda a: a.at)
            ready = sorted((p for p in runs.values() if p[0] < upto), key=lambda p: p[0])
            for pending in ready:
                while accepts and accepts[0].at <= pending[0]:
                    self._accept_locked(accepts.pop(0), publish=False)
                if pending[0] >= oldest:
                    touched.update(self._finish(pending, pending[0], publish=False))
                    kept += 1
            for pending in ready:
                runs.pop(pending[2], None)
            while accepts and accepts[0].at < upto:
                self._accept_locked(accepts.pop(0), publish=False)

        with self._lock:
            try:
                for part, start in reversed(parts):
                    for n, line in enumerate(iter_lines(part, start)):
                        a = parse_acceptance_line(line)
                        if a is not None:
                            accepts.append(a)
                            continue
                        r = parse_results_line(line)
                        if r is None:
                            continue
                        records += 1
                        latest = max(latest, r.ended_at)
                        if r.ok and r.run_id:
                            if r.run_id not in runs:
                                runs[r.run_id] = [r.ended_at, {}, r.run_id]
                            self._collect(r, runs)
                        if n % 4096 == 4095:
                            # A run's records are near each other in the file: an hour behind
                            # the newest record, every run has all of its records.
                            close(latest - 3600)
            except OSError as exc:
                log.error("cannot rebuild live statistics from %s: %s", path, exc)
            close(math.inf)
            for key in touched:
                if key in self._series:
                    series = self._series[key]
                    recent = series.recent_count(series.times[-1])
                    self._publish(key, self._snapshot(key, series.recent_values(recent), recent))
        stats = RebuildStats(records, kept, len(touched), read, time.monotonic() - began)
        log.info(
            "live statistics rebuilt from %s: %d records, %d runs, %d series (%.1f MB read, %.2fs)",
            path, stats.records, stats.runs, stats.series, stats.bytes_read / 1e6, stats.seconds,
        )
        return stats


@dataclass
class RebuildStats:
    records: int
    runs: int
    series: int
    bytes_read: int
    seconds: float


def _qlabel(q: float) -> str:
    return repr(q)


def _remove(gauge: Gauge, key: tuple) -> None:
    try:
        gauge.remove(*key)
    except KeyError:
        pass


def _first_time(part: Path, start: int) -> Optional[float]:
    for line in iter_lines(part, start):
        r = parse_results_line(line)
        if r is not None:
            return r.ended_at
    return None


def _offset_of(part: Path, t: float) -> int:
    """A byte offset of the file before which every record ended before t (records are appended
    in time order; binary search on the lines found after a few offsets)."""
    lo, hi = 0, part.stat().st_size
    with open(part, "rb") as f:
        while hi - lo > 1 << 16:
            mid = (lo + hi) // 2
            f.seek(mid)
            f.readline()
            r = parse_results_line(f.readline())
            if r is not None and r.ended_at < t:
                lo = mid
            else:
                hi = mid
    return lo


def _last_time(part: Path) -> Optional[float]:
    size = part.stat().st_size
    with open(part, "rb") as f:
        f.seek(max(size - (1 << 20), 0))
        lines = f.read().split(b"\n")
    for line in reversed(lines[1:] if size > (1 << 20) else lines):
        r = parse_results_line(line)
        if r is not None:
            return r.ended_at
    return None


def to_settings(model, default: Settings) -> Settings:
    """config.Regression (or None) -> regression.Settings."""
    if model is None:
        return default
    return replace(default, recent_s=float(model.recent), baseline_s=float(model.baseline),
                   seasonality=str(model.seasonality), accept_after_s=float(model.accept_after))
