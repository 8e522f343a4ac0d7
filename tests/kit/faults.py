"""The fault matrix: each fault made real (a real Ollama where it can be, the fake server otherwise),
probed with the exporter's own engine, and judged on what the exporter reports.

Used by tests/test_faults.py (assertions) and scripts/reliability.py (the table).
"""

from __future__ import annotations

import logging
import signal
import socket
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import psutil
from prometheus_client import CollectorRegistry

from exporter.config import load_text
from exporter.runner import ScenarioRunner

from .exporters import CollectingSink, ProbeStack
from .fake_ollama import Behavior, FakeOllama

MODEL_REAL = "smollm2-135m"


@dataclass
class FaultOutcome:
    fault: str
    expected: tuple[str, ...]
    reasons: list[str] = field(default_factory=list)
    success_gauge: Optional[float] = None
    logged: bool = False
    lost: int = 0
    recover_s: Optional[float] = None
    threads_before: int = 0
    threads_after: int = 0
    elapsed_s: float = 0.0
    notes: str = ""

    @property
    def reason(self) -> str:
        return ",".join(sorted(set(self.reasons))) or "-"

    @property
    def ok(self) -> bool:
        return (
            bool(self.reasons)
            and set(self.reasons) <= set(self.expected)
            and self.success_gauge == 0
            and self.logged
            and self.threads_after <= self.threads_before
        )


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class Probe:
    """A scenario against one URL with its own registry, as the exporter would run it."""

    def __init__(self, url: str, model: str = "tiny", timeout: str = "5s", extra: str = "", num_predict: int = 8):
        self.config = load_text(textwrap.dedent(f"""\
            targets: [{{name: t, url: "{url}", process_match: null}}]
            scenarios:
              - name: fault
                model: {model}
                timeout: {timeout}
                options: {{temperature: 0, seed: 1, num_predict: {num_predict}}}
                cases: {{short: {{prompt: "What is AI?"}}}}
            """) + textwrap.indent(extra, "    "), "fault")
        self.registry = CollectorRegistry()
        stack = ProbeStack(self.registry, self.config)
        self.metrics, self.stats = stack.metrics, stack.servers
        self.records = []

    def run(self):
        scenario = self.config.scenarios[0]
        keep = CollectingSink()
        ScenarioRunner(scenario, scenario.targets[0], [self.metrics, keep]).run()
        self.records += keep.results
        return keep.results

    def success(self) -> Optional[float]:
        return self.registry.get_sample_value("llm_probe_success", {"target": "t", "scenario": "fault"})

    def server_up(self) -> Optional[float]:
        self.stats.poll()
        return self.registry.get_sample_value("llm_server_up", {"target": "t"})


def _settle_threads(baseline: int, deadline_s: float = 10.0) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and threading.active_count() > baseline:
        time.sleep(0.05)
    return threading.active_count()


def measure(fault: str, expected: tuple[str, ...], body: Callable[[FaultOutcome], None]) -> FaultOutcome:
    out = FaultOutcome(fault, expected)
    capture = _LogCapture()
    logging.getLogger("exporter").addHandler(capture)
    out.threads_before = threading.active_count()
    t0 = time.monotonic()
    try:
        body(out)
    finally:
        logging.getLogger("exporter").removeHandler(capture)
    out.elapsed_s = time.monotonic() - t0
    out.threads_after = _settle_threads(out.threads_before)
    out.logged = any("probe failed" in m and any(r in m for r in out.reasons) for m in capture.messages)
    return out


def _recover(probe: Probe, out: FaultOutcome, since: float, tries: int = 20) -> None:
    for _ in range(tries):
        if all(r.ok for r in probe.run()):
            out.recover_s = time.monotonic() - since
            return
        time.sleep(0.2)


def _failed(out: FaultOutcome, records) -> None:
    bad = [r for r in records if not r.ok]
    out.reasons += [r.reason for r in bad]
    out.lost += len(bad)


# ---- faults made with the fake server ----

def _fake_server_fault(fault: str, expected: tuple[str, ...], behavior: Behavior, **probe_args) -> FaultOutcome:
    """The fake server misbehaves as told for one run, then behaves: the failure, then the recovery."""
    def body(out):
        with FakeOllama(behavior) as server:
            probe = Probe(server.url, **probe_args)
            _failed(out, probe.run())
            out.success_gauge = probe.success()
            server.behavior = Behavior(load_time=0)
            _recover(probe, out, time.monotonic())
    return measure(fault, expected, body)


def stall_after_headers() -> FaultOutcome:
    return _fake_server_fault("stall after response headers", ("timeout",),
                              Behavior(mode="stall", load_time=0, stall_seconds=30), timeout="1s")


def burst_of_503() -> FaultOutcome:
    return _fake_server_fault("burst of 503 (queue full)", ("server_busy",), Behavior(mode="http_503"),
                              extra="repeats: 5\n")


def unresolvable_host() -> FaultOutcome:
    def body(out):
        probe = Probe("http://no-such-ollama-host.invalid:11434")
        _failed(out, probe.run())
        out.success_gauge = probe.success()
        out.notes = f"server_up={probe.server_up():g}"
    return measure("host name does not resolve", ("connection",), body)


def black_hole() -> FaultOutcome:
    """Accepts connections (the kernel's backlog does) and never answers."""
    def body(out):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        try:
            probe = Probe(f"http://127.0.0.1:{sock.getsockname()[1]}", timeout="1s", extra="repeats: 2\n")
            _failed(out, probe.run())
            out.success_gauge = probe.success()
        finally:
            sock.close()
    return measure("accepts connections, never answers", ("timeout",), body)


def fake_faults() -> list[FaultOutcome]:
    return [stall_after_headers(), burst_of_503(), unresolvable_host(), black_hole()]


# ---- faults made with a real Ollama ----

def _runner_children(server) -> list[psutil.Process]:
    """The model runner: `ollama runner` up to 0.29, `llama-server` from 0.30.0."""
    try:
        return [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                if any(w in " ".join(p.cmdline()) for w in ("runner", "llama-server"))]
    except psutil.Error:
        return []


def _kill_later(delay: float, fn) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


def server_killed_mid_stream(make_server) -> FaultOutcome:
    def body(out):
        server = make_server()
        try:
            probe = Probe(server.url, model=MODEL_REAL, timeout="60s", num_predict=4000)
            probe.run()  # load the model, so that the kill lands in a stream, not in a load
            timer = _kill_later(1.5, server.kill)
            _failed(out, probe.run())
            timer.join()
            out.success_gauge = probe.success()
            server.stop()
            server.start()
            since = time.monotonic()
            probe.config = Probe(server.url, model=MODEL_REAL, num_predict=8).config
            _recover(probe, out, since)
        finally:
            server.stop()
    return measure("server killed in the middle of a stream", ("stream_error", "connection"), body)


def server_restarted(make_server) -> FaultOutcome:
    def body(out):
        server = make_server()
        try:
            # The first request loads the model: on a busy host that takes longer than 5 s.
            probe = Probe(server.url, model=MODEL_REAL, timeout="60s", num_predict=8)
            assert probe.run()[0].ok and probe.server_up() == 1
            server.stop()
            _failed(out, probe.run())
            out.success_gauge = probe.success()
            up_while_down = probe.server_up()
            server.start()
            since = time.monotonic()
            _recover(probe, out, since)
            out.notes = f"server_up {up_while_down:g} while down, {probe.server_up():g} after restart"
        finally:
            server.stop()
    return measure("server restarted", ("connection",), body)


def runner_killed(make_server) -> FaultOutcome:
    def body(out):
        server = make_server()
        try:
            probe = Probe(server.url, model=MODEL_REAL, timeout="60s", num_predict=4000)
            probe.run()

            def kill_runner():
                for p in _runner_children(server):
                    p.send_signal(signal.SIGKILL)

            timer = _kill_later(1.5, kill_runner)
            _failed(out, probe.run())
            timer.join()
            out.success_gauge = probe.success()
            probe.config = Probe(server.url, model=MODEL_REAL, num_predict=8).config
            _recover(probe, out, time.monotonic())
        finally:
            server.stop()
    return measure("model runner killed during generation", ("stream_error", "http_error", "connection"), body)


def load_longer_than_timeout(make_server) -> FaultOutcome:
    def body(out):
        server = make_server()
        try:
            probe = Probe(server.url, model=MODEL_REAL, timeout="150ms", num_predict=8)
            from exporter.ollama import OllamaClient

            OllamaClient(probe.config.targets[0]).unload(MODEL_REAL)
            time.sleep(0.5)
            _failed(out, probe.run())
            out.success_gauge = probe.success()
            probe.config = Probe(server.url, model=MODEL_REAL, timeout="60s", num_predict=8).config
            _recover(probe, out, time.monotonic())
        finally:
            server.stop()
    return measure("model load longer than the request timeout", ("timeout",), body)


def real_faults(make_server) -> list[FaultOutcome]:
    return [server_killed_mid_stream(make_server), server_restarted(make_server), runner_killed(make_server),
            load_longer_than_timeout(make_server)]


def table(outcomes: list[FaultOutcome]) -> str:
    rows = [("fault", "reason reported", "expected", "success gauge", "logged", "requests lost", "time to recover",
             "threads before/after", "verdict")]
    for o in outcomes:
        rows.append((o.fault, o.reason, "/".join(o.expected),
                     "-" if o.success_gauge is None else f"{o.success_gauge:g}",
                     "yes" if o.logged else "no", str(o.lost), "-" if o.recover_s is None else f"{o.recover_s:.2f} s",
                     f"{o.threads_before}/{o.threads_after}", "ok" if o.ok else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
