"""The regression detector (exporter/regression.py) on simulated runs: counts and detections, no clock."""

import math
import random
from statistics import median

import pytest

from exporter.regression import Detector, Settings, block_seconds
from exporter.thresholds import spread, threshold_of, z_for

T0 = 1_780_000_000.0
DAY = 86400.0


def drive(det, minutes, level, rng, start=0, every=60, window=15, noise=0.05, history=None):
    """A run every `every` seconds with one request: value = level(t) x lognormal noise.
    Returns the minutes (from T0) at which the detector's episode was on."""
    history = history if history is not None else []
    on = []
    for i in range(start, start + minutes * 60 // every):
        t = T0 + i * every
        v = level(t) * math.exp(rng.gauss(0, noise))
        history.append((t, v))
        det.add_run(t, v)
        recent = history[-max(window * 60 // every, 3):]
        verdict = det.judge(t, median(v for _, v in recent), recent[0][0])
        if verdict.firing:
            on.append((t - T0) / 60)
    return on


def test_z_for_follows_budget_tests_and_correlation():
    assert z_for(2688, 0.0, 0.25) > z_for(2688, 0.0, 1.0) > z_for(224, 0.0, 1.0)
    # Correlated values cross a level less often than independent ones: a lower z does.
    assert z_for(2688, 0.9, 0.25) < z_for(2688, 0.0, 0.25)
    assert 3.5 < z_for(2688, 0.0, 0.25) < 4.0


def test_spread_is_robust_and_consistent_for_normal_data():
    rng = random.Random(1)
    xs = [rng.gauss(0, 1) for _ in range(4000)]
    c, sd = spread(xs)
    assert abs(c) < 0.1 and sd == pytest.approx(1.0, rel=0.05)
    c2, sd2 = spread(xs + [50.0] * 100)  # 2.5 % of outliers move it little
    assert sd2 == pytest.approx(sd, rel=0.15)


def test_threshold_widens_for_heavy_tails_and_autocorrelation():
    rng = random.Random(2)
    normal = [rng.gauss(0, 1) for _ in range(600)]
    heavy = [x + (rng.expovariate(0.5) if rng.random() < 0.08 else 0.0) for x in normal]
    x, drifting = 0.0, []
    for _ in range(600):
        x = 0.9 * x + math.sqrt(1 - 0.81) * rng.gauss(0, 1)
        drifting.append(x)
    t_normal = threshold_of(normal, 2688, 0.25)[0]
    assert threshold_of(heavy, 2688, 0.25)[0] > 1.2 * t_normal
    # Drifting values: fewer independent blocks to know the spread from, so a wider margin per sd.
    t_drift, sd_drift = threshold_of(drifting, 2688, 0.25)
    assert t_drift / sd_drift > t_normal / spread(normal)[1]


def test_regressions_missed_in_the_history_do_not_raise_the_tail():
    # Hourly 3-run medians: 5 regressions of 6 hours the detector missed, 4 spreads high, are
    # sustained shifts, not a heavy tail; odd single values 5 spreads high (an odd run) are.
    rng = random.Random(4)
    normal = [rng.gauss(0, 1) for _ in range(672)]
    missed = list(normal)
    for start in (100, 230, 360, 490, 600):
        for i in range(start, start + 8):
            missed[i] += 4.0
    odd = [x + (rng.expovariate(0.4) if rng.random() < 0.06 else 0.0) for x in normal]
    t_normal = threshold_of(normal, 672, 0.08)[0]
    assert threshold_of(missed, 672, 0.08)[0] < 1.15 * t_normal
    assert threshold_of(odd, 672, 0.08)[0] > 1.3 * t_normal


def test_a_step_fires_holds_for_days_and_ends_when_accepted():
    rng = random.Random(3)
    det = Detector(Settings())
    hist = []
    step_at = T0 + 2 * DAY
    on = drive(det, 5 * 1440, lambda t: 1.0 if t < step_at else 1.5, rng, history=hist)
    assert on, "a +50% step must fire"
    first = on[0] - 2 * 1440
    assert 0 < first <= 30  # minutes after the step
    # Quiet before the step; then firing without a break for the 3 days since.
    assert all(m >= 2 * 1440 for m in on)
    assert len(on) >= (5 * 1440 - on[0]) - 1
    assert det.verdict.firing and det.verdict.since is not None
    assert det.verdict.reference == pytest.approx(1.0, rel=0.05)
    assert det.accept()
    on = drive(det, 1440, lambda t: 1.5, rng, start=5 * 1440, history=hist)
    assert not on and not det.verdict.firing
    assert det.verdict.reference == pytest.approx(1.5, rel=0.05)


def test_an_episode_ends_when_the_level_is_back_and_accept_after_moves_the_reference():
    rng = random.Random(4)
    det = Detector(Settings(accept_after_s=DAY))
    hist = []
    a, b = T0 + 2 * DAY, T0 + 2 * DAY + 6 * 3600
    on = drive(det, 3 * 1440, lambda t: 1.5 if a <= t < b else 1.0, rng, history=hist)
    assert on and max(on) < (b - T0) / 60 + 30  # back to normal: it stops
    # A step that lasts past accept_after (1 day here) becomes the new normal.
    c = T0 + 3 * DAY
    on = drive(det, 3 * 1440, lambda t: 1.4, rng, start=3 * 1440, history=hist)
    assert on and (c - T0) / 60 <= on[0] <= (c - T0) / 60 + 30
    assert (c - T0) / 60 + 1430 <= max(on) <= (c - T0) / 60 + 1500
    assert det.verdict.reference == pytest.approx(1.4, rel=0.05)


def test_improvement_shows_and_never_fires():
    rng = random.Random(5)
    det = Detector(Settings())
    level = lambda t: 1.0 if t < T0 + 2 * DAY else 0.6  # noqa: E731
    history: list = []
    on = drive(det, 2 * 1440 + 120, level, rng, noise=0.03, history=history)
    assert not on
    assert det.verdict.improvement > 0.3  # shown once it has lasted an hour
    assert det.verdict.reference == pytest.approx(1.0, rel=0.05)  # not taken at once: it may be noise
    # The rolling reference takes a lasting one in within a day; a day later it no longer shows.
    on = drive(det, 1440, level, rng, start=2 * 1440 + 120, noise=0.03, history=history)
    assert det.verdict.reference == pytest.approx(0.6, rel=0.05)
    on += drive(det, 1440, level, rng, start=3 * 1440 + 120, noise=0.03, history=history)
    assert not on
    assert det.verdict.improvement == 0


def test_noise_taken_for_an_improvement_does_not_make_the_next_runs_a_regression():
    # A busy server whose probes now and then find it idle: a heavy lower tail, for hours at a time.
    rng = random.Random(11)
    det = Detector(Settings())
    idle = [int(rng.uniform(24, 27 * 24)) for _ in range(6)]  # hours at which 4 idle hours begin
    on = drive(det, 28 * 1440, lambda t: 0.8 if any(0 <= (t - T0) / 3600 - h < 4 for h in idle) else 1.0, rng,
               every=3600, window=180, noise=0.02)
    assert not on


def test_a_block_holds_whole_runs_and_a_recent_window_whole_blocks():
    # (interval, block seconds): 60 or 15 runs or 3 in 15 minutes; 7 runs of 2 minutes (a recent
    # window of 15 minutes holds 7 or 8); one run of a 10-minute, 30-minute or hourly schedule,
    # whose recent window is 3 runs. 15-minute blocks held 1 and 2 runs of 10 minutes in turn.
    for every, block in ((15, 900), (60, 900), (120, 840), (300, 900), (600, 600), (1800, 1800), (3600, 3600)):
        assert block_seconds(every, 900, 3) == block, every
    det = Detector(Settings())
    drive(det, 60, lambda t: 1.0, random.Random(1), every=600)
    assert det.w == 600 and det._k() == 3


def test_two_odd_runs_in_a_median_of_three_are_not_a_regression():
    # A 10-minute schedule whose runs now and then (1 in 40) meet a burst of load, +40 %. The
    # recent window is the median of 3 runs, so it takes two of them within 3 runs to lift it:
    # a week of history holds that about once, too rarely to see in the window's own history, but
    # the single runs' tail, seen daily, says how often it happens. Then a real +70 % step fires.
    odd = set(range(20, 8 * 144, 40)) | {8 * 144 + 5, 8 * 144 + 6}
    level = lambda t: (1.7 if t >= T0 + 9 * DAY else 1.4 if round((t - T0) / 600) in odd else 1.0)  # noqa: E731
    det = Detector(Settings())
    history: list = []
    on = drive(det, 9 * 1440, level, random.Random(14), every=600, noise=0.04, history=history)
    assert not on
    assert det.verdict.threshold > 0.3
    on = drive(det, 120, level, random.Random(13), start=9 * 144, every=600, noise=0.04, history=history)
    assert on and on[0] - 9 * 1440 <= 30


def test_a_daily_cycle_is_followed_only_where_the_history_shows_one():
    def cycle(t):
        return 1 + 0.15 * math.sin(2 * math.pi * (t % DAY) / DAY)

    rng = random.Random(6)
    seasonal = Detector(Settings())
    on = drive(seasonal, 5 * 1440, cycle, rng)
    assert seasonal.verdict.seasonal and not on
    flat = Detector(Settings())
    drive(flat, 5 * 1440, lambda t: 1.0, rng)
    assert not flat.verdict.seasonal
    off = Detector(Settings(seasonality="off"))
    drive(off, 5 * 1440, cycle, rng)
    assert not off.verdict.seasonal
    # Too short a history: no profile yet, and the gauge of its span says so.
    young = Detector(Settings())
    drive(young, 1440, cycle, rng)
    assert not young.verdict.seasonal and young.verdict.history_s < 1.1 * DAY


def test_tokens_per_second_lower_is_worse():
    rng = random.Random(7)
    det = Detector(Settings(), higher_is_worse=False)
    on = drive(det, 3 * 1440, lambda t: 40.0 if t < T0 + 2 * DAY else 28.0, rng)
    assert on and on[0] - 2 * 1440 <= 30
    assert det.verdict.change == pytest.approx(0.3, abs=0.05)  # 30 % fewer tokens/s


def weekend(t):
    """Saturdays and Sundays (UTC) 20 % faster (1970-01-01 was a Thursday)."""
    return 0.8 if (int(t // DAY) + 3) % 7 >= 5 else 1.0


def starts(on, every_min=5):
    return [m for i, m in enumerate(on) if i == 0 or m - on[i - 1] > every_min]


def test_a_weekly_pattern_is_learnt_and_a_regression_on_its_monday_still_pages():
    rng = random.Random(8)
    days = 28
    # Without a weekly profile every Monday is 25 % slower than the Sunday before it.
    daily = Detector(Settings(seasonality="daily"))
    assert len(starts(drive(daily, days * 1440, weekend, rng, every=300))) >= 3
    assert not daily.verdict.weekly
    # With one, only the first Monday pages: no weekend had been seen before it.
    det = Detector(Settings())
    history = []
    on = drive(det, days * 1440, weekend, rng, every=300, history=history)
    assert det.verdict.weekly and not det.verdict.firing
    assert all(m < 8 * 1440 for m in starts(on)), starts(on)
    # A regression that lands with the weekly rise, at Monday 00:00, still pages at once.
    monday = (math.floor((T0 + days * DAY) / DAY) + (7 - (math.floor((T0 + days * DAY) / DAY) + 3) % 7)) * DAY
    first = int((monday - T0) // 300)
    drive(det, int(monday - T0) // 60 - days * 1440, weekend, rng, start=days * 1440 // 5, every=300, history=history)
    on = drive(det, 6 * 60, lambda t: 1.3 * weekend(t), rng, start=first, every=300, history=history)
    assert on and on[0] - (monday - T0) / 60 <= 30
    # Settings that never follow a week: a flat series gets no weekly profile.
    flat = Detector(Settings())
    drive(flat, 21 * 1440, lambda t: 1.0, rng, every=300)
    assert not flat.verdict.weekly


def test_office_hours_on_weekdays_stop_paging_once_weeks_of_them_are_known():
    def office(t):  # Monday to Friday, 9:00 to 17:00 UTC, 30 % slower
        return 1.3 if (int(t // DAY) + 3) % 7 < 5 and 9 <= (t % DAY) / 3600 < 17 else 1.0

    rng = random.Random(9)
    det = Detector(Settings())
    on = drive(det, 28 * 1440, office, rng, every=300)
    # The first weekdays page: no cycle is known yet. Once weeks of them are, none does.
    assert det.verdict.weekly and [m for m in starts(on) if m >= 14 * 1440] == []


def test_a_regression_longer_than_the_history_is_still_accepted_after_accept_after():
    # The episode's blocks fill the 7-day history before accept_after (7 days) has passed: the
    # detector must keep judging (and accept) instead of losing its null and its gauges.
    rng = random.Random(10)
    det = Detector(Settings())
    on = drive(det, 12 * 1440, lambda t: 1.0 if t < T0 + 3 * DAY else 1.5, rng, every=300)
    assert on and on[0] - 3 * 1440 <= 30
    assert not det.verdict.firing and det.verdict.threshold is not None
    assert det.verdict.reference == pytest.approx(1.5, rel=0.05)
