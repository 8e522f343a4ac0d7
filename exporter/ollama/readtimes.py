"""Which time belongs to which line of one read: late stamps, and their recovery.

A read's time (the kernel receive stamp, or the time right after it returned) belongs to
its newest bytes. When the reading thread woke late and several chunks waited in the
socket, Linux had already merged them into one buffer that keeps only the newest
segment's stamp (tcp_try_coalesce; smaller reads, MSG_PEEK and SO_TIMESTAMPING all give
that same stamp, docs/architecture.md), so every line but the read's last one got a time
that is only an upper bound: the line is *late*.

The read's last line, when the read ends exactly at its end, is timed exactly. Ollama
stamps every chunk with its own clock (`created_at`, RFC 3339 with nanoseconds), so an
earlier line of the same read is recovered as

    time(line) = time(last line) - (created_at(last line) - created_at(line))

The server's clock is only used for differences of a few milliseconds, inside one read:
its offset to ours, and any drift, cancel. The result is kept between the previous
read's time (the line was not complete then) and this read's.

Pure: no socket, no clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional, Sequence

from .wire import StreamChunk


def rfc3339_ns(text: Optional[str]) -> Optional[int]:
    """Ollama's `created_at` ('2025-01-01T00:00:00.123456789Z', Go's RFC3339Nano, trailing zeros
    dropped; or with a +hh:mm offset) -> Unix time in integer nanoseconds; None if it is not one."""
    if not isinstance(text, str) or len(text) < 20 or text[10] not in "Tt ":
        return None
    rest = text[19:]
    frac = 0
    if rest[:1] == ".":
        end = 1
        while end < len(rest) and rest[end].isdigit():
            end += 1
        digits = rest[1:end]
        if not digits:
            return None
        frac = int(digits[:9].ljust(9, "0"))
        rest = rest[end:]
    try:
        whole = datetime.fromisoformat(text[:19] + ("+00:00" if rest in ("Z", "z") else rest))
    except ValueError:
        return None
    if whole.tzinfo is None:
        return None
    return int(whole.timestamp()) * 1_000_000_000 + frac


def settle(chunks: Sequence[StreamChunk], received: float, floor: Optional[float], ends_on_line: bool,
           recover: bool = True) -> None:
    """Mark and re-time, in place, the chunks whose lines one read completed (in order).

    `received`: the read's time; `floor`: the previous read's time (None for the first);
    `ends_on_line`: the read ended at the end of its last line. Every chunk gets `late`
    (its read also delivered later bytes); a late chunk gets `recovered` and an earlier
    `received` when the read's last line and it both carry `created_at` (and `recover`:
    False only marks, as the benchmark's stamp-only reader does).
    """
    if not chunks:
        return
    exact = len(chunks) - 1 if ends_on_line else len(chunks)
    for i, chunk in enumerate(chunks):
        chunk.late = i < exact
    if not recover or exact == 0 or exact == len(chunks):
        return  # nothing late, or no line with an exact time to count back from
    anchor = rfc3339_ns(chunks[-1].created_at)
    if anchor is None:
        return
    for chunk in chunks[:exact]:
        created = rfc3339_ns(chunk.created_at)
        if created is None or created > anchor:
            continue
        t = received - (anchor - created) * 1e-9
        if floor is not None and t < floor:
            t = floor
        chunk.received = t
        chunk.recovered = True
