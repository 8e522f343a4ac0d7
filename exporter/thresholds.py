"""How a statistic varies when nothing changes, measured on its own history: robust centre and
spread, lag-1 autocorrelation, the upcrossing rate of a Gaussian AR(1), and the threshold that
keeps false alerts within a budget (docs/regression.md). Pure numbers."""

from __future__ import annotations

import math
from functools import lru_cache


def median(xs: list) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def quick_median(s: list) -> float:
    """The median of a list already sorted."""
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def window_medians(xs: list, k: int) -> list:
    """Per position, the median of the k values ending there (fewer at the start)."""
    return xs if k == 1 else [median(xs[max(i - k + 1, 0):i + 1]) for i in range(len(xs))]


# The variance of a normal sample winsorised at 2 standard deviations, and how precise its
# standard deviation is against a plain one (as many values as this fraction).
WINSOR_VARIANCE = 0.9205
WINSOR_EFFICIENCY = 0.8


def spread(xs: list) -> tuple[float, float]:
    """(centre, scale): the median, and the standard deviation of the values winsorised at 2 robust
    standard deviations (1.4826 x MAD) from it, made consistent for normal data. Robust to a few
    percent of outliers (a regression the history holds), and nearly as precise as a standard
    deviation (a MAD alone is worth 0.37 as many values)."""
    c = median(xs)
    lim = 2 * 1.4826 * median([abs(x - c) for x in xs])
    if not lim > 0:
        return c, 0.0
    ss = sum(min(abs(x - c), lim) ** 2 for x in xs)
    return c, math.sqrt(ss / max(len(xs) - 1, 1) / WINSOR_VARIANCE)


def lag1(xs: list, c: float) -> float:
    num = sum((xs[i] - c) * (xs[i + 1] - c) for i in range(len(xs) - 1))
    den = sum((x - c) ** 2 for x in xs)
    return max(0.0, min(num / den, 0.99)) if den > 0 else 0.0


def _q(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2))


def _upcross(z: float, rho: float) -> float:
    """P(Y0 <= z < Y1) for a standard bivariate normal with correlation rho."""
    if rho <= 0:
        return _q(z) * (1 - _q(z))
    s = math.sqrt(1 - min(rho, 0.999) ** 2)
    n, h = 120, 8.0 / 120
    both = 0.0
    for i in range(n + 1):  # Simpson's rule over x in [z, z + 8]
        x = z + i * h
        wgt = 1 if i in (0, n) else (4 if i % 2 else 2)
        both += wgt * math.exp(-x * x / 2) * _q((z - rho * x) / s)
    both *= h / 3 / math.sqrt(2 * math.pi)
    return max(_q(z) - both, 0.0)


@lru_cache(maxsize=4096)
def z_for(tests: int, rho: float, budget: float) -> float:
    """The level that a stationary Gaussian AR(1) sequence of `tests` values, lag-1 correlation rho,
    crosses upward `budget` times on average."""
    lo, hi = 0.0, 9.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if tests * _upcross(mid, rho) > budget:
            lo = mid
        else:
            hi = mid
    return hi


MAX_TAIL_CLUSTER = 4  # blocks

# Mean excess of a standard normal over its 90 % quantile: E[X - u | X > u], u = 1.2816.
NORMAL_TAIL_SCALE = 0.4735


def threshold_of(xs: list, tests: float, budget: float, per_block: int = 1) -> tuple[float, float]:
    """(threshold, spread) of a statistic whose values over the history are xs (one per block, in
    time order), so that it is crossed upward at most `budget` times in `tests` blocks.

    The larger of two estimates (the second where the tail is clearly heavier than a normal one):
    - Gaussian: centre + z x spread (spread(): robust to the regressions the history may hold),
      z for the upcrossings of an AR(1) with the measured lag-1 correlation, widened like
      Student's t for the spread estimated from the effective number of blocks;
    - the tail as measured (extreme value theory, peaks over threshold, declustered): the peak
      excess over the 90 % quantile of each run of consecutive exceedances, fitted by an
      exponential tail (a generalised Pareto of shape 0: its scale is the mean peak), extrapolated
      to the budget at the rate those clusters occur; clusters longer than MAX_TAIL_CLUSTER
      blocks are sustained shifts, not a tail, and are left out.
      A normal tail is lighter than this, so it never misses a heavy one (block maxima, bursts,
      slow requests)."""
    c, sd = spread(xs)
    rho = lag1(xs, c)
    # The recent window is judged after every run, per_block runs a block: consecutive values share
    # all runs but one, which raises their correlation from rho (a block apart) to about this.
    rho_run = min(1 - (1 - rho) / per_block, 0.999)
    z = z_for(max(int(tests * per_block), 1), round(rho_run, 3), budget)
    n_eff = max(len(xs) * (1 - rho) / (1 + rho), 2.0)
    df = max(WINSOR_EFFICIENCY * (n_eff - 1), 1.0)
    t = c + z * (1 + (z * z + 1) / (4 * df)) * sd
    if len(xs) >= 50 and sd > 0:
        u = sorted(xs)[int(0.9 * len(xs))]
        clusters: list = []  # [highest excess, length] of each run of consecutive exceedances
        for i, x in enumerate(xs):
            if x > u:
                if i and xs[i - 1] > u:
                    clusters[-1] = [max(clusters[-1][0], x - u), clusters[-1][1] + 1]
                else:
                    clusters.append([x - u, 1])
        # Only short clusters describe a heavy tail (a burst of load, an odd run). One longer than
        # an hour of 15-minute blocks, or 4 hourly runs, is a sustained shift: drift, which the
        # Gaussian part measures, or a regression the detector missed, which must not raise the
        # threshold for the next one (it did, to 10 spreads, on hourly steps of alert-eval).
        peaks = [p for p, n in clusters if n <= MAX_TAIL_CLUSTER]
        beta = sum(peaks) / len(peaks) if len(peaks) >= 10 else 0.0
        if beta > 1.5 * NORMAL_TAIL_SCALE * sd:  # clearly heavier than a normal tail
            t = max(t, u + beta * math.log(max(len(peaks) / len(xs) * tests / budget, 1.0)))
    return t, sd
