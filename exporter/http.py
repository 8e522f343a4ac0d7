"""The HTTP side: /metrics, a landing page, health, readiness and reload."""

from __future__ import annotations

import html
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

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
    and returns (series accepted, message): POST /-/accept?target=...&case=... (docs/regression.md).
    """

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET")

        def reply(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8"):
            start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
            return [body]

        if path == "/metrics":
            gzipped = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
            body = exposition.get(gzipped)
            headers = [("Content-Type", TEXT_FORMAT), ("Content-Length", str(len(body)))]
            if gzipped:
                headers.append(("Content-Encoding", "gzip"))
            start_response("200 OK", headers)
            return [body]
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
                return reply("400 Bad Request", f"unknown parameter(s): {', '.join(unknown)}; use {', '.join(ACCEPT_SCOPE)}\n".encode())
            if "target" not in query:
                return reply("400 Bad Request", b"target is required (and scenario, model, case, concurrency, start, quantity narrow it)\n")
            n, message = accept({k: query[k][-1] if k in query else None for k in ACCEPT_SCOPE})
            return reply("200 OK" if n else "404 Not Found", (message + "\n").encode())
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


class HTTPServer:
    """The WSGI app on a threaded server, in a background thread."""

    def __init__(self, app: Callable, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("ExporterWSGIServer", (ThreadingWSGIServer,), {"address_family": family})
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
