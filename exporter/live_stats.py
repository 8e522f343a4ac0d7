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
- the baseline is the per-run medians older than the recent window and at most a day old
  (a slow schedule reaches back further, for enough runs): their median, and their
  robust standard deviation 1.4826 x MAD as the noise;
- the regression threshold is the relative change that counts as worse than a tolerance
  by more than the noise explains, at a false-alert budget per four weeks (threshold()).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric

from .live_window import Policy, quantile, Series, Snapshot, threshold
from .results import ProbeResult, RunSummary, parse_results_line, read_tail_lines, results_file_parts
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

    def __init__(self, registry: CollectorRegistry, policy: Policy = Policy()):
        self.policy = policy
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
            "Median of the per-run medians over the baseline (the 24 h before the recent window).",
        )
        self.baseline_noise = gauge(
            "llm_probe_baseline_noise",
            "Run-to-run noise: 1.4826 x MAD of the per-run medians in the baseline, in the unit of `quantity`.",
        )
        self.baseline_runs = gauge("llm_probe_baseline_runs", "Runs in the baseline.")
        self.threshold_ratio = gauge(
            "llm_probe_regression_threshold_ratio",
            "Relative change of the recent median against the baseline that counts as a regression: "
            "max(minimum effect, K x standard error / baseline).",
        )
        self._series: dict[tuple, Series] = {}
        # run_id -> [newest ended_at, {series key: [values]}]; runs in flight, oldest first.
        self._pending: OrderedDict[str, list] = OrderedDict()
        self._lock = threading.Lock()

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
        """Close a run: one median per series, at the time of the run's newest record."""
        if pending is None:
            return []
        t = pending[0] or fallback_end
        keys = []
        for key, values in pending[1].items():
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = Series(self.policy)
            series.add_run(t, values)
            keys.append(key)
            if publish:
                self._publish(key, series, t)
        return keys

    def snapshot(self, key: tuple) -> Optional[Snapshot]:
        series = self._series.get(key)
        if series is None or not len(series.times):
            return None
        return self._snapshot(series, series.times[-1])

    def _snapshot(self, series: Series, now: float) -> Snapshot:
        recent = series.recent_count(now)
        values = series.recent_values(recent)
        base = series.baseline(now, recent)
        return Snapshot(
            quantiles={q: quantile(values, q) for q in QUANTILES},
            recent_requests=len(values),
            recent_sum=math.fsum(values),
            recent_runs=recent,
            baseline=base,
            threshold=threshold(self.policy, base, recent, len(values)) if base else None,
        )

    def _publish(self, key: tuple, series: Series, now: float) -> None:
        s = self._snapshot(series, now)
        self.recent_quantile.set(key, s.quantiles, s.recent_requests, s.recent_sum)
        self.recent_requests.labels(*key).set(s.recent_requests)
        self.recent_runs.labels(*key).set(s.recent_runs)
        self.baseline_runs.labels(*key).set(s.baseline.runs if s.baseline else _baseline_runs(series, s.recent_runs))
        if s.baseline:
            self.baseline_median.labels(*key).set(s.baseline.median)
            self.baseline_noise.labels(*key).set(s.baseline.noise)
            if s.threshold is not None:
                self.threshold_ratio.labels(*key).set(s.threshold)
            else:
                _remove(self.threshold_ratio, key)
        else:
            # Too few runs to judge against: no baseline is better than a wrong one.
            for g in (self.baseline_median, self.baseline_noise, self.threshold_ratio):
                _remove(g, key)

    def _gauges(self):
        return (
            self.recent_requests, self.recent_runs, self.baseline_median,
            self.baseline_noise, self.baseline_runs, self.threshold_ratio,
        )

    def retire(self, config) -> int:
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

    # ---- restart ----
    def rebuild(self, path: str | os.PathLike, max_bytes: int = 32 << 20) -> "RebuildStats":
        """Rebuild the windows from the end of the results file, and of its rotated files as far
        as the baseline span (baseline_max_seconds) reaches, reading at most max_bytes in all.
        Only the numbers LiveStats keeps are held, never the records. Runs are closed in the
        order they ended; then every series is published as the live path would have left it."""
        began = time.monotonic()
        path = Path(path)
        span = self.policy.baseline_max_seconds
        runs: dict[str, list] = {}
        records = read = 0
        newest = -math.inf
        try:
            for part in results_file_parts(path):
                lines, n = read_tail_lines(part, max_bytes - read)
                read += n
                oldest = None
                for line in lines:
                    r = parse_results_line(line)
                    if r is None:
                        continue
                    records += 1
                    oldest = r.ended_at if oldest is None else oldest
                    newest = max(newest, r.ended_at)
                    if r.ok and r.run_id:
                        self._collect(r, runs)
                if read >= max_bytes or (oldest is not None and newest - oldest >= span):
                    break
        except OSError as exc:
            # The exporter starts anyway; the baseline builds up again from new runs.
            log.error("cannot rebuild live statistics from %s: %s", path, exc)
        # Whole runs, judged by their newest record as the live path does.
        kept = sorted((p for p in runs.values() if p[0] >= newest - span), key=lambda p: p[0])
        with self._lock:
            touched = set()
            for pending in kept:
                touched.update(self._finish(pending, pending[0], publish=False))
            for key in touched:
                series = self._series[key]
                self._publish(key, series, series.times[-1])
        stats = RebuildStats(records, len(kept), len(touched), read, time.monotonic() - began)
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


def _baseline_runs(series: Series, recent: int) -> int:
    return max(len(series.times) - recent, 0)
