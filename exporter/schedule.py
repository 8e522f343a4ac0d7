"""When a scenario runs: its APScheduler trigger and the longest wait between two runs.

Kept apart from scheduler.py so that metrics (which needs the gap for the runs-stopped alert)
does not import the job machinery; APScheduler's triggers are imported only when asked for.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .config import Scenario


def trigger_for(scenario: Scenario) -> Any:
    """The APScheduler trigger of a scenario's interval or crontab (in UTC)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if scenario.interval is not None:
        return IntervalTrigger(seconds=scenario.interval, timezone=timezone.utc)
    return CronTrigger.from_crontab(scenario.cron, timezone=timezone.utc)


def longest_gap_s(scenario: Scenario, now: Optional[datetime] = None,
                  horizon: timedelta = timedelta(days=7)) -> float:
    """The longest wait between two consecutive runs: the interval, or for a cron schedule the
    widest gap between its fire times over the next week (a weekday-only cron has a weekend gap).

    The runs-stopped alert waits a couple of these before it calls a scenario stuck.
    """
    if scenario.interval is not None:
        return float(scenario.interval)
    trigger = trigger_for(scenario)
    now = now or datetime.now(timezone.utc)
    end = now + horizon
    previous = trigger.get_next_fire_time(None, now)
    longest = 0.0
    while previous is not None:
        nxt = trigger.get_next_fire_time(previous, previous + timedelta(microseconds=1))
        if nxt is None:
            break
        longest = max(longest, (nxt - previous).total_seconds())
        if nxt > end:
            break
        previous = nxt
    return longest or horizon.total_seconds()
