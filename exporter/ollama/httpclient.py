"""The http.client reader: for HTTPS, and where the raw reader is not wanted.

Each read is stamped in user space, right after it returns: the time includes the
reading thread's wake-up and any wait for the GIL (benchmarks/probe_bench.py
shows how much that adds under load).
"""

from __future__ import annotations

import http.client
import socket
import time
from typing import Iterator, Optional

from .endpoint import Endpoint
from .errors import OllamaError
from .transport import READ_SIZE


class HttpClientTransport:
    name = "http.client"

    def connect(self, endpoint: Endpoint, timeout: float) -> socket.socket:
        return endpoint.connect(timeout)

    def response(self, sock: socket.socket, deadline: float, where: str) -> "HttpClientResponse":
        return HttpClientResponse(sock, deadline, where)


class HttpClientResponse:
    def __init__(self, sock: socket.socket, deadline: float, where: str):
        self.sock = sock
        self.deadline = deadline
        self.where = where
        self.resp: Optional[http.client.HTTPResponse] = None

    def read_head(self) -> int:
        resp = http.client.HTTPResponse(self.sock, method="POST")
        try:
            resp.begin()
        except socket.timeout:
            resp.close()
            raise OllamaError("timeout", f"no response from {self.where} within the timeout") from None
        except (http.client.HTTPException, OSError) as exc:
            resp.close()
            raise OllamaError("connection", f"request to {self.where} failed: {exc!r}") from None
        self.resp = resp
        return resp.status

    def body(self, timeout_message: str) -> Iterator[tuple[bytes, float]]:
        monotonic = time.monotonic
        while True:
            remaining = self.deadline - monotonic()
            if remaining <= 0:
                raise OllamaError("timeout", timeout_message)
            self.sock.settimeout(remaining)
            assert self.resp is not None, "body() is called after the head was read"
            try:
                data = self.resp.read1(READ_SIZE)
            except socket.timeout:
                raise OllamaError("timeout", timeout_message) from None
            except (OSError, http.client.HTTPException) as exc:
                raise OllamaError("stream_error", f"stream broke: {exc!r}") from None
            received = monotonic()
            if not data:
                return
            yield data, received

    def close(self) -> None:
        if self.resp is not None:
            self.resp.close()
