"""Server-sent events (text/event-stream) framing, with no socket: the SSE twin of LineSplitter.

Follows the WHATWG HTML "server-sent events" parsing rules, which is what OpenAI-compatible
servers speak on a streamed `/v1/chat/completions`:

- lines end with CRLF, LF or a lone CR (a CR at the end of one read and the LF at the start of
  the next are one line end, so an event is handed on with the read that completes it, never
  later and never split in two);
- a line starting with `:` is a comment (keep-alives), ignored;
- `field: value` (one space after the colon is dropped), `field:value`, or a bare `field`;
- `data` lines accumulate, joined by newlines; a blank line dispatches the event; an event with
  no data is not dispatched; `event` names the event type; `id` and `retry` are ignored here;
- a UTF-8 byte order mark at the very start is skipped;
- an event still open when the stream ends is discarded (the caller decides whether the stream
  ended too early).

Lines are split on bytes and decoded whole, so a multi-byte character cut across two reads
decodes correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import OllamaError
from .framing import MAX_LINE

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Event:
    data: str
    event: str = "message"


class EventSplitter:
    """bytes -> complete events; a partial line or event waits for more."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.rest = b""
        self.skip_lf = False  # the previous read ended with CR: a leading LF belongs to that line end
        self.started = False  # the BOM check is done
        self.data: list[str] = []
        self.event = ""
        self.open = False  # some field of the current event was seen
        # The last line that is no SSE field but a JSON object: some servers (Ollama 0.11.4's /v1)
        # write an error that happens mid-stream as a bare JSON line instead of an event.
        self.stray: Optional[str] = None

    def feed(self, data: bytes) -> list[Event]:
        if not data:
            return []
        if self.skip_lf:
            self.skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        buf = self.rest + data if self.rest else data
        if not self.started:
            if len(buf) < len(BOM) and BOM.startswith(buf):
                self.rest = buf
                return []
            self.started = True
            if buf.startswith(BOM):
                buf = buf[len(BOM):]
        events: list[Event] = []
        pos, end = 0, len(buf)
        while pos < end:
            cr = buf.find(b"\r", pos)
            lf = buf.find(b"\n", pos)
            if cr < 0 and lf < 0:
                break
            if lf < 0 or 0 <= cr < lf:
                stop, nxt = cr, cr + 1
                if nxt < end:
                    if buf[nxt:nxt + 1] == b"\n":
                        nxt += 1
                else:
                    self.skip_lf = True  # the LF of a CRLF may come with the next read
            else:
                stop, nxt = lf, lf + 1
            event = self._line(buf[pos:stop])
            if event is not None:
                events.append(event)
            pos = nxt
        self.rest = buf[pos:]
        if len(self.rest) > self.max_line:
            raise OllamaError("malformed_response", "line too long for server-sent events")
        return events

    def _line(self, raw: bytes) -> Optional[Event]:
        if not raw:
            return self._dispatch()
        if raw[:1] == b":":
            return None  # a comment
        line = raw.decode("utf-8", "replace")
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self.data.append(value)
            self.open = True
        elif name == "event":
            self.event = value
            self.open = True
        elif line[:1] == "{":
            self.stray = line
        return None  # id, retry and unknown fields are ignored

    def _dispatch(self) -> Optional[Event]:
        data, event = self.data, self.event
        self.data, self.event, self.open = [], "", False
        if not data:
            return None
        return Event("\n".join(data), event or "message")

    @property
    def pending(self) -> bool:
        """An event or line is open: the stream stopped inside it."""
        return self.open or bool(self.rest.strip())
