"""Seasonality of a series' history (docs/regression.md, method step 2): the daily profile (per
slot of the day) and the weekly one (per hour of the week, offset 1w, 2w, 3w), each measured out
of sample and used only where it makes the judged statistic scatter less. Pure numbers."""

from __future__ import annotations

import bisect
import math
from typing import Optional

from .thresholds import median, quick_median, spread, window_medians

HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY


def daily_profile(adm: list, w: float, n: int, span: float, mode: str, k: int = 1):
    """The daily profile (per slot of n, smoothed) of blocks of w seconds, [start, y, ...], and
    each block's out-of-sample profile value (its day against the profile of the other days), or
    (None, None) where the history shows no daily cycle worth following (`auto`: the statistic the
    tests judge, the median of k blocks, scatters less than 90 % as much with it)."""
    if mode == "off" or span < (3 if mode == "auto" else 2) * DAY:
        return None, None
    slot_s = DAY / n
    centre = median([b[1] for b in adm])
    cells: dict = {}
    for b in adm:
        mid = b[0] + w / 2
        cells.setdefault((int(mid // DAY), int((mid % DAY) // slot_s)), []).append(b[1] - centre)
    per_slot: list[dict] = [dict() for _ in range(n)]
    for (day, slot), v in cells.items():
        per_slot[slot][day] = median(v)

    def smooth(raw: list) -> list:
        # A 3-slot running mean where slots are short (w <= 1 h); a long slot is already smooth.
        return [(raw[i - 1] + raw[i] + raw[(i + 1) % n]) / 3 if n >= 24 else raw[i] for i in range(n)]

    full = smooth([median(list(d.values())) if d else 0.0 for d in per_slot])
    days = sorted({day for day, _ in cells})
    loo_by_day = {}
    for day in days:
        raw = []
        for d in per_slot:
            others = [v for k, v in d.items() if k != day]
            raw.append(median(others) if others else 0.0)
        loo_by_day[day] = smooth(raw)
    loo = []
    for b in adm:
        mid = b[0] + w / 2
        loo.append(loo_by_day[int(mid // DAY)][int((mid % DAY) // slot_s)])
    if mode == "auto":
        # Judged on the statistic the tests judge, the median of k blocks (whole windows): on an
        # hourly schedule a median of 3 runs has a third of a run's noise and all of the cycle.
        flat = spread(window_medians([b[1] for b in adm], k)[k - 1:])[1]
        seasonal = spread(window_medians([b[1] - p for b, p in zip(adm, loo)], k)[k - 1:])[1]
        if not seasonal < 0.9 * flat:
            return None, None
    return full, loo


def weekly_departures(hourly: dict, blocks: list, w: float, profile: Optional[list], s, k: int) -> Optional[dict]:
    """The weekly profile (per hour, its departure from the week around it), or None where the
    history shows no weekly pattern worth following. `hourly`: one median an hour of the blocks
    older than the history; `blocks`: those of the history to judge it on ([start, y, ...], of w
    seconds); `s`: the Settings (seasonality, weeks, min_blocks).

    Per hour of the memory (the median of its blocks, less the daily profile), its departure
    from the median of the week centred on it (near the memory's ends, its first or last
    week): a quieter weekend, busier office hours. The profile at a time is the median of the
    departures at its hour and the hours either side, 1, 2 and 3 weeks before (offset 1w, 2w,
    3w), so the history's blocks are judged against weeks they are not part of. `auto` uses
    it where that makes the statistic the tests judge scatter 10 % less, as for the daily
    profile. Blocks with no week before them keep their departure."""
    by_hour: dict = {}
    for b in blocks:
        by_hour.setdefault(int(b[0] // HOUR), []).append(b[1])
    hourly = {**hourly, **{h: median(v) for h, v in by_hour.items()}}
    if len(hourly) < 168:
        return None
    slot_s = DAY / len(profile) if profile else DAY

    def daily(t: float) -> float:
        return profile_value(profile, slot_s, t) if profile else 0.0

    hourly = {h: v - daily((h + 0.5) * HOUR) for h, v in hourly.items()}
    hours = sorted(hourly)
    values = [hourly[h] for h in hours]
    departure, window, lo, hi = {}, [], 0, 0
    for i, h in enumerate(hours):
        # The week centred on h, or the first or last week of the memory near its ends: a
        # sorted window sliding with h.
        a = max(min(h - 84, hours[-1] - 167), hours[0])
        while hi < len(hours) and hours[hi] < a + 168:
            bisect.insort(window, values[hi])
            hi += 1
        while hours[lo] < a:
            del window[bisect.bisect_left(window, values[lo])]
            lo += 1
        if len(window) >= 84:
            departure[h] = values[i] - quick_median(window)
    known = []
    for b in blocks:
        p = week_at(departure, b[0] + w / 2, s.weeks, None)
        if p is not None:
            known.append((b[1] - daily(b[0] + w / 2), p))
    # Judged once two days of the history have a week before them.
    if len(known) < max(s.min_blocks, 2 * DAY / w, k):
        return None
    if s.seasonality == "auto":
        flat = spread(window_medians([x for x, _ in known], k)[k - 1:])[1]
        followed = spread(window_medians([x - p for x, p in known], k)[k - 1:])[1]
        if not followed < 0.9 * flat:
            return None
    return departure


def profile_value(profile: list, slot_s: float, t: float) -> float:
    """The daily profile at t, interpolated between the slots' centres."""
    n = len(profile)
    pos = (t % DAY) / slot_s - 0.5
    i = math.floor(pos)
    f = pos - i
    return (1 - f) * profile[i % n] + f * profile[(i + 1) % n]


def week_change(departure: dict, after: float, before: float, weeks: int) -> float:
    """What the weekly profile adds from time `before` to time `after` (the jump test's two windows)."""
    return week_at(departure, after, weeks) - week_at(departure, before, weeks)


def week_at(departure: dict, t: float, weeks: int, default: Optional[float] = 0.0) -> Optional[float]:
    """The weekly profile at t: the median departure at its hour and the hours either side, 1 to
    `weeks` weeks before."""
    h = int(t // HOUR)
    found = [departure[x] for j in range(1, weeks + 1) for x in (h - 168 * j - 1, h - 168 * j, h - 168 * j + 1)
             if x in departure]
    return median(found) if found else default
