"""The HTTP side: /metrics, a landing page, health, readiness and reload; TLS and basic auth
from a `--web.config.file` in the Prometheus exporter-toolkit format."""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import logging
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

import bcrypt
import yaml
from prometheus_client.exposition import ThreadingWSGIServer

from . import __version__
from .config import Config
from .exposition import CachedExposition
from .results import SCOPE as ACCEPT_SCOPE

log = logging.getLogger(__name__)
# Our names are all legacy-safe, so the classic text format is what generate_latest writes;
# say so explicitly: every Prometheus since 2.0 parses it.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class LandingPage:
    """What the landing page lists: one row per scenario and target, and the config's source."""

    rows: tuple[tuple[str, str, str, int, str], ...] = ()  # scenario, target, model, cases, schedule
    source: str = ""

    @classmethod
    def of(cls, config: Config) -> "LandingPage":
        rows = []
        for scenario in config.scenarios:
            schedule = f"every {scenario.interval:g}s" if scenario.interval else f"cron {scenario.cron}"
            for target in scenario.targets:
                rows.append((scenario.name, target.name, scenario.model, len(scenario.cases), schedule))
        return cls(tuple(rows), config.source)


def _landing(page: LandingPage) -> bytes:
    rows = [
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(*(html.escape(str(x)) for x in row))
        for row in page.rows
    ]
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ollama-perf-exporter</title></head>
<body>
<h1>ollama-perf-exporter {html.escape(__version__)}</h1>
<p>Continuous performance probes of Ollama servers. Probe metrics come from scheduled background runs.</p>
<ul>
<li><a href="metrics">Metrics</a></li>
<li><a href="-/healthy">Health</a> and <a href="-/ready">readiness</a></li>
</ul>
<h2>Scenarios</h2>
<table border="1" cellpadding="4">
<tr><th>scenario</th><th>target</th><th>model</th><th>cases</th><th>schedule</th></tr>
{''.join(rows)}
</table>
<p>Config: {html.escape(page.source)}</p>
</body></html>
"""
    return body.encode()


def create_app(
    exposition: CachedExposition,
    reload: Optional[Callable[[], tuple[bool, str]]] = None,
    ready: Callable[[], bool] = lambda: True,
    landing: Callable[[], LandingPage] = LandingPage,
    accept: Optional[Callable[[dict], tuple[int, str]]] = None,
) -> Callable:
    """WSGI app; /metrics serves the exposition's last background rendering (text format 0.0.4).

    `reload` returns (ok, message) and may be absent (then /-/reload is 404); `ready` says
    whether the probes run; `landing` gives the landing page's current contents; `accept`
    takes a scope (target, scenario, model, case, concurrency, start, quantity: None matches any)
    and returns (series accepted, message), -1 series while it cannot now (503): POST
    /-/accept?target=...&case=... (docs/regression.md).
    """

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")

        def reply(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8"):
            start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
            return [body]

        if path == "/metrics":
            gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            chunks = exposition.get_chunks(gzipped)
            headers = [("Content-Type", TEXT_FORMAT), ("Content-Length", str(sum(map(len, chunks))))]
            if gzipped:
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return chunks
        if path == "/-/reload" and reload is not None:
            if method not in ("POST", "PUT"):
                return reply("405 Method Not Allowed", b"use POST to reload the config\n")
            ok, message = reload()
            return reply("200 OK" if ok else "500 Internal Server Error", (message + "\n").encode())
        if path == "/-/accept" and accept is not None:
            if method != "POST":
                return reply("405 Method Not Allowed", b"use POST to accept the current level as the new reference\n")
            query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=False)
            unknown = sorted(set(query) - set(ACCEPT_SCOPE))
            if unknown:
                message = f"unknown parameter(s): {', '.join(unknown)}; use {', '.join(ACCEPT_SCOPE)}\n"
                return reply("400 Bad Request", message.encode())
            if "target" not in query:
                return reply("400 Bad Request", b"target is required (and scenario, model, case, concurrency, "
                                                b"start, quantity narrow it)\n")
            n, message = accept({k: query[k][-1] if k in query else None for k in ACCEPT_SCOPE})
            status = "200 OK" if n > 0 else "503 Service Unavailable" if n < 0 else "404 Not Found"
            return reply(status, (message + "\n").encode())
        if method not in ("GET", "HEAD"):
            return reply("405 Method Not Allowed", b"method not allowed\n")
        if path == "/":
            return reply("200 OK", _landing(landing()), "text/html; charset=utf-8")
        if path == "/-/healthy":
            return reply("200 OK", b"Healthy\n")
        if path == "/-/ready":
            if ready():
                return reply("200 OK", b"Ready\n")
            return reply("503 Service Unavailable", b"Not ready\n")
        return reply("404 Not Found", b"not found\n")

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature from the base class
        log.debug("http: " + format, *args)


class _TLSWSGIServer(ThreadingWSGIServer):
    """TLS on each accepted connection, the handshake in the connection's own thread: done in
    accept(), a client that never finishes its handshake would hold every other client up."""

    web_config: "WebConfigFile"
    handshake_timeout = 10.0

    def get_request(self):
        sock, addr = self.socket.accept()
        context = self.web_config.current().tls_context
        if context is None:
            return sock, addr
        sock.settimeout(self.handshake_timeout)
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                # A scanner, a plain-HTTP client or a wrong certificate: nothing to serve.
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


class HTTPServer:
    """The WSGI app on a threaded server, in a background thread; with a web config, behind its
    TLS and basic auth."""

    def __init__(self, app: Callable, host: str, port: int, web_config: Optional["WebConfigFile"] = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        attrs: dict[str, Any] = {"address_family": family}
        base: type = ThreadingWSGIServer
        if web_config is not None:
            base = _TLSWSGIServer
            attrs["web_config"] = web_config
            app = with_basic_auth(app, web_config)
        server_cls = type("ExporterWSGIServer", (base,), attrs)
        self.server = make_server(host, port, app, server_cls, handler_class=_QuietHandler)
        self.thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_listen_address(value: str) -> tuple[str, int]:
    """'127.0.0.1:9877', ':9877' (all interfaces, as the user asked) or '[::1]:9877'."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {value!r}: expected HOST:PORT")
    host = host.strip("[]")
    return (host or "0.0.0.0"), int(port)


# ---------------------------------------------------------------- --web.config.file
#
# The exporter-toolkit format every Prometheus exporter reads (node_exporter, blackbox, ...):
#
#   tls_server_config:
#     cert_file: server.crt
#     key_file: server.key
#     client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
#     client_ca_file: ca.crt
#     min_version: TLS12                            # TLS10 ... TLS13
#   http_server_config:
#     headers: {Strict-Transport-Security: max-age=31536000}
#   basic_auth_users:
#     prometheus: $2y$10$...                         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')
#
# Relative paths are relative to the web config file. Like the toolkit, the file is read again
# when it (or a certificate, key or CA file) changes, so a renewed certificate or a new user is
# taken without a restart; a version that does not load is logged and the last good one stays.
# Keys this server cannot honour (cipher_suites, curve_preferences, client_allowed_sans, ...)
# are refused rather than ignored: a security setting that silently does nothing is worse than
# an error at start.

TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
# Health and readiness stay open to probes that carry no credentials (a kubelet, a compose
# healthcheck): they say only "Healthy" or "Ready". Everything else needs a user: /metrics, the
# landing page (it lists scenarios, targets and models) and /-/reload.
UNAUTHENTICATED_PATHS = frozenset({"/-/healthy", "/-/ready"})
# Compared against when the user is unknown, so that a wrong user costs as long as a wrong
# password and the timing does not tell which users exist (a bcrypt hash of a random string).
_DUMMY_HASH = b"$2b$10$mv0cfKZuUpb5Mwnk3eVQzuCu2PS/iVGXrjoQ7yVbXl9q1md8F6g8q"


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
    users: dict[str, bytes] = field(default_factory=dict)
    tls_context: Optional[ssl.SSLContext] = None
    headers: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()  # every file read, for the change check


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: expected a mapping")
    return value


def load_web_config(path: str) -> WebConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise WebConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    data = _mapping(data, path)
    unknown = set(data) - {"tls_server_config", "http_server_config", "basic_auth_users"}
    if unknown:
        raise WebConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    base = os.path.dirname(os.path.abspath(path))
    files = [os.path.abspath(path)]

    def resolve(name: Any, key: str) -> str:
        if not isinstance(name, str) or not name:
            raise WebConfigError(f"{path}: tls_server_config.{key}: expected a file name")
        full = os.path.join(base, name)
        if not os.path.isfile(full):
            raise WebConfigError(f"{path}: tls_server_config.{key}: {full} does not exist")
        files.append(full)
        return full

    users: dict[str, bytes] = {}
    for user, hashed in _mapping(data.get("basic_auth_users"), "basic_auth_users").items():
        raw = str(hashed).encode()
        if not raw.startswith((b"$2a$", b"$2b$", b"$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2y$...), "
                                 "never a plain password")
        users[str(user)] = raw

    http = _mapping(data.get("http_server_config"), "http_server_config")
    unknown = set(http) - {"headers", "http2"}
    if unknown:
        raise WebConfigError(f"{path}: http_server_config: unsupported key(s) {', '.join(sorted(unknown))}")
    # http2 is accepted for files written for Go exporters; this server speaks HTTP/1.1 only.
    headers = tuple((str(k), str(v)) for k, v in _mapping(http.get("headers"), "http_server_config.headers").items())

    context = None
    tls = _mapping(data.get("tls_server_config"), "tls_server_config")
    if tls:
        unknown = set(tls) - TLS_KEYS
        if unknown:
            raise WebConfigError(f"{path}: tls_server_config: unsupported key(s) {', '.join(sorted(unknown))} "
                                 f"(supported: {', '.join(sorted(TLS_KEYS))})")
        if "cert_file" not in tls or "key_file" not in tls:
            raise WebConfigError(f"{path}: tls_server_config needs cert_file and key_file")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # The toolkit's default minimum is TLS 1.2.
        bounds = (("min_version", "minimum_version", "TLS12"), ("max_version", "maximum_version", None))
        for key, attr, default in bounds:
            name = tls.get(key, default)
            if name is None:
                continue
            if name not in TLS_VERSIONS:
                raise WebConfigError(f"{path}: tls_server_config.{key}: {name!r}, expected one of "
                                     f"{', '.join(TLS_VERSIONS)}")
            setattr(context, attr, TLS_VERSIONS[name])
        try:
            context.load_cert_chain(resolve(tls["cert_file"], "cert_file"), resolve(tls["key_file"], "key_file"))
        except ssl.SSLError as exc:
            raise WebConfigError(f"{path}: tls_server_config: cannot load the certificate and key: {exc}") from None
        auth = tls.get("client_auth_type", "NoClientCert")
        if auth not in CLIENT_AUTH:
            raise WebConfigError(f"{path}: tls_server_config.client_auth_type: {auth!r}, supported: "
                                 f"{', '.join(CLIENT_AUTH)}")
        context.verify_mode = CLIENT_AUTH[auth]
        if "client_ca_file" in tls:
            try:
                context.load_verify_locations(resolve(tls["client_ca_file"], "client_ca_file"))
            except ssl.SSLError as exc:
                raise WebConfigError(f"{path}: tls_server_config.client_ca_file: {exc}") from None
        elif context.verify_mode != ssl.CERT_NONE:
            raise WebConfigError(f"{path}: tls_server_config.client_auth_type {auth} needs client_ca_file")
    return WebConfig(users, context, headers, tuple(files))


def _signature(files: tuple[str, ...]) -> tuple:
    out: list[Optional[tuple[int, int, int]]] = []
    for name in files:
        try:
            st = os.stat(name)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class WebConfigFile:
    """The web config in force: loaded at start (an error there stops the exporter), then read
    again when one of its files changes, at most once a second."""

    def __init__(self, path: str, clock: Optional[Callable[[], float]] = None):
        self.path = path
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._config = load_web_config(path)
        self._signature = _signature(self._config.files)
        self._checked = self._clock()
        self._cache: dict[tuple[str, bytes], bytes] = {}

    def current(self) -> WebConfig:
        with self._lock:
            now = self._clock()
            if now - self._checked >= 1.0:
                self._checked = now
                signature = _signature(self._config.files)
                if signature != self._signature:
                    self._signature = signature
                    try:
                        self._config = load_web_config(self.path)
                        self._signature = _signature(self._config.files)
                        self._cache.clear()
                        log.info("web config %s reloaded", self.path)
                    except WebConfigError as exc:
                        log.error("web config not reloaded, the last good one stays: %s", exc)
            return self._config

    def authenticate(self, user: str, password: str) -> bool:
        config = self.current()
        hashed = config.users.get(user)
        # bcrypt costs tens of milliseconds by design; Prometheus sends the same credentials on
        # every scrape, so a success is remembered (keyed by a SHA-256 of the password, never
        # the password) until the file changes.
        key = (user, hashlib.sha256(password.encode()).digest())
        with self._lock:
            if hashed is not None and self._cache.get(key) == hashed:
                return True
        try:
            ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        except ValueError:
            ok = False
        if ok and hashed is not None:
            with self._lock:
                if len(self._cache) > 1000:
                    self._cache.clear()
                self._cache[key] = hashed
            return True
        return False


def with_basic_auth(app: Callable, web_config: WebConfigFile) -> Callable:
    """The app behind the web config's users (when it has any) and with its extra headers."""

    def guarded(environ, start_response):
        config = web_config.current()

        def start(status, headers, exc_info=None):
            return start_response(status, list(headers) + list(config.headers), exc_info)

        if config.users and environ.get("PATH_INFO", "/") not in UNAUTHENTICATED_PATHS:
            if not _authorized(environ.get("HTTP_AUTHORIZATION", ""), web_config):
                body = b"Unauthorized\n"
                start("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                           ("Content-Length", str(len(body))),
                                           ("WWW-Authenticate", 'Basic realm="ollama-perf-exporter"')])
                return [body]
        return app(environ, start)

    return guarded


def _authorized(header: str, web_config: WebConfigFile) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    if not sep:
        return False
    return web_config.authenticate(user, password)
