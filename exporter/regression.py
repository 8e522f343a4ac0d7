"""Regression detection for one series: a reference level that holds, judged against a threshold
measured on the series' own history (docs/regression.md).

Pure numbers, no Prometheus and no clock: times come from the records, so replaying the same runs
(and acceptances) in order rebuilds the same state after a restart.

In log space, worse positive (y = log value, or -log value for tokens/s):
- history: the runs are grouped in blocks of whole runs on a fixed time grid, so that a recent
  window is k whole blocks (15 minutes, k = 1, on a fast schedule; one run, k = 3, on a slow one);
  a block's number is the median of its runs' medians. Blocks cover the baseline span (7 d, at
  least 672 blocks); blocks of an alert episode are left out of it.
- the daily profile (seasonality): per slot of the day, the median of the blocks' deviations over
  the days of history; used when, measured out of sample (each day against the profile of the
  other days), it makes the blocks scatter less (auto), or always (daily, weekly).
- the weekly profile: per hour, less the daily profile, its departure from the week around it;
  the profile at a time is the median of the departures at that hour 1, 2 and 3 weeks before
  (hours older than the history are kept as one median an hour); used like the daily one (auto),
  or always (weekly).
- the reference: the median of the deseasonalised blocks of the last day before the recent window;
  it follows slow drift, but never the blocks of an alert episode, so a regression stays one.
- the level test: the recent statistic minus reference and profile, d. Its null distribution is
  measured by computing the same statistic on every block of the history against the reference
  it had then (a rolling median of the day before it): centre, robust spread, and lag-1
  autocorrelation rho. The threshold is centre + z x spread, z such that a Gaussian AR(1) with that
  rho crosses it upward less than the false-alert budget over four weeks, widened for the spread
  being estimated from n (1 - rho) / (1 + rho) effective blocks. Where k = 3, never below what
  two odd runs of three explain (their single-run tail against their neighbours).
- the jump test: the recent statistic minus the block right before it, against its own null
  measured the same way; catches a step quickly when the level drifts slowly.
- an alert episode starts when either test fires, and holds while d stays above
  min(spread, threshold / 2): it ends when the level is back, or when it is accepted (by the user,
  or after accept_after), which moves the history to the new level.
- an improvement (below the null's lower tail for an hour) only shows; the rolling reference
  follows a real one.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Optional

from .seasonality import HOUR, WEEK, daily_profile, profile_value, week_at, week_change, weekly_departures
from .thresholds import median as _median
from .thresholds import quick_median, threshold_of, window_medians

DAY = 86400.0
FOUR_WEEKS = 28 * DAY
ADMITTED, HELD, EXCLUDED = 0, 1, 2
IMPROVEMENT_S = 3600.0  # how long an improvement must last before the gauge shows it


@dataclass(frozen=True)
class Settings:
    """Per scenario (config `regression:`); the defaults are measured with `make alert-eval`."""

    recent_s: float = 15 * 60.0
    baseline_s: float = 7 * DAY
    seasonality: str = "auto"  # auto | daily | weekly | off
    # The weekly profile is the median of the same hours of this many weeks before (offset 1w, 2w, 3w).
    weeks: int = 3
    accept_after_s: float = 7 * DAY
    min_effect: float = 0.08
    false_alerts_per_4_weeks: float = 0.5
    recent_runs: int = 3
    reference_s: float = DAY
    min_blocks: int = 8
    # A crossing becomes an episode (and the alert fires) when it has lasted this long: a burst of
    # load that lifts the recent median for minutes is not a regression. On a slower schedule the
    # recent window is a median of 3 runs or more, which one odd run cannot move, and a crossing
    # is an episode at once (waiting for the next run cost an hour on an hourly schedule and
    # missed steps it caught).
    confirm_s: float = 600.0
    slow_budget_divisor: float = 3.0
    # The history holds at least this many blocks, however short `baseline`: 4 weeks of an hourly
    # schedule's blocks, 7 days of 15-minute ones. A week of hourly blocks (168) is too few to know
    # the tail that a 1-in-2688 threshold sits in.
    baseline_blocks: int = 672
    # The jump test compares the recent window with the block right before it: the shortest lag,
    # so slow drift (hours) moves the two apart least while a step moves them apart fully.
    # Measured against 4 blocks one block earlier: fewer false alerts and faster detections on
    # every seed of alert-eval tried (docs/regression.md, "Tried and measured").
    jump_blocks: int = 1

    def history_s(self, w: float) -> float:
        """How far back the history of blocks of w seconds reaches."""
        return max(self.baseline_s, self.baseline_blocks * w)

    @property
    def weekly(self) -> bool:
        return self.seasonality in ("auto", "weekly")

    def memory_s(self, w: float) -> float:
        """How far back a series remembers: its history, and the weeks of the weekly profile (kept
        as one number an hour): the week before each of the last 3 and the week being judged."""
        return max(self.history_s(w), (self.weeks + 1) * WEEK if self.weekly else 0.0)


@dataclass
class Verdict:
    """What the gauges of one series say about regressions (ratios relative, worse positive)."""

    expected: Optional[float] = None  # the recent median's expected value: reference x time of day, in the unit
    reference: Optional[float] = None  # the reference level, in the unit
    threshold: Optional[float] = None  # the relative change that counts now (lower during an episode)
    noise: Optional[float] = None  # robust spread of the recent statistic around its reference, relative
    change: Optional[float] = None  # the recent median's relative change against `expected`
    improvement: float = 0.0  # relative improvement beyond the noise, else 0
    firing: bool = False
    since: Optional[float] = None  # start of the current alert episode
    seasonal: bool = False  # compared with the same time of day
    weekly: bool = False  # compared with the same time of week
    history_s: float = 0.0  # span of the usable history
    blocks: int = 0  # blocks in the history
    runs: int = 0  # runs in the history


@dataclass
class Null:
    ref: float
    profile: Optional[list]  # per slot of the day, or None
    slot_s: float
    t_level: float
    c_level: float
    t_jump: Optional[float]
    t_runs: float  # what two odd runs of three explain (slow schedules; else -inf)
    t_better: float  # how far below its reference the level must be to count as an improvement
    weekly: Optional[dict]  # the weekly profile's data: per hour, its departure from the week around it
    spread: float
    blocks: int
    runs: int
    history_s: float


class Detector:
    """One series (one quantity of one case, cold or warm) over time."""

    def __init__(self, settings: Settings = Settings(), higher_is_worse: bool = True):
        self.s = settings
        self.sign = 1.0 if higher_is_worse else -1.0
        self.w: Optional[float] = None
        self.gap = 60.0  # the schedule's interval, as observed
        self._early: list = []  # (t, y) until the schedule (and so the block length) is known
        self._bin: Optional[int] = None
        self._cur: list = []
        self.blocks: deque = deque()  # [start, y, state, runs]
        # Blocks older than the history, one median an hour, for the weekly profile.
        self.hours: dict = {}
        self._fold: tuple = (None, [])  # (hour, values) of the hour being folded
        self.since: Optional[float] = None
        self.cause = ""  # what started the current episode: level | jump
        self._pending: Optional[tuple] = None  # (since when, recent window start) of a crossing not yet confirmed
        self._better: Optional[tuple] = None  # (since when, runs) the level has been better than the noise explains
        self.improved = (0.0, -math.inf)  # the largest improvement shown today: (ratio, when)
        self._null: Optional[Null] = None
        self._next = -math.inf
        self._d: Optional[float] = None
        self.verdict = Verdict()

    # ---- runs ----
    def add_run(self, t: float, value: float) -> None:
        if not value > 0 or not math.isfinite(value):
            return
        y = self.sign * math.log(value)
        if self.w is None:
            self._early.append((t, y))
            if len(self._early) < 4:
                return
            times = [a for a, _ in self._early]
            gap = _median([b - a for a, b in zip(times, times[1:])])
            self.gap = max(gap, 1.0)
            self.w = block_seconds(self.gap, self.s.recent_s, self.s.recent_runs)
            early, self._early = self._early, []
            for a, b in early:
                self._add(a, b)
            return
        self._add(t, y)

    def _add(self, t: float, y: float) -> None:
        b = math.floor(t / self.w)
        if self._bin is not None and b != self._bin and self._cur:
            self._close()
        self._bin = b
        self._cur.append(y)

    def _close(self) -> None:
        start = self._bin * self.w
        state = HELD if self.since is not None and start + self.w > self.since else ADMITTED
        self.blocks.append([start, _median(self._cur), state, len(self._cur)])
        self._cur = []
        keep = self.s.history_s(self.w)
        while self.blocks and self.blocks[0][0] < start - keep:
            old = self.blocks.popleft()
            if old[2] != HELD and self.s.weekly:
                self._fold_in(old[0], old[1], start)

    def _fold_in(self, t: float, y: float, now: float) -> None:
        """A block leaving the history: kept as its hour's median for the weekly profile, as far
        back as the memory reaches (what a rebuild reads again)."""
        h = int(t // HOUR)
        hour, values = self._fold
        if hour is not None and h != hour:
            self.hours[hour] = _median(values)
            values = []
            horizon = int((now - self.s.memory_s(self.w)) // HOUR)
            while self.hours and next(iter(self.hours)) < horizon:
                del self.hours[next(iter(self.hours))]
        values.append(y)
        self._fold = (h, values)

    # ---- the null: how the statistics vary when nothing changed ----
    def _slots(self) -> int:
        return max(1, min(96, round(DAY / self.w)))

    def _k(self) -> int:
        """Blocks in a recent window: 1 on a fast schedule, 3 on a slow one (a block a run)."""
        return max(1, round(max(self.s.recent_s, self.s.recent_runs * self.gap) / self.w))

    def _refresh(self, now: float) -> None:
        adm = [b for b in self.blocks if b[2] == ADMITTED]
        runs = sum(b[3] for b in adm)
        span = (now - adm[0][0]) if adm else 0.0
        self.verdict.history_s, self.verdict.blocks, self.verdict.runs = span, len(adm), runs
        if len(adm) < self.s.min_blocks:
            self._keep_or_drop_null()
            return
        w, s = self.w, self.s
        ys = [b[1] for b in adm]
        # k blocks make a recent window (1 on a fast schedule; 3 on an hourly one, a block a run):
        # the statistic over the history is the median of k consecutive blocks.
        k = self._k()
        profile, loo = daily_profile(adm, w, self._slots(), span, s.seasonality, k)
        z = [y - p for y, p in zip(ys, loo)] if profile else ys
        weekly = self._weekly(profile, k)
        if weekly:
            z = [x - week_at(weekly, b[0] + w / 2, s.weeks) for x, b in zip(z, adm)]
        # The level statistic over the history: each block's median (the recent window's statistic
        # at the block's end) against the reference it had then.
        zk, yk = window_medians(z, k), window_medians(ys, k)
        level = self._against_reference(adm, z, zk, k)
        tests = FOUR_WEEKS / w
        budget = s.false_alerts_per_4_weeks / 2  # two tests share it
        if self.gap >= s.confirm_s:
            # No confirmation on a slow schedule (below): every upcrossing is an episode, so a
            # smaller share keeps the real rate as far under the budget as confirming does.
            budget /= s.slow_budget_divisor
        if len(level) < s.min_blocks:
            self._keep_or_drop_null()
            return
        per_block = max(1, round(w / self.gap))
        t_level, sd = threshold_of(level, tests, budget, per_block)
        t_runs, t_low = self._runs_bounds(adm, z, k, tests, budget) if k > 1 else (-math.inf, -math.inf)
        t_level = max(t_level, t_runs, math.log1p(s.min_effect))
        # An improvement is judged on the null's lower tail with the same budget: taking noise for
        # one moves the reference down and makes the next ordinary runs a regression, and the
        # lower tail is often the heavier one (a busy server's probes that find it idle).
        t_better = max(threshold_of([-x for x in level], tests, budget, per_block)[0], math.log1p(s.min_effect))
        # The jump statistic: the recent window against the median of the jump_blocks right before it.
        p = s.jump_blocks
        jumps = []
        for i in range(p + k - 1, len(adm)):
            if adm[i][0] - adm[i - p - k + 1][0] <= (p + k) * w * 1.5:
                jump = yk[i] - _median(ys[i - p - k + 1:i - k + 1])
                if weekly:  # what the hour of the week usually adds between the two (window midpoints)
                    jump -= week_change(weekly, (adm[i - k + 1][0] + adm[i][0] + w) / 2, adm[i - k][0] + w / 2,
                                        s.weeks)
                jumps.append(jump)
        t_jump = (max(threshold_of(jumps, tests, budget, per_block)[0], t_low)
                  if len(jumps) >= s.min_blocks else None)
        # The reference: the day before the recent window (its k blocks and the one it overlaps
        # are not part of it, as in the null above).
        recent = [zz for b, zz in zip(adm, z) if now - s.reference_s - w <= b[0] < now - (k + 1) * w]
        ref = _median(recent if len(recent) >= 4 else z)
        self._null = Null(ref, profile, DAY / self._slots(), t_level, _median(level), t_jump, t_runs, t_better,
                          weekly, sd, len(adm), runs, span)

    def _keep_or_drop_null(self) -> None:
        """Too few admitted blocks for a null. During an episode that is the episode's doing (its
        blocks, and those of earlier ones, fill the history): the last null stays, so the alert
        keeps firing and the episode can still end, be accepted, or reach accept_after."""
        if self.since is None:
            self._null = None

    def _against_reference(self, adm: list, z: list, stat: list, blocks: int) -> list:
        """stat (of a window of `blocks` blocks ending at each block) against the reference it had
        then: the median of the day before the window."""
        s, w = self.s, self.w
        out, window, lo = [], [], 0
        for i, b in enumerate(adm):
            j = i - blocks - 1  # the block just before a recent window overlaps it: it is not its reference
            if j >= 0:
                bisect.insort(window, z[j])
            while lo <= j and adm[lo][0] < b[0] - s.reference_s - w:
                del window[bisect.bisect_left(window, z[lo])]
                lo += 1
            # Only against a reference of at least half its span: a shorter one would hide the
            # slow part of the noise (drift, the daily cycle) from the null.
            if i >= blocks - 1 and window and b[0] - adm[lo][0] >= s.reference_s / 2:
                out.append(stat[i] - quick_median(window))
        return out

    def _weekly(self, profile: Optional[list], k: int) -> Optional[dict]:
        """The weekly profile's departures (seasonality.weekly_departures) from every hour the
        series remembers: the blocks older than the history, one median an hour, and the blocks
        of the history but the current episode's (until the profile knew it, a weekly pattern
        paged, and its blocks left the null)."""
        if not self.s.weekly:
            return None
        blocks = [b for b in self.blocks if b[2] != HELD]
        hourly = dict(self.hours)
        if self._fold[0] is not None:
            hourly[self._fold[0]] = _median(self._fold[1])
        return weekly_departures(hourly, blocks, self.w, profile, self.s, k)

    def _runs_bounds(self, adm: list, z: list, k: int, tests: float, budget: float) -> tuple[float, float]:
        """Where a recent window is the median of k runs (a block a run), two floors from the tail
        of single runs against their neighbours (the median of the 3 runs before and the 3 after:
        drift cancels, an odd run does not), as if odd runs came independently:
        - the level that h = k // 2 + 1 of k runs exceed together at most `budget` times in `tests`
          (C(k, h) p^h per window). Rare heavy runs (a burst of load, a Student-t run) put the
          median of 3 over a threshold only when two of them meet, which a week of history shows
          less than once; their single-run tail, seen daily, says how often;
        - how far one run falls below its neighbours at most `budget` times: the jump test compares
          the recent window with the one run before it, and one run that found the server idle
          would make an ordinary window a jump."""
        if len(z) < max(self.s.min_blocks, 7):
            return -math.inf, -math.inf
        odd = [z[i] - _median(z[i - 3:i] + z[i + 1:i + 4]) for i in range(3, len(z) - 3)]
        h = k // 2 + 1
        p = (budget / (tests * math.comb(k, h))) ** (1 / h)
        return threshold_of(odd, 1 / p, 1.0)[0], threshold_of([-x for x in odd], tests, budget)[0]

    def _profile_at(self, null: Null, t: float) -> float:
        daily = profile_value(null.profile, null.slot_s, t) if null.profile else 0.0
        return daily + (week_at(null.weekly, t, self.s.weeks) if null.weekly else 0.0)

    # ---- judging the recent window ----
    def judge(self, now: float, recent_value: float, recent_start: float) -> Verdict:
        """The verdict after a run: recent_value is the recent window's median, which began at recent_start."""
        v = self.verdict
        if self.w is None or not recent_value > 0:
            return v
        if now >= self._next:
            self._refresh(now)
            # Hourly while the history is young; then every 6 hours (7 days of history change
            # little in 6 hours, and a restart replays every refresh).
            step = max(self.w, 3600.0 if self.verdict.history_s < 2 * DAY else 6 * 3600.0)
            self._next = (math.floor(now / step) + 1) * step
        yr = self.sign * math.log(recent_value)
        jump = None
        before = []
        for k in range(len(self.blocks) - 1, -1, -1):
            b = self.blocks[k]
            if b[0] + self.w <= recent_start:
                before.append(b[1])
                before_t = b[0] + self.w / 2
                if len(before) == self.s.jump_blocks:
                    break
        null = self._null
        if len(before) == self.s.jump_blocks:
            jump = yr - _median(before)
            if null is not None and null.weekly:  # what the hour of the week usually adds since then
                jump -= week_change(null.weekly, (recent_start + now) / 2, before_t, self.s.weeks)
        if null is None:
            self._d = None
            v.expected = v.reference = v.threshold = v.noise = v.change = None
            v.firing, v.improvement, v.seasonal, v.weekly = False, 0.0, False, False
            return v
        expected = null.ref + self._profile_at(null, (recent_start + now) / 2)
        d = yr - expected
        self._d = d
        # The episode lasts until the level is back at its reference (the centre of its null).
        t_return = min(max(null.c_level, 0.0), null.t_level / 2)
        if self.since is None:
            # A jump counts where the level is also beyond what two odd runs of three explain.
            by_jump = (jump is not None and null.t_jump is not None and jump > null.t_jump
                       and d > max(math.log1p(self.s.min_effect), t_return, null.t_runs))
            crossing = d > null.t_level or by_jump
            if not crossing:
                self._pending = None
            elif self._pending is None:
                self._pending = (now, recent_start)
            # Confirmed when it has lasted confirm_s; on a schedule slower than that, at once.
            if crossing and (now - self._pending[0] >= self.s.confirm_s or self.gap >= self.s.confirm_s):
                self.since = self._pending[1]
                self._pending = None
                self.cause = "level" if d > null.t_level else "jump"
                for k in range(len(self.blocks) - 1, -1, -1):
                    b = self.blocks[k]
                    if b[0] + self.w <= recent_start:
                        break
                    if b[2] == ADMITTED:
                        b[2] = HELD
            # An improvement beyond the noise that lasts (an hour, and 3 runs) shows for a day on
            # the improvement gauge and never pages. It does not move the reference: the rolling
            # reference takes a real one in within half a day, while noise taken for one would
            # lower the reference at once and make the next ordinary runs a regression.
            if d < -null.t_better:
                if self._better is None:
                    self._better = (now, 0)
                self._better = (self._better[0], self._better[1] + 1)
                if now - self._better[0] >= max(IMPROVEMENT_S, 2 * self.gap) and self._better[1] >= 3:
                    self.improved = (max(self._ratio(-d), self._improvement(now)), now)
            else:
                self._better = None
        elif d <= t_return:
            self._end(EXCLUDED)
        elif now - self.since >= self.s.accept_after_s:
            self.accept()
            return self.judge(now, recent_value, recent_start)
        t = t_return if self.since is not None else null.t_level
        v.expected = math.exp(self.sign * expected)
        v.reference = math.exp(self.sign * null.ref)
        v.threshold = self._ratio(t)
        v.noise = math.expm1(null.spread)
        v.change = self._ratio(d)
        v.firing = self.since is not None
        v.since = self.since
        v.improvement = self._improvement(now)
        v.seasonal = null.profile is not None
        v.weekly = null.weekly is not None
        return v

    def _improvement(self, now: float) -> float:
        """The improvement shown: the largest of the last day, else 0."""
        return self.improved[0] if now - self.improved[1] < DAY else 0.0

    def _ratio(self, x: float) -> float:
        """A log change (worse positive) as the relative change the rule computes."""
        return math.expm1(x) if self.sign > 0 else -math.expm1(-x)

    def _end(self, state: int) -> None:
        for b in self.blocks:
            if b[2] == HELD:
                b[2] = state
        self.since = None

    def accept(self) -> bool:
        """Take the recent level as the new normal: the history moves to it, the episode ends."""
        if self._d is None:
            return False
        d = self._d
        for b in self.blocks:
            if b[2] != HELD:
                b[1] += d
        for h in self.hours:
            self.hours[h] += d
        self._fold = (self._fold[0], [y + d for y in self._fold[1]])
        self._end(ADMITTED)
        self._next = -math.inf
        self._d = 0.0
        return True


def block_seconds(gap: float, recent_s: float, recent_runs: int) -> float:
    """The block: m runs, m the largest number that divides a recent window's runs and fits in
    max(recent, gap). Every block then holds as many runs as every other, and a recent window is a
    whole number of blocks, so the statistic measured over the history is the one judged: 15 min of
    a 1-minute schedule (k = 1), or one run of a 10-minute or an hourly one (k = 3). Blocks of
    15 minutes on a 10-minute schedule held 1 and 2 runs in turn, and a median of 2 such blocks
    missed how often two runs of three under a burst move the recent median."""
    runs = max(recent_runs, math.floor(recent_s / gap + 1e-9))
    fit = max(1, math.floor(max(recent_s, gap) / gap + 1e-9))
    m = max(d for d in range(1, min(runs, fit) + 1) if runs % d == 0)
    return float(max(60, round(m * gap)))
