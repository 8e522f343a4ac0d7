"""Where records go: the sink base, the one fan-out, and the results-file sink.

A sink takes the three kinds of record the runner produces (ProbeResult per
request, BatchSummary per batch, RunSummary per run) and ignores the kinds it
does not need. A failing sink is logged and skipped: one broken view must not
stop the probe or the other views.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

from prometheus_client import Counter

from .results import BatchSummary, ProbeResult, ResultsWriter, RunSummary

log = logging.getLogger(__name__)


class Sink:
    """Override the methods for the records you use; the rest do nothing."""

    def on_result(self, result: ProbeResult) -> None:
        pass

    def on_batch(self, batch: BatchSummary) -> None:
        pass

    def on_run(self, run: RunSummary) -> None:
        pass


class FanOut(Sink):
    """Hands each record to every sink in order; a sink that raises is logged, never propagated."""

    def __init__(self, sinks: Iterable[Sink] = ()):
        self.sinks = list(sinks)

    def _deliver(self, method: str, record) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(record)
            except Exception:
                log.exception("sink %r failed in %s", sink, method)

    def on_result(self, result: ProbeResult) -> None:
        self._deliver("on_result", result)

    def on_batch(self, batch: BatchSummary) -> None:
        self._deliver("on_batch", batch)

    def on_run(self, run: RunSummary) -> None:
        self._deliver("on_run", run)


class ResultsFileSink(Sink):
    """Appends every result record to the results file; optionally counts lines and failed writes."""

    def __init__(self, writer: ResultsWriter, lines: Optional[Counter] = None, errors: Optional[Counter] = None):
        self.writer = writer
        self._lines = lines
        self._errors = errors

    def on_result(self, result: ProbeResult) -> None:
        counter = self._lines if self.writer.write(result) else self._errors
        if counter is not None:
            counter.inc()
