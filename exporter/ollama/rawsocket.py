"""The raw-socket reader: the default for plain HTTP.

It parses the status line, headers and chunked body itself (framing.py), and on
Linux asks the kernel to stamp every received segment (SO_TIMESTAMPNS), waiting
inside recvmsg() so that each segment is taken off the socket with its own stamp
as soon as it arrives. A chunk's `received` time is therefore when its bytes
reached this host, not when a Python thread got around to reading them: neither
a busy GIL (many concurrent probes, a /metrics render) nor a slow wake-up of the
reading thread adds to TTFT or to the gaps between tokens. A thread that wakes so late
that the next chunk arrived too finds both merged under the later stamp: each body item
is one whole read, and transport.ndjson_chunks marks and re-times the earlier lines
(readtimes.py). Without kernel stamps
(other systems, or a stamp that fails its sanity check) the time is taken right
after the read returns, before any parsing. benchmarks/probe_bench.py measures
both readers.
"""

from __future__ import annotations

import socket
import time
from typing import Iterator, Optional

from . import stamps_linux as stamps
from .endpoint import Endpoint
from .errors import OllamaError
from .framing import BodyDecoder, HeadError, HeadReader
from .transport import READ_SIZE

# Blocking reads wait in slices this long: the kernel's timer wheel is coarse for long
# timeouts (a 2.5 s SO_RCVTIMEO can fire 100 ms late), and short ones bound the overshoot.
WAIT_SLICE = 0.05


class RawSocketTransport:
    name = "raw"

    def __init__(self, recover: bool = True):
        # False: late lines are only marked, keeping the read's time (the benchmark's baseline).
        self.recover = recover

    def connect(self, endpoint: Endpoint, timeout: float) -> socket.socket:
        if endpoint.https:
            raise ValueError("the raw-socket reader speaks plain HTTP only")
        stamps.keep_receive_stamps_on()
        sock = endpoint.connect(timeout)
        stamps.ask_for_stamps(sock)
        return sock

    def response(self, sock: socket.socket, deadline: float, where: str) -> "RawResponse":
        response = RawResponse(sock, deadline, where)
        response.recover = self.recover
        return response


class RawResponse:
    """An HTTP/1.1 response read straight from the socket, each read stamped with its arrival time.

    On Linux the socket blocks in recvmsg() itself (SO_RCVTIMEO bounds the wait) rather
    than in poll() followed by a read: the read completes, and so takes the segment off
    the queue with its own stamp, as soon as the scheduler runs this thread, whether or
    not it can get the GIL then. That matters: a segment left waiting in the socket is
    merged with the next one to arrive, and the merged data keeps only the later stamp.
    On a busy host the thread can still wake too late; each body item is one read, so
    the lines of such a read are told apart (`whole_reads`, readtimes.py).
    """

    whole_reads = True
    recover = True

    def __init__(self, sock: socket.socket, deadline: float, where: str):
        self.sock = sock
        self.deadline = deadline
        self.where = where
        self.stamped = stamps.SO_TIMESTAMPNS is not None
        # Nothing of the answer can arrive before the request starts to go out: stamps
        # earlier than this (the request's send, the previous read) are not believed.
        self.floor = time.monotonic()
        self.decoder: Optional[BodyDecoder] = None  # set by read_head
        self.pending = b""  # body bytes that came with the head
        self.pending_received = 0.0
        self._slice = WAIT_SLICE  # the SO_RCVTIMEO in force, in blocking mode

    def _blocking_reads(self) -> None:
        """Switch the socket to reads that wait in the kernel, in SO_RCVTIMEO slices (Linux)."""
        if self.stamped:
            self.sock.settimeout(None)
            self._set_slice(WAIT_SLICE)

    def _set_slice(self, seconds: float) -> None:
        stamps.set_receive_timeout(self.sock, seconds)
        self._slice = seconds

    def _stamp(self, ancillary, now_ns: int) -> float:
        received = now_ns * 1e-9
        stamp = stamps.kernel_stamp(ancillary, now_ns) if ancillary else None
        # Sanity: not in the future, not before the request went out or the previous
        # read (beyond the jitter of the clock conversion); else the read's own time.
        if stamp is not None and self.floor - 0.001 <= stamp <= received:
            received = stamp
        if received < self.floor:
            received = self.floor
        self.floor = received
        return received

    def _recv(self, timeout_message: str) -> tuple[bytes, float]:
        """One read -> (data, arrival time on the monotonic clock)."""
        sock = self.sock
        blocking = sock.gettimeout() is None
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise OllamaError("timeout", timeout_message)
            try:
                if not blocking:
                    sock.settimeout(remaining)
                elif remaining < self._slice:
                    self._set_slice(remaining)  # the last slice ends at the deadline
                if self.stamped:
                    data, ancillary, _flags, _addr = sock.recvmsg(READ_SIZE, stamps.ANCILLARY_SIZE)
                else:
                    data, ancillary = sock.recv(READ_SIZE), []
                now_ns = time.monotonic_ns()
            except BlockingIOError:  # a slice of SO_RCVTIMEO passed without data
                continue
            except socket.timeout:
                raise OllamaError("timeout", timeout_message) from None
            except OSError as exc:
                raise OllamaError("stream_error", f"stream broke: {exc!r}") from None
            return data, self._stamp(ancillary, now_ns)

    def read_head(self) -> int:
        self._blocking_reads()
        message = f"no response from {self.where} within the timeout"
        reader = HeadReader()
        while True:
            try:
                data, self.pending_received = self._recv(message)
            except OllamaError as exc:
                if exc.reason == "stream_error":
                    raise OllamaError("connection", f"request to {self.where} failed: {exc.message}") from None
                raise
            if not data:
                raise OllamaError(
                    "connection",
                    f"request to {self.where} failed: "
                    "RemoteDisconnected('Remote end closed connection without response')",
                )
            try:
                done = reader.feed(data)
            except HeadError as exc:
                raise OllamaError("connection", f"request to {self.where} failed: {exc}") from None
            if done is not None:
                head, self.pending = done
                self.decoder = BodyDecoder(head)
                return head.status

    def body(self, timeout_message: str) -> Iterator[tuple[bytes, float]]:
        decoder = self.decoder
        assert decoder is not None, "body() is called after read_head"
        data, received = self.pending, self.pending_received
        self.pending = b""
        while not decoder.done:
            if data:
                out = decoder.feed(data)
                if out:
                    yield out, received
                if decoder.done:
                    return
            data, received = self._recv(timeout_message)
            if not data:
                decoder.eof()
                return

    def close(self) -> None:
        pass  # the socket is the caller's
