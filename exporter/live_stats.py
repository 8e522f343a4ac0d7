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

from .keyspace import CASE
from .live_window import Policy, Series, Snapshot, quantile, threshold
from .results import ProbeResult, RunSummary, parse_results_line, read_tail_lines, results_file_parts
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
    "Median of the per-run medians over the baseline (the 24 h before the recent window)." + BG)
BASELINE_NOISE = Family(
    "llm_probe_baseline_noise", "gauge",
    "Run-to-run noise: 1.4826 x MAD of the per-run medians in the baseline, in the unit of `quantity`." + BG)
BASELINE_RUNS = Family("llm_probe_baseline_runs", "gauge", "Runs in the baseline." + BG)
THRESHOLD_RATIO = Family(
    "llm_probe_regression_threshold_ratio", "gauge",
    "Relative change of the recent median against the baseline that counts as a regression: "
    "max(minimum effect, K x standard error / baseline)." + BG)
LIVE_FAMILIES = (RECENT_QUANTILE, RECENT_REQUESTS, RECENT_RUNS, BASELINE_MEDIAN, BASELINE_NOISE, BASELINE_RUNS,
                 THRESHOLD_RATIO)


class LiveCase:
    """The live windows of one case key: a Series per (start, quantity), and what each last published."""

    __slots__ = ("series", "published")

    def __init__(self):
        self.series: dict[tuple[str, str], Series] = {}
        self.published: dict[tuple[str, str], tuple[Snapshot, int]] = {}

    def render(self, key: tuple) -> dict[str, str]:
        out: dict[str, list[str]] = {f.name: [] for f in LIVE_FAMILIES}
        case_labels = Labels(SERIES_LABELS[:5], key)
        for (start, quantity), (s, baseline_runs) in self.published.items():
            labels = case_labels.plus(SERIES_LABELS[5:], (start, quantity))
            text = labels.text
            head, tail = labels.around("quantile")
            q = out[RECENT_QUANTILE.name]
            q.extend(f"{RECENT_QUANTILE.name}{head}{_qlabel(p)}{tail} {fmt(v)}\n" for p, v in s.quantiles.items())
            q.append(f"{RECENT_QUANTILE.name}_count{text} {fmt(s.recent_requests)}\n")
            q.append(f"{RECENT_QUANTILE.name}_sum{text} {fmt(s.recent_sum)}\n")
            values = [(RECENT_REQUESTS, s.recent_requests), (RECENT_RUNS, s.recent_runs),
                      (BASELINE_RUNS, baseline_runs)]
            # Too few runs to judge against: no baseline is better than a wrong one.
            if s.baseline:
                values += [(BASELINE_MEDIAN, s.baseline.median), (BASELINE_NOISE, s.baseline.noise)]
                if s.threshold is not None:
                    values.append((THRESHOLD_RATIO, s.threshold))
            for family, value in values:
                out[family.name].append(f"{family.name}{text} {fmt(value)}\n")
        return {name: "".join(lines) for name, lines in out.items()}


class LiveStats(Sink):
    """The live-statistics sink: collects a run's requests, and at the end of the run turns
    them into the gauges of the metric contract (README: Live statistics and regression
    alerts), in the case slots of the state store."""

    PART = "live"

    def __init__(self, store: StateStore, policy: Policy = Policy()):
        self.policy = policy
        self.store = store
        store.add_part(Part(CASE, self.PART, LIVE_FAMILIES, lambda key, ctx: LiveCase(),
                            lambda key, state, ctx: state.render(key)))
        # run_id -> [newest ended_at, {series key: [values]}]; runs in flight, oldest first.
        self._pending: OrderedDict[str, list] = OrderedDict()
        # Runs already closed: a straggler that ends after its run's summary is not a new run.
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

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
        """Close a run: one median per series, at the time of the run's newest record.
        Returns the case keys it reached (those still in the key space)."""
        if pending is None:
            return set()
        t = pending[0] or fallback_end
        by_case: dict[tuple, list] = {}
        for key, values in pending[1].items():
            by_case.setdefault(key[:5], []).append((key[5:], values))

        touched = set()
        for case_key, runs in by_case.items():
            def add(state: LiveCase, ctx, runs=runs) -> Optional[bool]:
                for sub, values in runs:
                    series = state.series.get(sub)
                    if series is None:
                        series = state.series[sub] = Series(self.policy)
                    series.add_run(t, values)
                    if publish:
                        self._publish(state, sub, t)
                return None if publish else False

            if self.store.update(CASE, case_key, self.PART, add):
                touched.add(case_key)
        return touched

    def _publish(self, state: LiveCase, sub: tuple, now: float) -> None:
        series = state.series[sub]
        s = self._snapshot(series, now)
        state.published[sub] = (s, s.baseline.runs if s.baseline else _baseline_runs(series, s.recent_runs))

    def snapshot(self, key: tuple) -> Optional[Snapshot]:
        def read(state: LiveCase, ctx) -> Optional[Snapshot]:
            series = state.series.get(tuple(key[5:]))
            if series is None or not len(series.times):
                return None
            return self._snapshot(series, series.times[-1])

        return self.store.read(CASE, tuple(key[:5]), self.PART, read)

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
        touched: set[tuple] = set()
        for pending in kept:
            touched.update(self._finish(pending, pending[0], publish=False))

        def publish(state: LiveCase, ctx) -> None:
            for sub, series in state.series.items():
                self._publish(state, sub, series.times[-1])

        series_count = 0
        for key in touched:
            self.store.update(CASE, key, self.PART, publish)
            series_count += self.store.read(CASE, key, self.PART, lambda state, ctx: len(state.series)) or 0
        stats = RebuildStats(records, len(kept), series_count, read, time.monotonic() - began)
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
    return QUANTILE_TEXT.get(q) or repr(q)


QUANTILE_TEXT = {q: repr(q) for q in QUANTILES}


def _baseline_runs(series: Series, recent: int) -> int:
    return max(len(series.times) - recent, 0)
