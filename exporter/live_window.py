"""The recent window of one series: its per-run medians and the raw values of its recent runs.

Pure numbers, no Prometheus and no clock: `live_stats.py` feeds each finished run in and
publishes what comes out; tests/kit/alert_eval.py drives the same code over simulated weeks.
The recent window is the last max(recent_runs, recent_seconds) of runs. What it is compared
with (reference, daily profile, threshold, alert episodes) is exporter/regression.py.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from .regression import Verdict


@dataclass(frozen=True)
class Policy:
    """The recent window and its bounds. The regression test is exporter/regression.py."""

    recent_runs: int = 3
    recent_seconds: float = 15 * 60
    # Hard caps, whatever the schedule: a 1 s schedule must not hold a day of raw values.
    recent_max_runs: int = 240
    recent_max_values: int = 20_000


def quantile(sorted_values, q: float) -> float:
    """numpy.quantile(values, q) with its default linear method, on already sorted values."""
    n = len(sorted_values)
    h = (n - 1) * q
    lo = math.floor(h)
    if lo + 1 >= n:
        return float(sorted_values[-1])
    a, b = sorted_values[lo], sorted_values[lo + 1]
    return float(a + (h - lo) * (b - a))


class Series:
    """The per-run medians and the raw values of the recent runs of one series (bounded rings)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.times = array("d")
        self.medians = array("d")
        self.raw: deque[array] = deque()  # values of the newest runs, aligned with the end of medians
        self._raw_values = 0

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
        # Only the recent window's runs count: trim in chunks (amortised O(1)).
        cut = len(self.times) - self.policy.recent_max_runs
        if cut >= 64:
            del self.times[:cut]
            del self.medians[:cut]

    def recent_count(self, now: float) -> int:
        """Runs in the recent window: the last max(recent_runs, runs within recent_seconds),
        capped by recent_max_runs and recent_max_values."""
        n = len(self.times)
        i = bisect.bisect_right(self.times, now - self.policy.recent_seconds)
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


@dataclass
class Snapshot:
    """What the gauges of one series say."""

    quantiles: dict[float, float]
    recent_requests: int
    recent_sum: float
    recent_runs: int
    # The regression verdict (exporter/regression.py): reference, expected value, threshold in
    # force, noise, improvement, episode, seasonality and history.
    regression: Verdict = field(default_factory=Verdict)
