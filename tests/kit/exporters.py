"""Exporters under test: in this process (threads) or as a child process, plus small helpers."""

from __future__ import annotations

import collections
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from exporter.keyspace import Keyspace
from exporter.live_stats import LiveStats
from exporter.metrics import ProbeMetrics
from exporter.results import BatchSummary, ProbeResult, RunSummary
from exporter.server_stats import ServerStats
from exporter.sinks import Sink
from exporter.state import StateStore

# The source tree the kit belongs to: a child exporter runs from here, so it is this code.
ROOT = str(Path(__file__).resolve().parents[2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    """The predicate's first truthy value; AssertionError when `timeout` seconds pass without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 and an empty body when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError):
        return 0, ""


def scenario_yaml(url: str, *, model="tiny", extra="", cases=None, name="s", target_extra="", top_extra="") -> str:
    """A one-target, one-scenario config (target t1, hourly), with room for extra scenario keys."""
    cases = cases or {"short": "hello there"}
    case_lines = "\n".join(f"      {k}: {{prompt: {v!r}}}" for k, v in cases.items())
    return textwrap.dedent(f"""\
        targets:
          - name: t1
            url: {url}
            process_match: null
        {target_extra}
        """) + top_extra + textwrap.dedent(f"""\
        scenarios:
          - name: {name}
            model: {model}
            schedule: {{interval: 1h}}
            timeout: 5s
        """) + (textwrap.indent(textwrap.dedent(extra), "    ") if extra else "") + "    cases:\n" + case_lines + "\n"


class CollectingSink(Sink):
    """Keeps every record, batch and run summary."""

    def __init__(self):
        self.results: list[ProbeResult] = []
        self.batches: list[BatchSummary] = []
        self.runs: list[RunSummary] = []

    def on_result(self, result: ProbeResult) -> None:
        self.results.append(result)

    def on_batch(self, batch: BatchSummary) -> None:
        self.batches.append(batch)

    def on_run(self, run: RunSummary) -> None:
        self.runs.append(run)


class ProbeStack:
    """The exporter's state store and the sinks that feed it, for one config, as the Exporter
    wires them; readable through `registry.get_sample_value` when a registry is given."""

    def __init__(self, registry=None, config=None, clock=time.time, client_factory=None):
        self.store = StateStore()
        self.metrics = ProbeMetrics(self.store, clock=clock)
        self.live = LiveStats(self.store)
        self.servers = ServerStats(self.store, **({"client_factory": client_factory} if client_factory else {}))
        if registry is not None:
            registry.register(self.store)
        if config is not None:
            self.load(config)

    def load(self, config) -> "ProbeStack":
        """What a config load does: swap the key space, hand the servers their targets."""
        self.store.swap(Keyspace.of(config))
        self.servers.set_targets(config.targets)
        return self

    @property
    def sinks(self) -> list:
        return [self.metrics, self.live]


def all_families(exporter) -> list:
    """Every metric family of an in-process Exporter's /metrics: its state store and its own registry."""
    return [*exporter.store.collect(), *exporter.registry.collect()]


def sample_value(exporter, name: str, labels: Optional[dict] = None) -> Optional[float]:
    """One sample of an in-process Exporter's /metrics, None when absent."""
    for family in all_families(exporter):
        for s in family.samples:
            if s.name == name and s.labels == (labels or {}):
                return s.value
    return None


def server_stats(targets, registry=None) -> ServerStats:
    """ServerStats for these targets alone, on its own store (readable through `registry`)."""
    from exporter.keyspace import KINDS, SERVER

    targets = list(targets)
    store = StateStore()
    if registry is not None:
        registry.register(store)
    stats = ServerStats(store)
    store.swap(Keyspace({**{kind: {} for kind in KINDS}, SERVER: {t.name: None for t in targets}}))
    stats.set_targets(targets)
    return stats


def open_live_stats(registry=None, policy=None) -> LiveStats:
    """LiveStats on a store that takes any key: for feeding records without a config."""
    store = StateStore(open_keys=True)
    if registry is not None:
        registry.register(store)
    return LiveStats(store) if policy is None else LiveStats(store, policy)


class ThreadedExporter:
    """The Exporter service and its HTTP server in this process, on a free port.

    Stopping waits at most `grace` seconds for runs in flight, so a test never hangs on one.
    """

    def __init__(self, config_path: str, results_path: Optional[str] = None, grace: float = 5.0, shard=None):
        from exporter.config import load_file
        from exporter.http import HTTPServer
        from exporter.service import Exporter
        from exporter.shard import Shard

        self.exporter = Exporter(config_path, load_file(config_path), results_path=results_path,
                                 shard=shard or Shard())
        self.server = HTTPServer(self.exporter.app(), "127.0.0.1", 0)
        self.grace = grace
        self.base = f"http://127.0.0.1:{self.server.port}"

    def start(self) -> "ThreadedExporter":
        self.server.start()
        self.exporter.start()
        return self

    def stop(self) -> bool:
        self.server.stop()
        return self.exporter.shutdown(self.grace)

    def __enter__(self) -> "ThreadedExporter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ExporterProcess:
    """`python -m exporter` on port 0; the real port is read from its start-up log line
    (logged at info, so the log level must stay info or debug)."""

    def __init__(self, args, env=None, timeout=60.0):
        if any(level in args for level in ("warning", "error")):
            raise ValueError("ExporterProcess reads the port from an info log line: keep --log.level info")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)  # long soaks log a lot
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        found = wait_for(lambda: next((m for m in map(pattern.search, list(self.lines)) if m), None)
                         or (self.proc.poll() is not None and "exited"), timeout=timeout, what="exporter start")
        if found == "exited":
            raise AssertionError("exporter exited at start:\n" + "".join(self.lines))
        self.port = int(found.group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def scrape(self) -> str:
        """The /metrics text, or "" if the exporter did not answer."""
        status, body = http_get(self.base + "/metrics")
        return body if status == 200 else ""

    def stop(self, sig=None, timeout=30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


def stop_process(proc, timeout: float = 15.0) -> None:
    """Terminate a child process (None or already exited: nothing to do); kill it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
