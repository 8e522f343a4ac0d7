"""HTTP/1.1 response framing and NDJSON line splitting, with no socket.

Each decoder takes bytes as they come, cut anywhere, and gives back what is
complete so far; the transports feed them and stamp each read's arrival.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import OllamaError

MAX_LINE = 16 * 1024 * 1024  # a chunk line this long means the server is not speaking NDJSON
MAX_HEAD = 64 * 1024  # status line and headers of a response
MAX_CHUNK_SIZE_LINE = 4096


class HeadError(ValueError):
    """The status line or headers are not HTTP/1.1; the transport reports it as a failed request."""


@dataclass(frozen=True)
class Head:
    status: int
    chunked: bool
    length: Optional[int]  # Content-Length, when not chunked


def parse_head(head: bytes) -> Head:
    """Status line and headers (without the blank line that ends them) -> Head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HeadError(f"BadStatusLine({lines[0][:100]!r})")
    chunked = False
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding":
            chunked = value.strip().lower().endswith("chunked")
        elif name == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise HeadError("bad Content-Length") from None
    return Head(int(parts[1]), chunked, None if chunked else length)


class HeadReader:
    """Collects a response head; 1xx interim responses are skipped."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> Optional[tuple[Head, bytes]]:
        """-> (head, the body bytes that came with it) once the head is complete, else None."""
        buf = self.buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                if len(buf) > MAX_HEAD:
                    raise HeadError("response headers too long")
                return None
            head, buf = parse_head(buf[:end]), buf[end + 4:]
            if not 100 <= head.status < 200:
                self.buf = b""
                return head, buf


class BodyDecoder:
    """Removes the transfer framing of a body: chunked, Content-Length, or until the server closes.

    feed() returns the payload bytes complete so far; `done` turns true at the body's end
    (bytes after it are ignored). A chunked body cut off before its last chunk fails at
    eof(), as http.client does.
    """

    def __init__(self, head: Head):
        self.chunked = head.chunked
        self.left = head.length
        self.done = self.left == 0 and not self.chunked
        self.raw = b""  # read but not yet decoded (chunked)
        self.need = 0  # bytes left of the current chunk's data
        self.crlf = 0  # bytes left of the CRLF that ends a chunk

    def eof(self) -> None:
        """The connection closed; raises if the body was not complete."""
        if self.chunked and not self.done:
            raise OllamaError("stream_error", "stream broke: connection closed inside the chunked body")
        self.done = True

    def feed(self, data: bytes) -> bytes:
        if self.done or not data:
            return b""
        if not self.chunked:
            if self.left is not None:
                data = data[:self.left]
                self.left -= len(data)
                self.done = self.left == 0
            return data
        raw = self.raw + data if self.raw else data
        pos = 0
        end = len(raw)
        out = []
        need, crlf = self.need, self.crlf
        while pos < end:
            if need:
                take = need if need < end - pos else end - pos
                out.append(raw[pos:pos + take])
                pos += take
                need -= take
                if not need:
                    crlf = 2
            elif crlf:
                take = crlf if crlf < end - pos else end - pos
                pos += take
                crlf -= take
            else:
                nl = raw.find(b"\n", pos)
                if nl < 0:
                    if end - pos > MAX_CHUNK_SIZE_LINE:
                        raise OllamaError("stream_error", "stream broke: chunk size line too long")
                    break
                size = _chunk_size(raw[pos:nl])
                pos = nl + 1
                if size == 0:  # the last chunk; trailers do not matter
                    self.done = True
                    break
                stop = pos + size
                if stop + 2 <= end:  # the whole chunk is here: the usual case
                    out.append(raw[pos:stop])
                    pos = stop + 2
                else:
                    need = size
        self.raw = raw[pos:] if pos < end and not self.done else b""
        self.need, self.crlf = need, crlf
        return out[0] if len(out) == 1 else b"".join(out)


def _chunk_size(line: bytes) -> int:
    if b";" in line:
        line = line.split(b";", 1)[0]  # chunk extensions
    try:
        size = int(line, 16)
    except ValueError:
        raise OllamaError("stream_error", "stream broke: bad chunk size") from None
    if size < 0:
        raise OllamaError("stream_error", "stream broke: bad chunk size")
    return size


class LineSplitter:
    """NDJSON: bytes -> complete lines (without their newline); a partial line waits for more."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self.rest:
            data = self.rest + data
        if b"\n" not in data:
            lines, self.rest = [], data
        else:
            *lines, self.rest = data.split(b"\n")
        if len(self.rest) > self.max_line:
            raise OllamaError("malformed_response", "line too long for NDJSON")
        return lines

    def finish(self) -> None:
        """The body ended; raises if it ended inside a line."""
        if self.rest.strip():
            raise OllamaError("malformed_response", "stream ended inside a line")
