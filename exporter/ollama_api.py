"""The only module that knows Ollama's wire format.

Streaming uses http.client directly rather than the `ollama` package: each
read returns whatever the server has flushed (one NDJSON chunk per token), with
no pydantic model built per line and no extra buffering between the socket and
the clock that timestamps a token. Control-plane calls (version, running
models, show) go through the same connection code so that timeouts, auth and
error mapping live in one place.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

from .config import Auth, Target

CONTROL_TIMEOUT_S = 10.0
MAX_ERROR_BODY = 64 * 1024
MAX_LINE = 16 * 1024 * 1024  # a chunk line this long means the server is not speaking NDJSON


class OllamaError(Exception):
    """A failed request, already classified into one of the fixed failure reasons."""

    def __init__(self, reason: str, message: str, http_status: Optional[int] = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status


@dataclass
class StreamChunk:
    """One streamed line: when it arrived, how much text it carried, the final fields if done."""

    received: float  # time.monotonic()
    text_len: int
    final: Optional[dict[str, Any]]


def _read_secret(env: Optional[str], path: Optional[str]) -> Optional[str]:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise OllamaError("connection", f"environment variable {env} for target credentials is not set")
        return value.strip()
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as exc:
            raise OllamaError("connection", f"cannot read credentials file {path}: {exc.strerror}") from None
    return None


def auth_headers(auth: Optional[Auth]) -> dict[str, str]:
    if auth is None:
        return {}
    token = _read_secret(auth.bearer_token_env, auth.bearer_token_file)
    if token:
        return {"Authorization": f"Bearer {token}"}
    if auth.basic_user is not None:
        password = _read_secret(auth.basic_password_env, auth.basic_password_file) or ""
        raw = f"{auth.basic_user}:{password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    return {}


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return data["error"]
    except ValueError:
        pass
    return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"


def _reason_for_status(status: int, message: str) -> str:
    if status == 404:
        return "model_not_found"
    if status == 503:
        return "server_busy"
    if status in (408, 504):
        return "timeout"
    return "http_error"


def _reason_for_stream_error(message: str) -> str:
    lowered = message.lower()
    if "not found" in lowered and "model" in lowered:
        return "model_not_found"
    if "server busy" in lowered or "maximum pending requests" in lowered:
        return "server_busy"
    return "stream_error"


def _close(conn, resp, sock) -> None:
    """Release the descriptor now, not at garbage collection: the response holds its own reference."""
    if resp is not None:
        resp.close()
    conn.close()
    sock.close()


class OllamaClient:
    def __init__(self, target: Target):
        self.target = target
        parts = urlsplit(target.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._base_path = parts.path.rstrip("/")
        self._auth = target.auth
        self._auth_headers: Optional[dict[str, str]] = None

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout)
        try:
            conn.connect()
        except socket.timeout:
            conn.close()
            raise OllamaError("timeout", f"connect to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            conn.close()
            raise OllamaError("connection", f"cannot connect to {self._host}:{self._port}: {exc}") from None
        # Small NDJSON chunks must not wait for Nagle on our side of the request either.
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _send(self, conn, method: str, path: str, body: Optional[dict]) -> http.client.HTTPResponse:
        if self._auth_headers is None:
            # Read once per client (a client lives for one scenario run), not per request.
            self._auth_headers = auth_headers(self._auth)
        headers = {"Accept": "application/x-ndjson, application/json", **self._auth_headers}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._base_path + path, body=data, headers=headers)
            return conn.getresponse()
        except socket.timeout:
            raise OllamaError("timeout", f"no response from {self._host}:{self._port} within the timeout") from None
        except (http.client.HTTPException, OSError) as exc:
            raise OllamaError("connection", f"request to {self._host}:{self._port} failed: {exc!r}") from None

    def _check_status(self, resp: http.client.HTTPResponse) -> None:
        if 200 <= resp.status < 300:
            return
        try:
            body = resp.read(MAX_ERROR_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        message = _error_message(body)
        raise OllamaError(_reason_for_status(resp.status, message), f"HTTP {resp.status}: {message}", resp.status)

    def request_json(self, method: str, path: str, body: Optional[dict] = None, timeout: float = CONTROL_TIMEOUT_S) -> Any:
        conn = self._connect(timeout)
        sock = conn.sock
        resp = None
        try:
            resp = self._send(conn, method, path, body)
            self._check_status(resp)
            try:
                raw = resp.read()
            except socket.timeout:
                raise OllamaError("timeout", f"{path}: response body timed out") from None
            except (OSError, http.client.HTTPException) as exc:
                raise OllamaError("stream_error", f"{path}: {exc!r}") from None
            try:
                return json.loads(raw)
            except ValueError:
                raise OllamaError("malformed_response", f"{path}: response is not JSON") from None
        finally:
            _close(conn, resp, sock)

    # ---- control plane ----
    def version(self) -> str:
        data = self.request_json("GET", "/api/version")
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise OllamaError("malformed_response", "/api/version: no version field")
        return data["version"]

    def running_models(self) -> list[dict[str, Any]]:
        data = self.request_json("GET", "/api/ps")
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise OllamaError("malformed_response", "/api/ps: no models list")
        return [m for m in models if isinstance(m, dict)]

    def show(self, model: str) -> dict[str, Any]:
        data = self.request_json("POST", "/api/show", {"model": model})
        return data if isinstance(data, dict) else {}

    def unload(self, model: str) -> None:
        self.request_json("POST", "/api/generate", {"model": model, "keep_alive": 0, "stream": False}, timeout=60)

    # ---- the measured path ----
    def stream(
        self,
        api: str,
        model: str,
        prompt: str,
        *,
        system: Optional[str] = None,
        options: Optional[dict[str, Any]] = None,
        keep_alive: Any = None,
        think: Optional[bool] = None,
        timeout: float = 120.0,
    ) -> Iterator[StreamChunk]:
        """Send one streaming request and yield its chunks as they arrive.

        Raises OllamaError with a failure reason for every way the request can go
        wrong, including an error line inside a 200 stream and a stream that ends
        without its final `done` chunk. The whole request is bounded by `timeout`.
        """
        deadline = time.monotonic() + timeout
        if api == "chat":
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
            path = "/api/chat"
        else:
            body = {"model": model, "prompt": prompt, "stream": True}
            if system:
                body["system"] = system
            path = "/api/generate"
        if options:
            body["options"] = options
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        if think is not None:
            body["think"] = think

        conn = self._connect(min(timeout, CONTROL_TIMEOUT_S * 3))
        # Keep our own reference: http.client drops conn.sock when the server says
        # "Connection: close", while the response still reads from it.
        sock = conn.sock
        resp = None
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            resp = self._send(conn, "POST", path, body)
            self._check_status(resp)
            yield from self._read_stream(sock, resp, deadline, api == "chat")
        finally:
            _close(conn, resp, sock)

    def _read_stream(self, sock, resp, deadline: float, chat: bool) -> Iterator[StreamChunk]:
        buf = b""
        done = False
        monotonic = time.monotonic
        loads = json.loads
        while not done:
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise OllamaError("timeout", "request exceeded its timeout while streaming")
            sock.settimeout(remaining)
            try:
                data = resp.read1(65536)
            except socket.timeout:
                raise OllamaError("timeout", "request exceeded its timeout while streaming") from None
            except (OSError, http.client.HTTPException) as exc:
                raise OllamaError("stream_error", f"stream broke: {exc!r}") from None
            received = monotonic()
            if not data:
                if buf.strip():
                    raise OllamaError("malformed_response", "stream ended inside a line")
                raise OllamaError("stream_error", "stream ended before the final done chunk")
            buf += data
            if len(buf) > MAX_LINE:
                raise OllamaError("malformed_response", "line too long for NDJSON")
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    obj = loads(line)
                except ValueError:
                    raise OllamaError("malformed_response", "stream line is not JSON") from None
                if not isinstance(obj, dict):
                    raise OllamaError("malformed_response", "stream line is not a JSON object")
                err = obj.get("error")
                if err is not None:
                    message = str(err)
                    raise OllamaError(_reason_for_stream_error(message), f"error in stream: {message}")
                if chat:
                    msg = obj.get("message") or {}
                    if not isinstance(msg, dict):
                        raise OllamaError("malformed_response", "chat chunk has no message object")
                    text, thinking = msg.get("content"), msg.get("thinking")
                else:
                    text, thinking = obj.get("response"), obj.get("thinking")
                text_len = (len(text) if isinstance(text, str) else 0) + (len(thinking) if isinstance(thinking, str) else 0)
                if obj.get("done") is True:
                    done = True
                    yield StreamChunk(received, text_len, obj)
                    break
                yield StreamChunk(received, text_len, None)
