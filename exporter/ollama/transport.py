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
from .wire import StreamChunk, chunks_from_lines

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


def ndjson_chunks(body: Iterator[tuple[bytes, float]], chat: bool) -> Iterator[StreamChunk]:
    """The stream's chunks, up to and including the final (done) one; raises if it never comes."""
    lines = LineSplitter()
    for data, received in body:
        complete = lines.feed(data)
        if complete and (yield from chunks_from_lines(complete, received, chat)):
            return
    lines.finish()
    raise OllamaError("stream_error", "stream ended before the final done chunk")


@dataclass(frozen=True)
class Framing:
    """How one API's streamed body is read: its chunks from stamped bytes, its HTTP errors."""

    accept: str
    chunks: Callable[[Iterator[tuple[bytes, float]]], Iterator[StreamChunk]]
    failure: Callable[[int, bytes], OllamaError]


def _native_failure(status: int, body: bytes) -> OllamaError:
    return http_failure(status, error_message(body))


NDJSON_GENERATE = Framing("application/x-ndjson, application/json", lambda body: ndjson_chunks(body, False),
                          _native_failure)
NDJSON_CHAT = Framing("application/x-ndjson, application/json", lambda body: ndjson_chunks(body, True),
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
        if on_sent is not None:
            on_sent(time.monotonic())
        endpoint.send(sock, request)
        status = response.read_head()
        if not 200 <= status < 300:
            raise framing.failure(status, read_error_body(response))
        yield from framing.chunks(response.body(STREAM_TIMEOUT_MESSAGE))
    finally:
        if response is not None:
            response.close()
        sock.close()
