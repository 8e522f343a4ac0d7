"""The /metrics body, rendered in the background when the numbers change.

prometheus_client formats every sample in Python, about 12 us each: a config with
500 scenario/case combinations has ~125,000 series and takes 1.5 s to render. The
numbers only change when a probe or a server poll ends, so the exporter renders
then, off the scrape path, and every scrape gets the last rendering at once.
Renders are spaced by at least ten times the last render's duration (and at least
a second), so a large config does not keep a core busy rendering while it probes.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from typing import Optional

from prometheus_client import CollectorRegistry, generate_latest

from .sinks import Sink

log = logging.getLogger(__name__)
MIN_INTERVAL_S = 1.0
SPACING_FACTOR = 10.0


class CachedExposition(Sink):
    """Also a sink: every record changes the numbers, so each one asks for a new rendering."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._lock = threading.Lock()
        self._body: Optional[bytes] = None
        self._gzipped: Optional[bytes] = None
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self.render_seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name="exposition", daemon=True)
        self._thread.start()

    def invalidate(self) -> None:
        """Something changed: render again soon."""
        self._dirty.set()

    def on_result(self, result) -> None:
        self.invalidate()

    on_batch = on_run = on_result

    def render(self) -> bytes:
        t0 = time.perf_counter()
        body = generate_latest(self.registry)
        zipped = gzip.compress(body, compresslevel=1)
        with self._lock:
            self._body, self._gzipped = body, zipped
        self.render_seconds = time.perf_counter() - t0
        return body

    def get(self, gzipped: bool = False) -> bytes:
        with self._lock:
            body, zipped = self._body, self._gzipped
        if body is None:
            self.render()
            return self.get(gzipped)
        return zipped if gzipped else body

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                self.render()
            except Exception:  # a collector bug must not end the renderer
                log.exception("rendering /metrics failed")
            self._stop.wait(max(MIN_INTERVAL_S, SPACING_FACTOR * self.render_seconds))

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()
