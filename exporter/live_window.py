"""The statistics behind the live gauges: one case's per-run medians over time, its recent
window, its baseline with the run-to-run noise, and the regression threshold.

Pure numbers, no Prometheus and no clock: `live_stats.py` feeds each finished run in and
publishes what comes out; scripts/alert_eval.py drives the same code over simulated days.
- the recent window is the last max(recent_runs, recent_seconds) of runs;
- the baseline is the per-run medians older than the recent window and at most a day old
  (a slow schedule reaches back further, for enough runs): their median, and their
  robust standard deviation 1.4826 x MAD as the noise;
- the regression threshold is the relative change that counts as worse than a tolerance
  by more than the noise explains, at a false-alert budget per four weeks (threshold()).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Optional

# Robust statistics of a normal sample: sd = 1.4826 x MAD, and a MAD is as precise as a
# standard deviation from 0.37 times as many values.
MAD_TO_SD = 1.4826
MAD_EFFICIENCY = 0.37
WEEK_S = 7 * 86400.0


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
