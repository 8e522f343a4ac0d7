"""The /metrics body, rendered in the background when the numbers change.

Two sources: the state store (every probe and server series; state.py renders only the
keys that changed since the last rendering and joins cached text for the rest) and a small
prometheus_client registry for the exporter's own health (reloads, results file, target
files). The numbers only change when a probe or a server poll ends, so the exporter renders
then, off the scrape path, and every scrape gets the last rendering at once. Renders are
spaced by at least ten times the last render's duration (and at least a second), so a large
config does not keep a core busy rendering while it probes.

The body stays a list of per-family byte strings, and gzip runs over it piece by piece, on
the first scrape that asks for it: zlib releases the GIL while it compresses, a join of the
whole body would not.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import Optional

from prometheus_client import CollectorRegistry, generate_latest

from .sinks import Sink
from .state import StateStore

log = logging.getLogger(__name__)
MIN_INTERVAL_S = 1.0
SPACING_FACTOR = 10.0


class CachedExposition(Sink):
    """Also a sink: every record changes the numbers, so each one asks for a new rendering."""

    def __init__(self, registry: CollectorRegistry, store: Optional[StateStore] = None):
        self.registry = registry
        self.store = store
        self._lock = threading.Lock()
        self._gzip_lock = threading.Lock()
        self._chunks: Optional[list[bytes]] = None
        self._gzipped: Optional[list[bytes]] = None
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

    def render_chunks(self) -> list[bytes]:
        t0 = time.perf_counter()
        chunks = self.store.render_chunks() if self.store is not None else []
        chunks.append(generate_latest(self.registry))
        with self._lock:
            self._chunks, self._gzipped = chunks, None
        self.render_seconds = time.perf_counter() - t0
        return chunks

    def render(self) -> bytes:
        return b"".join(self.render_chunks())

    def get_chunks(self, gzipped: bool = False) -> list[bytes]:
        with self._lock:
            chunks, zipped = self._chunks, self._gzipped
        if chunks is None:
            chunks = self.render_chunks()
        if not gzipped:
            return chunks
        if zipped is None:
            with self._gzip_lock:
                with self._lock:
                    zipped = self._gzipped if self._chunks is chunks else None
                if zipped is None:
                    zipped = _gzip(chunks)
                    with self._lock:
                        if self._chunks is chunks:
                            self._gzipped = zipped
        return zipped

    def get(self, gzipped: bool = False) -> bytes:
        return b"".join(self.get_chunks(gzipped))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                self.render_chunks()
            except Exception:  # a collector bug must not end the renderer
                log.exception("rendering /metrics failed")
            self._stop.wait(max(MIN_INTERVAL_S, SPACING_FACTOR * self.render_seconds))

    def close(self) -> None:
        self._stop.set()
        self._dirty.set()


def _gzip(chunks: list[bytes]) -> list[bytes]:
    # wbits 31: a gzip member; level 1, as the bytes matter less than the exporter's CPU.
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    out = [z.compress(c) for c in chunks]
    out.append(z.flush())
    return [c for c in out if c]
