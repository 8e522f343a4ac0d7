"""APScheduler jobs: one per (scenario, target), plus the server-stats poller."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .config import Config, Scenario, Target
from .runner import ScenarioRunner
from .schedule import trigger_for
from .sinks import Sink

log = logging.getLogger(__name__)
STATS_JOB = "server-stats"


def job_id(scenario: Scenario, target: Target) -> str:
    return f"probe:{scenario.name}@{target.name}"


class ProbeScheduler:
    """Runs every scenario once at start-up, then on its schedule.

    `max_instances=1` plus coalescing means an overrun skips the next run (and
    counts it) instead of piling runs up. Runs against the same target are
    serialised by a per-target lock: two scenarios decoding at once on one CPU
    would each measure the other's load.
    """

    def __init__(
        self,
        sinks: Iterable[Sink],
        on_skipped: Callable[[str, str], None],
        poll_all: Callable[[], None],
        poll_target: Callable[[Target], None] = lambda target: None,
    ):
        self.sinks = list(sinks)
        self.on_skipped = on_skipped
        self.poll_all = poll_all
        self.poll_target = poll_target
        self.stop = threading.Event()
        self._target_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._jobs: dict[str, tuple[str, str]] = {}
        self._keys: dict[str, tuple] = {}
        self._active = 0
        self._active_cond = threading.Condition()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=32)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=timezone.utc,
        )
        self._scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED | EVENT_JOB_ERROR)

    def _on_event(self, event: JobExecutionEvent) -> None:
        labels = self._jobs.get(event.job_id)
        if event.code == EVENT_JOB_ERROR:
            log.error("job %s failed: %r", event.job_id, event.exception)
            return
        if labels is not None:
            log.warning("scenario %s on target %s: previous run still going, this run is skipped", labels[1], labels[0])
            self.on_skipped(*labels)

    def _run(self, scenario: Scenario, target: Target) -> None:
        if self.stop.is_set():
            return
        with self._active_cond:
            self._active += 1
        try:
            with self._target_locks[target.name]:
                if self.stop.is_set():
                    return
                log.info("run start: scenario=%s target=%s", scenario.name, target.name)
                summary = ScenarioRunner(scenario, target, self.sinks, stop=self.stop).run()
                log.info(
                    "run end: scenario=%s target=%s requests=%d failures=%d took %.2fs",
                    scenario.name, target.name, summary.requests, summary.failures, summary.duration_s,
                )
            # Refresh this target's loaded models and process stats now, while the run's model is
            # still resident. Only this target: the all-target poll is the stats job's, so a run
            # never waits on another server.
            self.poll_target(target)
        finally:
            with self._active_cond:
                self._active -= 1
                self._active_cond.notify_all()

    def apply(self, config: Config) -> None:
        """Make the jobs those of `config`; runs in progress finish with the old config.

        A job whose scenario and target are unchanged keeps its schedule, so a target file
        that changes often does not re-run the whole fleet; new or changed jobs run at once.
        """
        now = datetime.now(timezone.utc)
        jobs: dict[str, tuple[str, str]] = {}
        keys: dict[str, tuple] = {}
        existing = {job.id: job for job in self._scheduler.get_jobs()}
        for scenario in config.scenarios:
            trigger = trigger_for(scenario)
            # Which targets a scenario has does not change what runs on one of them.
            same_run = replace(scenario, targets=())
            for target in scenario.targets:
                jid = job_id(scenario, target)
                jobs[jid] = (target.name, scenario.name)
                keys[jid] = (same_run, target)
                job = existing.pop(jid, None)
                if job is not None and self._keys.get(jid) == keys[jid]:
                    continue
                if job is not None:
                    job.remove()
                self._scheduler.add_job(
                    self._run, trigger, args=(scenario, target), id=jid, name=jid, next_run_time=now
                )
        for job in existing.values():
            job.remove()
        self._scheduler.add_job(
            self.poll_all,
            IntervalTrigger(seconds=config.server_stats_interval, timezone=timezone.utc),
            id=STATS_JOB, name=STATS_JOB, next_run_time=now,
        )
        self._jobs = jobs
        self._keys = keys

    def start(self) -> None:
        self._scheduler.start()

    @property
    def running(self) -> bool:
        return self._scheduler.running

    def shutdown(self, grace: float = 10.0) -> bool:
        """Stop scheduling, let in-flight runs finish their current request; True if all ended in time."""
        self.stop.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        with self._active_cond:
            return self._active_cond.wait_for(lambda: self._active == 0, timeout=grace)

    @property
    def active_runs(self) -> int:
        """Runs in progress (or waiting for their target's lock)."""
        with self._active_cond:
            return self._active

    def next_runs(self) -> dict[str, Optional[datetime]]:
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}
