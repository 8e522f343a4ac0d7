"""Live statistics after a restart: the state rebuilt by replaying the results file.

The runs, and the acceptances of a new level, are replayed in the order of their times exactly
as the live path met them, streamed (memory holds the state, never the file), as far back as
the longest history a scenario needs; older records are skipped by a binary search on the file's
times. The key space and each scenario's settings are in place first, so only the current
config's cases are rebuilt, with their own settings.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .keyspace import CASE
from .results import Acceptance, iter_lines, parse_acceptance_line, parse_results_line, results_file_parts

if TYPE_CHECKING:
    from .live_stats import LiveCase, LiveStats

log = logging.getLogger(__name__)

# The rebuild streams the file, so this bounds the time it takes, not memory: 4 weeks of
# scenarios/default.yaml on 10 targets are about 1.6 GB.
REBUILD_MAX_BYTES = 4 << 30


@dataclass
class RebuildStats:
    records: int
    runs: int
    series: int
    bytes_read: int
    seconds: float


def rebuild(live: "LiveStats", path: str | os.PathLike, max_bytes: int = REBUILD_MAX_BYTES) -> RebuildStats:
    """Rebuild the state from the results file, and its rotated files as far back as span()
    reaches, reading at most max_bytes in all: the runs, and the acceptances, replayed in the
    order of their times exactly as the live path met them, streamed (memory holds the state,
    never the file). configure() and the key space first: each scenario's settings apply, and
    only the current config's cases are rebuilt."""
    began = time.monotonic()
    path = Path(path)
    span = live.span()
    parts: list[tuple[Path, int]] = []
    read = 0
    newest = None
    try:
        for part in results_file_parts(path):
            if part == path and not part.exists():
                continue  # a first start, or between a rotation and the next record: nothing to read yet
            size = part.stat().st_size
            if newest is None:
                newest = _last_time(part)
            start = max(size - (max_bytes - read), 0)
            if newest is not None:  # skip what is older than the span (an hour of margin)
                start = max(start, _offset_of(part, newest - span - 3600))
            parts.append((part, start))
            read += size - start
            first = _first_time(part, start)
            if read >= max_bytes or (newest is not None and first is not None and newest - first >= span):
                break
    except OSError as exc:
        # The exporter starts anyway; the history builds up again from new runs.
        log.error("cannot rebuild live statistics from %s: %s", path, exc)
        parts = []
    oldest = (newest - span) if newest is not None else -math.inf
    runs: dict[str, list] = {}
    accepts: list[Acceptance] = []
    records = kept = 0
    touched: set = set()
    latest = -math.inf

    def close(upto: float) -> None:
        nonlocal kept
        accepts.sort(key=lambda a: a.at)
        ready = sorted((p for p in runs.values() if p[0] < upto), key=lambda p: p[0])
        for pending in ready:
            while accepts and accepts[0].at <= pending[0]:
                live.accept(accepts.pop(0), publish=False)
            if pending[0] >= oldest:
                touched.update(live._finish(pending, pending[0], publish=False))
                kept += 1
        for pending in ready:
            runs.pop(pending[2], None)
        while accepts and accepts[0].at < upto:
            live.accept(accepts.pop(0), publish=False)

    try:
        for part, start in reversed(parts):
            for n, line in enumerate(iter_lines(part, start)):
                a = parse_acceptance_line(line)
                if a is not None:
                    accepts.append(a)
                    continue
                r = parse_results_line(line)
                if r is None:
                    continue
                records += 1
                latest = max(latest, r.ended_at)
                if r.ok and r.run_id:
                    if r.run_id not in runs:
                        runs[r.run_id] = [r.ended_at, {}, r.run_id]
                    live._collect(r, runs)
                if n % 4096 == 4095:
                    # A run's records are near each other in the file: an hour behind
                    # the newest record, every run has all of its records.
                    close(latest - 3600)
    except OSError as exc:
        log.error("cannot rebuild live statistics from %s: %s", path, exc)
    close(math.inf)

    def publish(state: LiveCase, ctx) -> None:
        for sub in state.series:
            live._republish(state, sub)

    series_count = 0
    for key in touched:
        live.store.update(CASE, key, live.PART, publish)
        series_count += live.store.read(CASE, key, live.PART, lambda state, ctx: len(state.series)) or 0
    stats = RebuildStats(records, kept, series_count, read, time.monotonic() - began)
    log.info(
        "live statistics rebuilt from %s: %d records, %d runs, %d series (%.1f MB read, %.2fs)",
        path, stats.records, stats.runs, stats.series, stats.bytes_read / 1e6, stats.seconds,
    )
    return stats


def _first_time(part: Path, start: int) -> Optional[float]:
    for line in iter_lines(part, start):
        r = parse_results_line(line)
        if r is not None:
            return r.ended_at
    return None


def _offset_of(part: Path, t: float) -> int:
    """A byte offset of the file before which every record ended before t (records are appended
    in time order; binary search on the lines found after a few offsets)."""
    lo, hi = 0, part.stat().st_size
    with open(part, "rb") as f:
        while hi - lo > 1 << 16:
            mid = (lo + hi) // 2
            f.seek(mid)
            f.readline()
            r = parse_results_line(f.readline())
            if r is not None and r.ended_at < t:
                lo = mid
            else:
                hi = mid
    return lo


def _last_time(part: Path) -> Optional[float]:
    size = part.stat().st_size
    with open(part, "rb") as f:
        f.seek(max(size - (1 << 20), 0))
        lines = f.read().split(b"\n")
    for line in reversed(lines[1:] if size > (1 << 20) else lines):
        r = parse_results_line(line)
        if r is not None:
            return r.ended_at
    return None
