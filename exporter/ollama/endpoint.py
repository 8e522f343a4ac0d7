"""Where a target lives and how to reach it: URL, credentials, connecting, sending."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
from typing import Optional
from urllib.parse import urlsplit

from ..config import Auth, url_port
from .errors import OllamaError

_tls_context: Optional[ssl.SSLContext] = None
_tls_lock = threading.Lock()


def tls_context() -> ssl.SSLContext:
    """One client TLS context for the process (system CAs, as http.client uses); building one costs ~15 ms."""
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            _tls_context = ssl.create_default_context()
        return _tls_context


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


class Endpoint:
    """One target's address and credentials; credentials are read at first use, then kept."""

    def __init__(self, url: str, auth: Optional[Auth] = None):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = url_port(url)
        self.base_path = parts.path.rstrip("/")
        self.where = f"{self.host}:{self.port}"
        self._auth = auth
        self._headers: Optional[dict[str, str]] = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.https else 'http'}://{host}:{self.port}{self.base_path}"

    def headers(self) -> dict[str, str]:
        if self._headers is None:
            # Read once per client (a client lives for one scenario run), not per request.
            self._headers = auth_headers(self._auth)
        return self._headers

    def request_head(self, path: str, length: int, accept: str = "application/x-ndjson, application/json") -> bytes:
        """The head of a POST with a JSON body of `length` bytes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != (443 if self.https else 80):
            host = f"{host}:{self.port}"
        lines = [
            f"POST {self.base_path}{path} HTTP/1.1",
            f"Host: {host}",
            "Accept-Encoding: identity",
            f"Accept: {accept}",
            "Content-Type: application/json",
            f"Content-Length: {length}",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers().items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def connect(self, timeout: float) -> socket.socket:
        """A connected socket (TLS for https), TCP_NODELAY set."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except socket.timeout:
            raise OllamaError("timeout", f"connect to {self.where} timed out") from None
        except OSError as exc:
            raise OllamaError("connection", f"cannot connect to {self.where}: {exc}") from None
        try:
            # Small NDJSON chunks must not wait for Nagle on our side of the request either.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.https:
                sock = tls_context().wrap_socket(sock, server_hostname=self.host)
        except socket.timeout:
            sock.close()
            raise OllamaError("timeout", f"connect to {self.where} timed out") from None
        except OSError as exc:
            sock.close()
            raise OllamaError("connection", f"cannot connect to {self.where}: {exc}") from None
        return sock

    def send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.sendall(data)
        except socket.timeout:
            raise OllamaError("timeout", f"no response from {self.where} within the timeout") from None
        except OSError as exc:
            raise OllamaError("connection", f"request to {self.where} failed: {exc!r}") from None
