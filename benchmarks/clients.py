"""The benchmark's clients and the server they stream from.

A dedicated streaming server (tests/kit/stream_server.py) runs in its own
process and logs time.monotonic() right before each token's send(); the client
side runs in the benchmark's process. Linux has one monotonic clock for all
processes, so the two sides' timestamps can be subtracted directly.

Clients compared in the same run, on the same server, interleaved:
  engine      exporter.probe.run_probe (exporter.ollama, raw transport), feeding the real
              sinks (ProbeMetrics on a registry and the JSON-lines ResultsWriter),
              one thread per concurrent request as exporter.runner does.
  ollama-py   the `ollama` package: Client(host).generate(..., stream=True), one
              thread per request, a timestamp per yielded chunk; no sinks.
  engine-old  the same engine with the previous stream reader (http.client,
              timestamps taken in user space after each read):
              OllamaClient(target, transport="http.client"). The before/after of the change.
  engine-stamp  (busy-host workload) the engine's raw reader with late stamps only marked,
              not re-timed from created_at: RawSocketTransport(recover=False).
  engine-stamp-fifo  the same, each probe thread at SCHED_FIFO priority 1 (a reader
              thread the scheduler favours; needs CAP_SYS_NICE).

Every client has `name`, `one(rid, n, rate, ttft, concurrency) -> Sample` and `close()`.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

from exporter.config import Case, Scenario, Target
from exporter.metrics import ProbeMetrics
from exporter.ollama import OllamaClient
from exporter.ollama.rawsocket import RawSocketTransport
from exporter.probe import run_probe
from exporter.results import ResultsWriter
from exporter.state import StateStore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MONO = time.monotonic


class StreamServer:
    """tests/kit/stream_server.py in a child process."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.kit.stream_server", "--port", "0"],
            stdout=subprocess.PIPE, text=True,
            # It imports the exporter's receive-stamp helpers: the same copy as this process.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (ROOT, os.environ.get("PYTHONPATH"))))},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"stream server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def drain(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", "/_bench/drain")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Sample:
    rid: str
    t0: float
    recv: list  # absolute monotonic time of each token as the client timestamped it
    ok: bool
    error: Optional[str] = None
    late: Optional[bool] = None  # the first token's read also delivered later data (engine only)
    recovered: Optional[bool] = None  # ... and its time was re-timed from created_at


def prompt_for(rid: str, n: int, rate: float, ttft: float) -> str:
    return f"bench id={rid} n={n} rate={rate:g} ttft={ttft:.6f}"


def _scenario(target: Target, concurrency: int = 1, api: str = "generate") -> Scenario:
    return Scenario(
        name="bench", model="bench", api=api, targets=(target,), interval=60.0, cron=None,
        repeats=1, warmup=0, concurrency=(concurrency,), keep_alive=None, timeout=60.0, think=None, cases=(),
    )


class EngineClient:
    """exporter.probe.run_probe feeding the exporter's real sinks."""

    def __init__(self, name: str, url: str, transport: Optional[str] = None, results_dir: Optional[str] = None,
                 recover: bool = True, fifo: bool = False, api: str = "generate"):
        self.name = name
        self.api = api  # generate (NDJSON) or openai (/v1/chat/completions, server-sent events)
        self.target = Target(name="bench", url=url, process_match=None)
        self.client = OllamaClient(self.target, transport=transport)
        if not recover:
            self.client.transport = RawSocketTransport(recover=False)
        self.fifo = fifo
        # The exporter's probe sink on a store open to any key: the bench has no config file.
        self.metrics = ProbeMetrics(StateStore(open_keys=True))
        self.results_dir = results_dir or tempfile.mkdtemp(prefix="probe-bench-")
        self.writer = ResultsWriter(os.path.join(self.results_dir, f"{name}.jsonl"))
        self.scenarios = {}

    def one(self, rid: str, n: int, rate: float, ttft: float, concurrency: int) -> Sample:
        scenario = self.scenarios.get(concurrency)
        if scenario is None:
            scenario = self.scenarios[concurrency] = _scenario(self.target, concurrency, self.api)
        prompt = prompt_for(rid, n, rate, ttft)
        case = Case(name="c", prompt=prompt, system=None, options={})
        if self.fifo:
            r = _in_fifo_thread(lambda: run_probe(self.client, scenario, case, concurrency=concurrency))
        else:
            r = run_probe(self.client, scenario, case, concurrency=concurrency)
        self.metrics.on_result(r)
        self.writer.write(r)
        if not r.ok or r.sent_at_monotonic is None or r.ttft_s is None:
            return Sample(rid, 0.0, [], False, f"{r.reason}: {r.error}")
        first = r.sent_at_monotonic + r.ttft_s
        recv = [first]
        t = first
        for g in r.inter_token_gaps_s:
            t += g
            recv.append(t)
        return Sample(rid, r.sent_at_monotonic, recv, True, late=r.first_token_stamp_late,
                      recovered=r.first_token_recovered)

    def close(self) -> None:
        self.writer.close()


def _in_fifo_thread(fn):
    """fn() on a thread of its own at SCHED_FIFO 1, which ends with it: the priority never
    reaches the caller's thread, nor a process forked from it."""
    box = []

    def run():
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        box.append(fn())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    return box[0]


def _normal_priority() -> None:
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def fifo_allowed() -> bool:
    """Whether this process may put a thread at SCHED_FIFO (root or CAP_SYS_NICE)."""
    box = []

    def attempt():
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            box.append(True)
        except (OSError, AttributeError):
            box.append(False)

    t = threading.Thread(target=attempt)
    t.start()
    t.join()
    return box[0]


# Spins until its parent goes away or 20 minutes pass: never outlives a benchmark killed hard.
BUSY_LOOP = """
import os, time
parent, end = os.getppid(), time.monotonic() + 1200
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(100000):
        pass
"""


class BusyHost:
    """`n` processes spinning on the CPU for the life of a `with` block: the host's cores
    oversubscribed by other work (started and ended here, by their own ids)."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list = []

    def __enter__(self) -> "BusyHost":
        # Ordinary processes, whatever the policy of the thread that starts them.
        self.procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], preexec_fn=_normal_priority)
                      for _ in range(self.n)]
        time.sleep(0.5)  # let them take the cores
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait(10)


class OllamaPyClient:
    """The plainest client a user would write: the ollama package's streaming loop."""

    def __init__(self, url: str):
        import ollama

        self.name = "ollama-py"
        self.client = ollama.Client(host=url, timeout=60)

    def one(self, rid: str, n: int, rate: float, ttft: float, concurrency: int) -> Sample:
        recv = []
        t0 = MONO()
        try:
            for part in self.client.generate(model="bench", prompt=prompt_for(rid, n, rate, ttft), stream=True):
                now = MONO()
                if part.response:
                    recv.append(now)
        except Exception as exc:  # noqa: BLE001 - a benchmark records, never stops
            return Sample(rid, t0, recv, False, repr(exc)[:200])
        return Sample(rid, t0, recv, bool(recv))

    def close(self) -> None:
        pass
