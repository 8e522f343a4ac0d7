"""The only module that knows Ollama's wire format.

The measured path (streaming generate/chat over plain HTTP) reads the socket
directly: it sends the request bytes itself, parses the status line, headers and
chunked body itself, and on Linux asks the kernel to stamp every received segment
(SO_TIMESTAMPNS), waiting inside recvmsg() so that each segment is taken off the
socket with its own stamp as soon as it arrives. A chunk's `received` time is
therefore when its bytes reached this host, not when a Python thread got around
to reading them: neither a busy GIL (many concurrent probes, a /metrics render)
nor a slow wake-up of the reading thread adds to TTFT or to the gaps between
tokens. Without kernel stamps (other systems, or a stamp that fails its sanity
check) the time is taken right after the read returns, before any parsing. HTTPS streams, and control-plane calls
(version, running models, show), use http.client, so that timeouts, auth and
error mapping live in one place.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import platform
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional
from urllib.parse import urlsplit

from .config import Auth, Target

CONTROL_TIMEOUT_S = 10.0
MAX_ERROR_BODY = 64 * 1024
MAX_LINE = 16 * 1024 * 1024  # a chunk line this long means the server is not speaking NDJSON
MAX_HEAD = 64 * 1024  # status line and headers of a response
READ_SIZE = 65536


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
_ANCILLARY_SIZE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
_TIMESPEC = struct.Struct("qq")
_TIMESPEC32 = struct.Struct("ii")
_TIMEVAL = struct.Struct("@ll")  # SO_RCVTIMEO
# Blocking reads wait in slices this long: the kernel's timer wheel is coarse for long
# timeouts (a 2.5 s SO_RCVTIMEO can fire 100 ms late), and short ones bound the overshoot.
WAIT_SLICE = 0.05
_stamp_keeper: Optional[socket.socket] = None
_stamp_keeper_lock = threading.Lock()


def _keep_receive_stamps_on() -> None:
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


_wall_offset = (0, -(10**18))  # (CLOCK_REALTIME - CLOCK_MONOTONIC in ns, monotonic ns when measured)


def _wall_to_monotonic_offset(now_ns: int) -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns; re-measured at most once a second.

    Both clocks are slewed alike by NTP; their difference changes only when the wall
    clock is stepped. Reading the two clocks is bracketed and the tightest of three
    tries kept, so that a thread preempted between two reads does not skew it.
    """
    global _wall_offset
    offset, measured = _wall_offset
    if now_ns - measured < 1_000_000_000:
        return offset
    best = None
    for _ in range(3):
        a = time.monotonic_ns()
        wall = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, wall - (a + b) // 2)
    _wall_offset = (best[1], now_ns)
    return best[1]


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

    received: float  # on the time.monotonic() clock; the kernel receive time where available
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


def _chunk_from_line(line: bytes, received: float, chat: bool) -> Optional[StreamChunk]:
    """One NDJSON line -> a StreamChunk (None for a blank line); raises OllamaError for an error line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
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
    return StreamChunk(received, text_len, obj if obj.get("done") is True else None)


def _chunks_from_lines(lines: list[bytes], received: float, chat: bool):
    """Yield the chunks of complete lines; return True once the final (done) chunk was yielded."""
    for line in lines:
        chunk = _chunk_from_line(line, received, chat)
        if chunk is None:
            continue
        yield chunk
        if chunk.final is not None:
            return True
    return False


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
        self._bodies: dict[tuple, tuple[str, bytes]] = {}

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
        return self._send_bytes(conn, method, path, None if body is None else json.dumps(body).encode())

    def _send_bytes(self, conn, method: str, path: str, data: Optional[bytes]) -> http.client.HTTPResponse:
        if self._auth_headers is None:
            # Read once per client (a client lives for one scenario run), not per request.
            self._auth_headers = auth_headers(self._auth)
        headers = {"Accept": "application/x-ndjson, application/json", **self._auth_headers}
        if data is not None:
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
    # False: read streams through http.client with user-space timestamps (always the case
    # for https). Kept as a switch so that benchmarks/probe_bench.py can compare both readers.
    raw_streaming = True

    def _request_body(self, api, model, prompt, system, options, keep_alive, think) -> tuple[str, bytes]:
        """The request path and JSON body, encoded once per distinct request and reused.

        A scenario sends the same case many times, and a long prompt takes milliseconds
        to encode: work that would otherwise sit inside every measured TTFT.
        """
        key = (api, model, prompt, system, json.dumps(options, sort_keys=True) if options else None,
               repr(keep_alive), think)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
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
        if len(self._bodies) >= 64:
            self._bodies.clear()
        result = self._bodies[key] = (path, json.dumps(body).encode())
        return result

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
        on_sent: Optional[Callable[[float], None]] = None,
    ) -> Iterator[StreamChunk]:
        """Send one streaming request and yield its chunks as they arrive.

        Raises OllamaError with a failure reason for every way the request can go
        wrong, including an error line inside a 200 stream and a stream that ends
        without its final `done` chunk. The whole request is bounded by `timeout`.
        Each chunk's `received` is on the time.monotonic() clock: the kernel's receive
        time of the bytes that completed its line where available (see the module doc).
        """
        deadline = time.monotonic() + timeout
        path, data = self._request_body(api, model, prompt, system, options, keep_alive, think)
        chat = api == "chat"
        if self._https or not self.raw_streaming:
            yield from self._stream_http_client(path, data, deadline, timeout, chat, on_sent)
            return
        _keep_receive_stamps_on()
        sock = self._open_socket(min(timeout, CONTROL_TIMEOUT_S * 3))
        try:
            reader = _RawResponse(sock, deadline, self._host, self._port)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            # Nothing of the answer can arrive before the request starts to go out.
            reader.floor = time.monotonic()
            request = self._request_head(path, len(data)) + data
            if on_sent is not None:
                on_sent(time.monotonic())
            try:
                sock.sendall(request)
            except socket.timeout:
                raise OllamaError("timeout", f"no response from {self._host}:{self._port} within the timeout") from None
            except OSError as exc:
                raise OllamaError("connection", f"request to {self._host}:{self._port} failed: {exc!r}") from None
            reader.blocking_reads()
            status = reader.read_head()
            if not 200 <= status < 300:
                body = reader.read_error_body(MAX_ERROR_BODY)
                message = _error_message(body)
                raise OllamaError(_reason_for_status(status, message), f"HTTP {status}: {message}", status)
            yield from reader.chunks(chat)
        finally:
            sock.close()

    def _open_socket(self, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), timeout=timeout)
        except socket.timeout:
            raise OllamaError("timeout", f"connect to {self._host}:{self._port} timed out") from None
        except OSError as exc:
            raise OllamaError("connection", f"cannot connect to {self._host}:{self._port}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if SO_TIMESTAMPNS is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                except OSError:
                    pass  # user-space timestamps then
        except OSError as exc:
            sock.close()
            raise OllamaError("connection", f"cannot connect to {self._host}:{self._port}: {exc}") from None
        return sock

    def _request_head(self, path: str, length: int) -> bytes:
        if self._auth_headers is None:
            self._auth_headers = auth_headers(self._auth)
        host = f"[{self._host}]" if ":" in self._host else self._host
        if self._port != 80:
            host = f"{host}:{self._port}"
        lines = [
            f"POST {self._base_path}{path} HTTP/1.1",
            f"Host: {host}",
            "Accept-Encoding: identity",
            "Accept: application/x-ndjson, application/json",
            "Content-Type: application/json",
            f"Content-Length: {length}",
        ]
        lines += [f"{k}: {v}" for k, v in self._auth_headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _stream_http_client(self, path: str, data: bytes, deadline: float, timeout: float, chat: bool,
                            on_sent: Optional[Callable[[float], None]] = None) -> Iterator[StreamChunk]:
        """The http.client reader: timestamps taken after each read returns, in user space."""
        conn = self._connect(min(timeout, CONTROL_TIMEOUT_S * 3))
        # Keep our own reference: http.client drops conn.sock when the server says
        # "Connection: close", while the response still reads from it.
        sock = conn.sock
        resp = None
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            if on_sent is not None:
                on_sent(time.monotonic())
            resp = self._send_bytes(conn, "POST", path, data)
            self._check_status(resp)
            yield from self._read_stream(sock, resp, deadline, chat)
        finally:
            _close(conn, resp, sock)

    def _read_stream(self, sock, resp, deadline: float, chat: bool) -> Iterator[StreamChunk]:
        buf = b""
        monotonic = time.monotonic
        while True:
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise OllamaError("timeout", "request exceeded its timeout while streaming")
            sock.settimeout(remaining)
            try:
                data = resp.read1(READ_SIZE)
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
            if (yield from _chunks_from_lines(lines, received, chat)):
                return


class _RawResponse:
    """An HTTP/1.1 response read straight from the socket, each read stamped with its arrival time.

    On Linux the socket blocks in recvmsg() itself (SO_RCVTIMEO bounds the wait) rather
    than in poll() followed by a read: the kernel completes the read, and so takes the
    segment off the queue with its own stamp, the moment it arrives, whether or not this
    thread can get the GIL then. That matters: a segment left waiting in the socket is
    merged with the next one to arrive, and the merged data keeps only the later stamp.
    """

    def __init__(self, sock: socket.socket, deadline: float, host: str, port: int):
        self.sock = sock
        self.deadline = deadline
        self.where = f"{host}:{port}"
        self.stamped = SO_TIMESTAMPNS is not None
        self.floor = 0.0  # stamps earlier than this (the request's send, the previous read) are not believed
        self.pending = b""  # body bytes that came with the head
        self.pending_received = 0.0
        self.chunked = False
        self.length: Optional[int] = None  # Content-Length, when not chunked
        self._slice = WAIT_SLICE  # the SO_RCVTIMEO in force, in blocking mode

    def blocking_reads(self) -> None:
        """Switch the socket to reads that wait in the kernel, in SO_RCVTIMEO slices (Linux)."""
        if self.stamped:
            self.sock.settimeout(None)
            self._set_slice(WAIT_SLICE)

    def _set_slice(self, seconds: float) -> None:
        sec = int(seconds)
        usec = max(int((seconds - sec) * 1e6), 0 if sec else 1)  # 0 would mean wait forever
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(sec, usec))
        self._slice = seconds

    # ---- reads ----
    def _stamp(self, ancillary, now_ns: int) -> float:
        received = now_ns * 1e-9
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                if len(raw) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(raw)
                elif len(raw) >= 8:
                    sec, nsec = _TIMESPEC32.unpack_from(raw)
                else:
                    break
                offset, measured = _wall_offset
                if now_ns - measured >= 1_000_000_000:
                    offset = _wall_to_monotonic_offset(now_ns)
                # The kernel stamps with the wall clock; move it onto the monotonic clock.
                stamp = (sec * 1_000_000_000 + nsec - offset) * 1e-9
                # Sanity: not in the future, not before the request went out or the previous
                # read (beyond the jitter of the clock conversion); else the read's own time.
                if self.floor - 0.001 <= stamp <= received:
                    received = stamp
                break
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
                    data, ancillary, _flags, _addr = sock.recvmsg(READ_SIZE, _ANCILLARY_SIZE)
                else:
                    data, ancillary = sock.recv(READ_SIZE), ()
                now_ns = time.monotonic_ns()
            except BlockingIOError:  # a slice of SO_RCVTIMEO passed without data
                continue
            except socket.timeout:
                raise OllamaError("timeout", timeout_message) from None
            except OSError as exc:
                raise OllamaError("stream_error", f"stream broke: {exc!r}") from None
            return data, self._stamp(ancillary, now_ns)

    def read_head(self) -> int:
        """Read the status line and headers (skipping 1xx); return the status. Body bytes stay pending."""
        message = f"no response from {self.where} within the timeout"
        buf = b""
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head, buf = buf[:end], buf[end + 4:]
                status = self._parse_head(head)
                if 100 <= status < 200:
                    continue
                self.pending = buf
                return status
            if len(buf) > MAX_HEAD:
                raise OllamaError("connection", f"request to {self.where} failed: response headers too long")
            try:
                data, self.pending_received = self._recv(message)
            except OllamaError as exc:
                if exc.reason == "stream_error":
                    raise OllamaError("connection", f"request to {self.where} failed: {exc.message}") from None
                raise
            if not data:
                raise OllamaError(
                    "connection",
                    f"request to {self.where} failed: RemoteDisconnected('Remote end closed connection without response')",
                )
            buf += data

    def _parse_head(self, head: bytes) -> int:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise OllamaError("connection", f"request to {self.where} failed: BadStatusLine({lines[0][:100]!r})")
        status = int(parts[1])
        self.chunked = False
        self.length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "transfer-encoding":
                self.chunked = value.strip().lower().endswith("chunked")
            elif name == "content-length":
                try:
                    self.length = int(value.strip())
                except ValueError:
                    raise OllamaError("connection", f"request to {self.where} failed: bad Content-Length") from None
        if self.chunked:
            self.length = None
        return status

    # ---- bodies ----
    def _body(self, timeout_message: str) -> Iterator[tuple[bytes, float]]:
        """(body bytes, arrival time) with the transfer framing removed, until the body ends.

        A chunked body cut off before its last chunk raises stream_error, as http.client does.
        """
        chunked = self.chunked
        left = self.length
        if left == 0 and not chunked:
            return
        recv = self._recv
        data, received = self.pending, self.pending_received
        self.pending = b""
        raw = b""  # read but not yet decoded
        need = 0  # bytes left of the current chunk's data
        crlf = 0  # bytes left of the CRLF that ends a chunk
        while True:
            if data:
                if not chunked:
                    if left is not None:
                        data = data[:left]
                        left -= len(data)
                    yield data, received
                    if left == 0:
                        return
                else:
                    raw = raw + data if raw else data
                    pos = 0
                    end = len(raw)
                    out = []
                    last = False
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
                                if end - pos > 4096:
                                    raise OllamaError("stream_error", "stream broke: chunk size line too long")
                                break
                            header = raw[pos:nl]
                            if b";" in header:
                                header = header.split(b";", 1)[0]
                            try:
                                size = int(header, 16)
                            except ValueError:
                                raise OllamaError("stream_error", "stream broke: bad chunk size") from None
                            if size < 0:
                                raise OllamaError("stream_error", "stream broke: bad chunk size")
                            pos = nl + 1
                            if size == 0:  # the last chunk; trailers do not matter
                                last = True
                                break
                            stop = pos + size
                            if stop + 2 <= end:  # the whole chunk is here: the usual case
                                out.append(raw[pos:stop])
                                pos = stop + 2
                            else:
                                need = size
                    raw = raw[pos:] if pos < end else b""
                    if out:
                        yield (out[0] if len(out) == 1 else b"".join(out)), received
                    if last:
                        return
            data, received = recv(timeout_message)
            if not data:
                if chunked:
                    raise OllamaError("stream_error", "stream broke: connection closed inside the chunked body")
                return

    def read_error_body(self, limit: int) -> bytes:
        body = b""
        try:
            for data, _ in self._body("error body timed out"):
                body += data
                if len(body) >= limit:
                    break
        except OllamaError:
            pass
        return body[:limit]

    def chunks(self, chat: bool) -> Iterator[StreamChunk]:
        buf = b""
        for data, received in self._body("request exceeded its timeout while streaming"):
            if buf:
                data = buf + data
            if b"\n" not in data:
                buf = data
                if len(buf) > MAX_LINE:
                    raise OllamaError("malformed_response", "line too long for NDJSON")
                continue
            *lines, buf = data.split(b"\n")
            if (yield from _chunks_from_lines(lines, received, chat)):
                return
            if len(buf) > MAX_LINE:
                raise OllamaError("malformed_response", "line too long for NDJSON")
        if buf.strip():
            raise OllamaError("malformed_response", "stream ended inside a line")
        raise OllamaError("stream_error", "stream ended before the final done chunk")
