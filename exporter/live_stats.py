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

import bisect
import itertools
import json
import logging
import math
import os
import threading
import time
from array import array
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Callable, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric

from .results import ProbeResult, RunSummary
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

# Robust statistics of a normal sample: sd = 1.4826 x MAD, and a MAD is as precise as a
# standard deviation from 0.37 times as many values.
MAD_TO_SD = 1.4826
MAD_EFFICIENCY = 0.37
WEEK_S = 7 * 86400.0
MAX_RUNS_IN_FLIGHT = 256


@dataclass(frozen=True)
class Policy:
    """Windows, bounds and the alert threshold. The defaults are tuned with `make alert-eval`."""

    recent_runs: int = 3
    recent_seconds: float = 15 * 60
    baseline_seconds: float = 24 * 3600
    # A slow schedule reaches further back, to have this many runs to estimate the noise from...
    baseline_min_span_runs: int = 72
    # ...but never beyond this.
    baseline_max_seconds: float = 3 * 24 * 3600
    baseline_min_runs: int = 6
    baseline_max_runs: int = 5760  # a day of a 15 s schedule
    min_effect: float = 0.08
    # Changes this small are not regressions (wobbles): the test is whether the change exceeds it.
    tolerance: float = 0.04
    false_alerts_per_4_weeks: float = 0.5
    # Hard caps, whatever the schedule: a 1 s schedule must not hold a day of raw values.
    recent_max_runs: int = 240
    recent_max_values: int = 20_000

    def k(self, runs_per_week: float, recent_runs: int, baseline_runs: int) -> float:
        """Standard errors a change must exceed: a one-sided normal quantile, Bonferroni over
        the nearly independent recent windows four weeks of this schedule make, widened
        like Student's t for a noise estimated from few runs (a MAD has the efficiency of
        0.37 x as many runs as a standard deviation)."""
        tests = max(4.0 * runs_per_week / max(recent_runs, 1), 1.0)
        alpha = min(self.false_alerts_per_4_weeks / tests, 0.5)
        z = NormalDist().inv_cdf(1.0 - alpha)
        df = max(MAD_EFFICIENCY * (baseline_runs - 1), 1.0)
        return z * (1.0 + (z * z + 1.0) / (4.0 * df))


def quantile(sorted_values, q: float) -> float:
    """numpy.quantile(values, q) with its default linear method, on already sorted values."""
    n = len(sorted_values)
    h = (n - 1) * q
    lo = math.floor(h)
    if lo + 1 >= n:
        return float(sorted_values[-1])
    a, b = sorted_values[lo], sorted_values[lo + 1]
    return float(a + (h - lo) * (b - a))


def kth_distance(xs, m: float, k: int) -> float:
    """The k-th smallest (0-based) of |x - m| over sorted xs, in O(log n): the distances are
    two sorted sequences (left of m and right of m), and this selects from their merge."""
    p = bisect.bisect_left(xs, m)
    lo, hi = max(0, k + 1 - (len(xs) - p)), min(k + 1, p)
    # i = how many of the k + 1 smallest lie left of m (the left distances ascend as m - xs[p-1-i]).
    while lo < hi:
        i = (lo + hi) // 2
        if m - xs[p - 1 - i] < xs[p + k - i] - m:
            lo = i + 1
        else:
            hi = i
    best = -math.inf
    if lo > 0:
        best = m - xs[p - lo]
    if k + 1 - lo > 0:
        best = max(best, xs[p + k - lo] - m)
    return best


@dataclass
class Baseline:
    median: float
    noise: float
    runs: int
    interval_s: Optional[float]  # mean gap between the baseline's runs: the schedule as observed


class Series:
    """The per-run medians (bounded ring) and the raw values of the recent runs of one series.

    The baseline's medians are also kept as a sorted list, updated as runs enter and leave
    it, so its median and MAD are exact at every run and cost O(baseline) only in memmove.
    """

    def __init__(self, policy: Policy):
        self.policy = policy
        self.times = array("d")
        self.medians = array("d")
        self._dropped = 0  # runs trimmed off the front, so absolute index = _dropped + local index
        self.raw: deque[array] = deque()  # values of the newest runs, aligned with the end of medians
        self._raw_values = 0
        self._sorted: list[float] = []  # medians of the absolute runs [_bstart, _bend), sorted
        self._bstart = 0
        self._bend = 0

    @property
    def cap(self) -> int:
        return self.policy.baseline_max_runs + self.policy.recent_max_runs

    def add_run(self, t: float, values: Iterable[float]) -> None:
        vals = array("d", sorted(values))
        if not vals:
            return
        self.times.append(t)
        self.medians.append(quantile(vals, 0.5))
        self.raw.append(vals)
        self._raw_values += len(vals)
        while len(self.raw) > 1 and (
            len(self.raw) > self.policy.recent_max_runs or self._raw_values - len(self.raw[0]) >= self.policy.recent_max_values
        ):
            self._raw_values -= len(self.raw.popleft())
        # Runs older than the baseline span, or beyond the cap, never count again: trim them
        # in chunks (amortised O(1)); until then the window arithmetic skips them.
        oldest = t - self.policy.baseline_max_seconds
        cut = max(len(self.times) - self.cap, 0)
        while cut < len(self.times) and self.times[cut] < oldest:
            cut += 1
        if cut >= 64:
            first = self._dropped + cut  # absolute index of the oldest run kept
            if self._bend <= first:
                self._sorted, self._bstart, self._bend = [], first, first
            else:
                for i in range(self._bstart, first):
                    del self._sorted[bisect.bisect_left(self._sorted, self.medians[i - self._dropped])]
                self._bstart = max(self._bstart, first)
            del self.times[:cut]
            del self.medians[:cut]
            self._dropped += cut

    def recent_count(self, now: float) -> int:
        """Runs in the recent window: the last max(recent_runs, runs within recent_seconds),
        capped by recent_max_runs and recent_max_values."""
        n = len(self.times)
        start = now - self.policy.recent_seconds
        i = n
        while i > 0 and self.times[i - 1] > start:
            i -= 1
        count = min(max(n - i, min(self.policy.recent_runs, n)), len(self.raw))
        values = 0
        for k in range(1, count + 1):
            values += len(self.raw[-k])
            if values > self.policy.recent_max_values:
                return max(k - 1, 1)
        return count

    def recent_values(self, count: int) -> list[float]:
        out: list[float] = []
        for k in range(len(self.raw) - count, len(self.raw)):
            out.extend(self.raw[k])
        out.sort()
        return out

    def _move(self, start: int, end: int) -> None:
        """Make _sorted hold the medians of absolute runs [start, end)."""
        d = self._dropped
        if start >= self._bend or end <= self._bstart:
            self._sorted = sorted(self.medians[start - d:end - d])
        else:
            s = self._sorted
            for i in range(self._bstart, start):  # leaving at the old end
                del s[bisect.bisect_left(s, self.medians[i - d])]
            for i in range(start, self._bstart):  # (re)entering at the old end
                bisect.insort(s, self.medians[i - d])
            for i in range(end, self._bend):  # given back to the recent window
                del s[bisect.bisect_left(s, self.medians[i - d])]
            for i in range(self._bend, end):  # entering from the recent window
                bisect.insort(s, self.medians[i - d])
        self._bstart, self._bend = start, end

    def baseline(self, now: float, recent: int) -> Optional[Baseline]:
        p = self.policy
        end = len(self.times) - recent
        # The last 24 h; a slow schedule reaches back to min_span_runs runs, within max_seconds.
        day = bisect.bisect_left(self.times, now - p.baseline_seconds, 0, end)
        oldest = bisect.bisect_left(self.times, now - p.baseline_max_seconds, 0, end)
        start = max(oldest, min(day, end - p.baseline_min_span_runs), end - p.baseline_max_runs, 0)
        self._move(start + self._dropped, end + self._dropped)
        count = end - start
        if count < p.baseline_min_runs:
            return None
        meds = self._sorted
        mid = quantile(meds, 0.5)
        h = (count - 1) * 0.5
        lo = math.floor(h)
        mad = kth_distance(meds, mid, lo)
        if h > lo:
            mad += (h - lo) * (kth_distance(meds, mid, lo + 1) - mad)
        span = self.times[end - 1] - self.times[start]
        interval = span / (count - 1) if span > 0 else None
        return Baseline(mid, MAD_TO_SD * mad, count, interval)


@dataclass
class Snapshot:
    """What the gauges of one series say."""

    quantiles: dict[float, float]
    recent_requests: int
    recent_sum: float
    recent_runs: int
    baseline: Optional[Baseline]
    threshold: Optional[float]


def threshold(policy: Policy, base: Baseline, recent_runs: int, recent_requests: int) -> Optional[float]:
    """The relative change that counts as a regression: max(min effect, tolerance + K x SE / baseline).

    SE is the standard error of (recent median - baseline median) when the runs' medians
    scatter with the baseline's noise: noise x sqrt(g/recent runs + (pi/2)/baseline runs).
    g corrects for pooling: the median of all requests of R runs of n requests varies
    like noise^2 x g / R, with g = pi/2 for n <= 2 and close to 1 for many requests a run.
    """
    if base.median <= 0:
        return None
    n = recent_requests / max(recent_runs, 1)
    c_n = 1.0 if n < 2.5 else math.pi / 2 - 0.5 / n  # variance of a median of n, in sigma^2 / n
    g = (math.pi / 2) / c_n
    se = base.noise * math.sqrt(g / recent_runs + (math.pi / 2) / base.runs)
    runs_per_week = WEEK_S / base.interval_s if base.interval_s else WEEK_S / policy.recent_seconds
    k = policy.k(runs_per_week, recent_runs, base.runs)
    return max(policy.min_effect, policy.tolerance + k * se / base.median)


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
            for part in _parts(path):
                lines, n = _read_tail(part, max_bytes - read)
                read += n
                oldest = None
                for line in lines:
                    r = _parse(line)
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


def _parse(line: bytes) -> Optional[ProbeResult]:
    """One results-file line; None for a blank, torn or garbled one (read_results logs those)."""
    try:
        d = json.loads(line)
        return ProbeResult.from_dict(d) if isinstance(d, dict) else None
    except (ValueError, TypeError):
        return None


def _read_tail(path: Path, budget: int) -> tuple[Iterator[bytes], int]:
    """The complete lines of the last `budget` bytes of a file, oldest first, one at a time
    (the bytes read are held once, never split into a list)."""
    try:
        size = path.stat().st_size
    except OSError:
        return iter(()), 0
    start = max(size - budget, 0)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(size - start)

    def lines() -> Iterator[bytes]:
        pos = 0
        if start > 0:  # the first line began before the tail
            pos = data.find(b"\n") + 1
            if pos == 0:
                return
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                return  # a torn last line
            yield data[pos:end]
            pos = end + 1

    return lines(), len(data)


def _parts(path: Path) -> Iterator[Path]:
    """PATH, then its rotated files PATH.1, PATH.2, ... (newest first) while they exist."""
    yield path
    for i in itertools.count(1):
        part = path.with_name(f"{path.name}.{i}")
        if not part.exists():
            return
        yield part
