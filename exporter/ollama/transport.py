"""The timed streaming request, and the seam between it and the reader that receives it.

Both readers share everything but receiving: connecting, the request bytes and
their credentials, the status check and the end-of-stream rules live here. A
Response only gives the status and the body's bytes, each read stamped with when
it arrived; a Framing (chosen by API: NDJSON for Ollama's native API, server-sent
events for the OpenAI-compatible one) turns those stamped bytes into chunks, so
both APIs get the same receive stamps.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol

from .endpoint import Endpoint
from .errors import OllamaError, error_message, http_failure
from .framing import LineSplitter
from .readtimes import settle
from .wire import StreamChunk, chunk_from_line

MAX_ERROR_BODY = 64 * 1024
READ_SIZE = 65536
STREAM_TIMEOUT_MESSAGE = "request exceeded its timeout while streaming"


class Response(Protocol):
    """One response being received."""

    def read_head(self) -> int:
        """Wait for the status line and headers; return the status."""

    def body(self, timeout_message: str) -> Iterator[tuple[bytes, float]]:
        """(body bytes, arrival time on the monotonic clock), transfer framing removed, until the end."""

    def close(self) -> None: ...


class Transport(Protocol):
    """How the bytes of a timed stream are received."""

    name: str

    def connect(self, endpoint: Endpoint, timeout: float) -> socket.socket:
        """A connected socket, set up for this reader."""

    def response(self, sock: socket.socket, deadline: float, where: str) -> Response:
        """A Response to receive on `sock`, created just before the request is sent."""


def read_error_body(response: Response, limit: int = MAX_ERROR_BODY) -> bytes:
    body = b""
    try:
        for data, _ in response.body("error body timed out"):
            body += data
            if len(body) >= limit:
                break
    except OllamaError:
        pass
    return body[:limit]


def ndjson_chunks(body: Iterator[tuple[bytes, float]], chat: bool, whole_reads: bool = True,
                  recover: bool = True, sent: Optional[float] = None) -> Iterator[StreamChunk]:
    """The stream's chunks, up to and including the final (done) one; raises if it never comes.

    `whole_reads`: each item of `body` is one read of the socket, so a read that completed
    several lines can be told apart (readtimes.settle marks them, and re-times its late
    lines unless `recover` is False). No line is re-timed before the previous read, nor
    before `sent` (when the request went out).
    """
    lines = LineSplitter()
    floor = sent  # the previous read's time
    for data, received in body:
        complete = lines.feed(data)
        if complete:
            chunks, error, final, all_used = read_chunks(complete, received, chat)
            if whole_reads:
                settle(chunks, received, floor, all_used and error is None and not lines.rest, recover)
            yield from chunks
            if error is not None:
                raise error
            if final:
                return
        floor = received
    lines.finish()
    raise OllamaError("stream_error", "stream ended before the final done chunk")


def read_chunks(lines: list[bytes], received: float, chat: bool
                ) -> tuple[list[StreamChunk], Optional[OllamaError], bool, bool]:
    """One read's complete lines -> (their chunks, the error of an error line (after the chunks
    before it), the final chunk came, the last line is the last chunk's)."""
    chunks: list[StreamChunk] = []
    for i, line in enumerate(lines):
        try:
            chunk = chunk_from_line(line, received, chat)
        except OllamaError as exc:
            return chunks, exc, False, False
        if chunk is None:
            continue
        chunks.append(chunk)
        if chunk.final is not None:
            return chunks, None, True, i == len(lines) - 1
    return chunks, None, False, bool(chunks) and bool(lines[-1].strip())


@dataclass(frozen=True)
class Framing:
    """How one API's streamed body is read: its chunks from stamped bytes, its HTTP errors."""

    accept: str
    # (stamped body reads, each item one whole read of the socket, re-time late lines, when the
    # request went out) -> chunks. NDJSON re-times a read's earlier lines from the server's
    # created_at spacing (readtimes.py); a framing whose server gives no sub-second times ignores it.
    chunks: Callable[[Iterator[tuple[bytes, float]], bool, bool, Optional[float]], Iterator[StreamChunk]]
    failure: Callable[[int, bytes], OllamaError]


def _native_failure(status: int, body: bytes) -> OllamaError:
    return http_failure(status, error_message(body))


NDJSON_GENERATE = Framing("application/x-ndjson, application/json",
                          lambda body, whole, recover, sent: ndjson_chunks(body, False, whole, recover, sent),
                          _native_failure)
NDJSON_CHAT = Framing("application/x-ndjson, application/json",
                      lambda body, whole, recover, sent: ndjson_chunks(body, True, whole, recover, sent),
                      _native_failure)


def stream(transport: Transport, endpoint: Endpoint, path: str, data: bytes, *, deadline: float,
           connect_timeout: float, framing: Framing,
           on_sent: Optional[Callable[[float], None]] = None) -> Iterator[StreamChunk]:
    """Send one streaming request and yield its chunks as they arrive (see OllamaClient.stream)."""
    request = endpoint.request_head(path, len(data), framing.accept) + data
    sock = transport.connect(endpoint, connect_timeout)
    response = None
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        response = transport.response(sock, deadline, endpoint.where)
        sent = time.monotonic()
        if on_sent is not None:
            on_sent(sent)
        endpoint.send(sock, request)
        status = response.read_head()
        if not 200 <= status < 300:
            raise framing.failure(status, read_error_body(response))
        yield from framing.chunks(response.body(STREAM_TIMEOUT_MESSAGE), getattr(response, "whole_reads", False),
                                  getattr(response, "recover", True), sent)
    finally:
        if response is not None:
            response.close()
        sock.close()
