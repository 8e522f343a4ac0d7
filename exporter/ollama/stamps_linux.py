"""Kernel receive timestamps (Linux SO_TIMESTAMPNS) on the monotonic clock.

On other systems SO_TIMESTAMPNS is None and the raw transport takes the time
right after each read returns instead.
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
import threading
import time
from typing import Optional


def _timestamp_option() -> Optional[int]:
    """SO_TIMESTAMPNS on Linux architectures that use the generic socket option numbers."""
    value = getattr(socket, "SO_TIMESTAMPNS", None)
    if value is not None:
        return value
    if sys.platform != "linux" or not hasattr(socket.socket, "recvmsg"):
        return None
    if platform.machine().lower().startswith(("sparc", "parisc", "alpha", "mips")):
        return None  # different numbering there; fall back to user-space timestamps
    return 35


SO_TIMESTAMPNS = _timestamp_option()
ANCILLARY_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_TIMESPEC = struct.Struct("qq")
_TIMESPEC32 = struct.Struct("ii")
_TIMEVAL = struct.Struct("@ll")  # SO_RCVTIMEO
_stamp_keeper: Optional[socket.socket] = None
_stamp_keeper_lock = threading.Lock()


def keep_receive_stamps_on() -> None:
    """Hold one idle socket that asks for receive stamps, for the life of the process.

    Linux stamps received packets only while some socket on the host asks for it, and
    turning that on is deferred to a kernel worker: after a quiet spell (no probe
    running), the first segments of a new connection could arrive before it takes
    effect and go unstamped. The cost of keeping it on is a clock read per packet.
    """
    global _stamp_keeper
    if _stamp_keeper is not None or SO_TIMESTAMPNS is None:
        return
    with _stamp_keeper_lock:
        if _stamp_keeper is None:
            try:
                keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                return
            _stamp_keeper = keeper


def ask_for_stamps(sock: socket.socket) -> None:
    if SO_TIMESTAMPNS is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # user-space timestamps then


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """SO_RCVTIMEO: how long a blocking recvmsg() waits in the kernel."""
    sec = int(seconds)
    usec = max(int((seconds - sec) * 1e6), 0 if sec else 1)  # 0 would mean wait forever
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(sec, usec))


def measure_wall_to_monotonic_offset(tries: int = 3) -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns: the tightest of `tries` bracketed readings.

    Reading the two clocks is bracketed so that a thread preempted between two reads
    does not skew it.
    """
    best: Optional[tuple[int, int]] = None
    for _ in range(tries):
        a = time.monotonic_ns()
        wall = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) // 2)
    assert best is not None, "tries must be at least 1"
    return best[1]


_wall_offset = (0, -(10**18))  # (CLOCK_REALTIME - CLOCK_MONOTONIC in ns, monotonic ns when measured)


def wall_to_monotonic_offset(now_ns: int) -> int:
    """The offset, re-measured at most once a second.

    Both clocks are slewed alike by NTP; their difference changes only when the wall
    clock is stepped.
    """
    global _wall_offset
    offset, measured = _wall_offset
    if now_ns - measured < 1_000_000_000:
        return offset
    offset = measure_wall_to_monotonic_offset()
    _wall_offset = (offset, now_ns)
    return offset


def kernel_stamp(ancillary, now_ns: int) -> Optional[float]:
    """The SO_TIMESTAMPNS stamp among a recvmsg()'s ancillary data, on the monotonic clock, in s."""
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            if len(raw) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(raw)
            elif len(raw) >= 8:
                sec, nsec = _TIMESPEC32.unpack_from(raw)
            else:
                return None
            offset, measured = _wall_offset
            if now_ns - measured >= 1_000_000_000:
                offset = wall_to_monotonic_offset(now_ns)
            # The kernel stamps with the wall clock; move it onto the monotonic clock.
            return (sec * 1_000_000_000 + nsec - offset) * 1e-9
    return None
