"""Measurement fidelity and footprint of the probe engine, against the plainest client.

    .venv/bin/python benchmarks/probe_bench.py [--quick] [--json PATH] [--markdown PATH]

Prints the tables and writes them to benchmarks/RESULTS.md, the raw numbers to
benchmarks/results.json (about 6 minutes; --quick about 3). --from-json PATH
prints the tables of an earlier run again.

A dedicated streaming server (tests/kit/stream_server.py) runs in its own
process and logs time.monotonic() right before each token's send(); the client
side runs here. Linux has one monotonic clock for all processes, so the two
sides' timestamps can be subtracted directly.

Definitions (all on time.monotonic()):

  TTFT error   client first-token timestamp - server first-token write time.
               Since the probe's TTFT is first - t0 (t0: when the request is sent),
               this equals client TTFT - (server first write - t0): everything the
               client adds to the true time to first token on its receiving side.
  request out  kernel receive time of the request's last bytes at the server
               (SO_TIMESTAMPNS) - client t0: the send itself and the loopback
               transfer. The probe's clock starts when the request is sent, so
               connecting (and a wait for the GIL before it) is outside its TTFT
               and recorded apart as connect_duration_s. Shown, not counted as
               TTFT error.
  gap error    |client gap - server gap| for each pair of consecutive tokens.
  CPU          CPU seconds of this (client) process, all threads, over a load
               window; the server's CPU is in the other process and not counted.

Clients compared in the same run, on the same server, interleaved:
  engine      exporter.probe.run_probe (exporter.ollama, raw transport), feeding the real
              sinks (ProbeMetrics on a registry and the JSON-lines ResultsWriter),
              one thread per concurrent request as exporter.runner does.
  ollama-py   the `ollama` package: Client(host).generate(..., stream=True), one
              thread per request, a timestamp per yielded chunk; no sinks.
  engine-old  the same engine with the previous stream reader (http.client,
              timestamps taken in user space after each read):
              OllamaClient(target, transport="http.client"). The before/after of the change.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import itertools
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest, make_wsgi_app

from exporter.config import Case, Config, Scenario, Target
from exporter.exposition import CachedExposition
from exporter.http import create_app
from exporter.metrics import ExporterMetrics, ProbeMetrics
from exporter.ollama import OllamaClient
from exporter.probe import run_probe
from exporter.results import BatchSummary, ProbeResult, ResultsWriter, RunSummary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MONO = time.monotonic
CAPACITY_RATES = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)  # tokens/s per stream, 32 streams
TARGETS = {
    "ttft_p99_c32_ms": 1.0,
    "cost_pct_of_core_100tps": 2.0,
    "scrape_ms_500": 50.0,
    "capacity_ttft_p99_ms": 5.0,
}


# ----------------------------------------------------------------------------- server

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


# ----------------------------------------------------------------------------- clients

@dataclass
class Sample:
    rid: str
    t0: float
    recv: list  # absolute monotonic time of each token as the client timestamped it
    ok: bool
    error: Optional[str] = None


def prompt_for(rid: str, n: int, rate: float, ttft: float) -> str:
    return f"bench id={rid} n={n} rate={rate:g} ttft={ttft:.6f}"


def _scenario(target: Target, concurrency: int = 1) -> Scenario:
    return Scenario(
        name="bench", model="bench", api="generate", targets=(target,), interval=60.0, cron=None,
        repeats=1, warmup=0, concurrency=(concurrency,), keep_alive=None, timeout=60.0, think=None, cases=(),
    )


class EngineClient:
    """exporter.probe.run_probe feeding the exporter's real sinks."""

    def __init__(self, name: str, url: str, transport: Optional[str] = None, results_dir: Optional[str] = None):
        self.name = name
        self.target = Target(name="bench", url=url, process_match=None)
        self.client = OllamaClient(self.target, transport=transport)
        self.registry = CollectorRegistry()
        self.metrics = ProbeMetrics(self.registry)
        self.results_dir = results_dir or tempfile.mkdtemp(prefix="probe-bench-")
        self.writer = ResultsWriter(os.path.join(self.results_dir, f"{name}.jsonl"))
        self.scenarios = {}

    def one(self, rid: str, n: int, rate: float, ttft: float, concurrency: int) -> Sample:
        scenario = self.scenarios.get(concurrency)
        if scenario is None:
            scenario = self.scenarios[concurrency] = _scenario(self.target, concurrency)
        prompt = prompt_for(rid, n, rate, ttft)
        case = Case(name="c", prompt=prompt, system=None, options={})
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
        return Sample(rid, r.sent_at_monotonic, recv, True)

    def close(self) -> None:
        self.writer.close()


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


# ----------------------------------------------------------------------------- load

@dataclass
class Cell:
    """One load pattern run by one client, with what the server logged for it."""

    client: str
    samples: list
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    logs: dict = field(default_factory=dict)
    deferred: int = 0

    def ok_samples(self):
        for s in self.samples:
            log = self.logs.get(s.rid)
            if s.ok and log and len(log[1]) == len(s.recv):
                yield s, log

    @property
    def tokens(self) -> int:
        return sum(len(s.recv) for s in self.samples)

    @property
    def failures(self) -> int:
        return sum(1 for s in self.samples if not s.ok) + sum(
            1 for s in self.samples if s.ok and (s.rid not in self.logs or len(self.logs[s.rid][1]) != len(s.recv))
        )

    def ttft_errors(self) -> list:
        return [s.recv[0] - log[1][0] for s, log in self.ok_samples()]

    def send_delays(self) -> list:
        return [log[2] - s.t0 for s, log in self.ok_samples()]

    def gap_errors(self) -> list:
        out = []
        for s, log in self.ok_samples():
            w = log[1]
            r = s.recv
            out.extend(abs((r[i] - r[i - 1]) - (w[i] - w[i - 1])) for i in range(1, len(r)))
        return out

    def token_delays(self) -> list:
        out = []
        for s, log in self.ok_samples():
            out.extend(r - w for r, w in zip(s.recv, log[1]))
        return out


_ids = itertools.count()


def _spec(rng: random.Random, ttft_range: tuple) -> float:
    return rng.uniform(*ttft_range)


def run_batches(server: StreamServer, client, concurrency: int, requests: int, n: int, rate: float,
                ttft_range: tuple, seed: int) -> Cell:
    """Like exporter.runner: per batch, one new thread per request, released together by a barrier."""
    rng = random.Random(seed)
    samples: list = []
    lock = threading.Lock()
    batches = max(1, requests // concurrency)
    server.drain()
    gc.collect()
    cpu0, wall0, scpu0 = time.process_time(), MONO(), server.cpu_seconds()
    for _ in range(batches):
        barrier = threading.Barrier(concurrency)
        specs = [(f"{client.name}-{next(_ids)}", _spec(rng, ttft_range)) for _ in range(concurrency)]

        def one(rid, ttft):
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
            s = client.one(rid, n, rate, ttft, concurrency)
            with lock:
                samples.append(s)

        threads = [threading.Thread(target=one, args=spec, daemon=True) for spec in specs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    cpu, wall, scpu = time.process_time() - cpu0, MONO() - wall0, server.cpu_seconds() - scpu0
    data = server.drain()
    return Cell(client.name, samples, wall, cpu, scpu, data["logs"], data["deferred"])


def run_closed(server: StreamServer, client, concurrency: int, duration: float, n: int, rate: float,
               ttft_range: tuple, seed: int) -> Cell:
    """Steady load: `concurrency` streams at all times, each new request on a new thread."""
    rng = random.Random(seed)
    samples: list = []
    lock = threading.Lock()
    server.drain()
    gc.collect()
    cpu0, wall0, scpu0 = time.process_time(), MONO(), server.cpu_seconds()
    stop_at = wall0 + duration

    def worker():
        while MONO() < stop_at:
            with lock:
                rid = f"{client.name}-{next(_ids)}"
                ttft = _spec(rng, ttft_range)
            box = []
            t = threading.Thread(target=lambda: box.append(client.one(rid, n, rate, ttft, concurrency)), daemon=True)
            t.start()
            t.join(120)
            with lock:
                samples.extend(box)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(duration + 120)
    cpu, wall, scpu = time.process_time() - cpu0, MONO() - wall0, server.cpu_seconds() - scpu0
    data = server.drain()
    return Cell(client.name, samples, wall, cpu, scpu, data["logs"], data["deferred"])


def merge(cells: list) -> Cell:
    out = Cell(cells[0].client, [], 0.0, 0.0, 0.0, {}, 0)
    for c in cells:
        out.samples += c.samples
        out.wall_s += c.wall_s
        out.cpu_s += c.cpu_s
        out.server_cpu_s += c.server_cpu_s
        out.logs.update(c.logs)
        out.deferred += c.deferred
    return out


def interleaved(clients: list, rounds: int, fn: Callable) -> dict:
    """Run fn(client, round) for every client, alternating, `rounds` times; merge per client."""
    parts: dict = {c.name: [] for c in clients}
    for r in range(rounds):
        order = clients if r % 2 == 0 else list(reversed(clients))
        for c in order:
            parts[c.name].append(fn(c, r))
    return {name: merge(cells) for name, cells in parts.items()}


# ----------------------------------------------------------------------------- statistics

def pct(values: list, q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def dist_ms(values: list) -> dict:
    return {
        "n": len(values),
        "p50_ms": pct(values, 50) * 1e3,
        "p99_ms": pct(values, 99) * 1e3,
        "max_ms": (max(values) * 1e3) if values else float("nan"),
    }


def cell_summary(cell: Cell) -> dict:
    return {
        "client": cell.client,
        "requests": len(cell.samples),
        "failures": cell.failures,
        "tokens": cell.tokens,
        "wall_s": cell.wall_s,
        "client_cpu_s": cell.cpu_s,
        "server_cpu_s": cell.server_cpu_s,
        "server_deferred_writes": cell.deferred,
        "aggregate_tokens_per_s": cell.tokens / cell.wall_s if cell.wall_s else float("nan"),
        "client_cpu_ms_per_1000_tokens": cell.cpu_s / cell.tokens * 1e6 if cell.tokens else float("nan"),
        "client_cpu_pct_of_core": cell.cpu_s / cell.wall_s * 100 if cell.wall_s else float("nan"),
        "ttft_error": dist_ms(cell.ttft_errors()),
        "send_delay": dist_ms(cell.send_delays()),
        "gap_error": dist_ms(cell.gap_errors()),
    }


# ----------------------------------------------------------------------------- sections

def section_ttft(server, clients, quick: bool) -> list:
    """TTFT error at each concurrency level, batches released together as the runner does."""
    out = []
    for level in (1, 8, 32, 64):
        requests = (60 if quick else 160) if level == 1 else max(level * (4 if quick else 12), 120 if quick else 400)
        per_round = max(level, requests // 2)
        cells = interleaved(clients, 2, lambda c, r: run_batches(
            server, c, level, per_round, n=10, rate=100.0, ttft_range=(0.010, 0.050), seed=level * 100 + r))
        for name, cell in cells.items():
            row = cell_summary(cell)
            row.update(section="ttft", concurrency=level, tokens_per_request=10, stream_rate=100.0)
            out.append(row)
    return out


def section_interference(server, clients, quick: bool) -> list:
    """TTFT and gap error while another thread of the same process renders /metrics nonstop.

    The worst case for a threaded Python client: 500 combinations take about a second
    of pure-Python rendering, holding the GIL in 5 ms slices, while probes stream.
    """
    registry = build_registry(500)
    stop = threading.Event()
    renders: list = []

    def scraper():
        while not stop.is_set():
            t = MONO()
            generate_latest(registry)
            renders.append(MONO() - t)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        seconds = 2.0 if quick else 4.0
        cells = interleaved(clients, 2, lambda c, r: run_closed(
            server, c, 8, seconds / 2, n=20, rate=100.0, ttft_range=(0.010, 0.050), seed=11 + r))
    finally:
        stop.set()
        thread.join()
    out = []
    for name, cell in cells.items():
        row = cell_summary(cell)
        row.update(section="interference", concurrency=8, stream_rate=100.0, tokens_per_request=20,
                   renders=len(renders), render_s_p50=pct(renders, 50))
        out.append(row)
    return out


def section_gaps(server, clients, quick: bool) -> list:
    """Inter-token gap error at 50, 500, 5000 tokens/s per stream."""
    out = []
    for level in (1, 8):
        for rate in (50.0, 500.0, 5000.0):
            seconds = 1.0 if quick else 2.0  # per round and client
            n = int(max(20, min(rate * 0.5, 2000)))
            req_s = n / rate
            cells = interleaved(clients, 2, lambda c, r: run_closed(
                server, c, level, seconds, n=n, rate=rate, ttft_range=(0.005, 0.010), seed=int(rate) + r))
            for name, cell in cells.items():
                row = cell_summary(cell)
                row.update(section="gaps", concurrency=level, stream_rate=rate, tokens_per_request=n,
                           request_s=req_s)
                out.append(row)
    return out


def section_cost(server, clients, quick: bool) -> list:
    """CPU of the client for 100 tokens/s streams: 8 at once, 100 tokens (1 s) per request."""
    out = []
    seconds = 3.0 if quick else 6.0
    cells = interleaved(clients, 2, lambda c, r: run_closed(
        server, c, 8, seconds / 2, n=100, rate=100.0, ttft_range=(0.020, 0.030), seed=7 + r))
    for name, cell in cells.items():
        row = cell_summary(cell)
        streams = 8
        row.update(section="cost", concurrency=streams, stream_rate=100.0, tokens_per_request=100,
                   cpu_pct_of_core_per_stream=cell.cpu_s / (cell.wall_s * streams) * 100)
        out.append(row)
    return out


def section_capacity(server, clients, quick: bool) -> list:
    """Raise the aggregate rate (32 streams, faster each step) until p99 TTFT error passes 5 ms."""
    out = []
    seconds = 1.5 if quick else 2.5
    rates = CAPACITY_RATES
    alive = {c.name: True for c in clients}
    for rate in rates:
        running = [c for c in clients if alive[c.name]]
        if not running:
            break
        n = int(max(10, rate * 0.5))
        cells = interleaved(running, 2, lambda c, r: run_closed(
            server, c, 32, seconds, n=n, rate=rate, ttft_range=(0.010, 0.050), seed=int(rate) * 3 + r))
        for name, cell in cells.items():
            row = cell_summary(cell)
            row.update(section="capacity", concurrency=32, stream_rate=rate, tokens_per_request=n)
            out.append(row)
            if row["ttft_error"]["p99_ms"] > TARGETS["capacity_ttft_p99_ms"] or row["failures"]:
                alive[name] = False
    return out


def _record(rng: random.Random, scenario: str, case: str, start: str, ok: bool = True) -> ProbeResult:
    r = ProbeResult(target="ollama-1", scenario=scenario, model="llama3.1:8b", case=case, concurrency=1, start=start)
    r.started_at = time.time()
    r.ended_at = r.started_at + 5
    r.ok = ok
    if not ok:
        r.reason, r.error, r.request_duration_s = "timeout", "request exceeded its timeout", 120.0
        return r
    r.ttft_s = rng.uniform(0.05, 0.6) + (rng.uniform(2, 8) if start == "cold" else 0)
    r.inter_token_gaps_s = [rng.uniform(0.02, 0.12) for _ in range(127)]
    r.request_duration_s = r.ttft_s + sum(r.inter_token_gaps_s)
    r.output_chunks = 128
    r.load_duration_s = rng.uniform(2, 8) if start == "cold" else 0.004
    r.prompt_eval_count, r.prompt_eval_duration_s = 40, rng.uniform(0.03, 0.5)
    r.eval_count, r.eval_duration_s = 128, sum(r.inter_token_gaps_s)
    r.total_duration_s = r.request_duration_s - 0.002
    r.done_reason = "length"
    return r


def build_registry(combinations: int, seed: int = 1) -> tuple:
    """An exporter registry with `combinations` scenario/case pairs declared and fed realistic records."""
    rng = random.Random(seed)
    registry = CollectorRegistry()
    pm = ProbeMetrics(registry)
    em = ExporterMetrics(registry)
    target = Target(name="ollama-1", url="http://127.0.0.1:11434", process_match=None)
    cases_per = min(10, combinations)
    scenarios = []
    for s in range((combinations + cases_per - 1) // cases_per):
        k = min(cases_per, combinations - s * cases_per)
        cases = tuple(Case(name=f"case-{j}", prompt="p", system=None, options={}) for j in range(k))
        scenarios.append(Scenario(
            name=f"scenario-{s}", model="llama3.1:8b", api="generate", targets=(target,), interval=60.0,
            cron=None, repeats=5, warmup=0, concurrency=(1,), keep_alive=None, timeout=120.0, think=None,
            cases=cases,
        ))
    config = Config(targets=(target,), scenarios=tuple(scenarios), server_stats_interval=15.0,
                    label_combinations=combinations)
    pm.declare(config)
    for sc in scenarios:
        for case in sc.cases:
            # One cold start, four warm runs and one timeout per combination.
            for start, ok in (("cold", True), ("warm", True), ("warm", True), ("warm", True), ("warm", True),
                              ("warm", False)):
                pm.on_result(_record(rng, sc.name, case.name, start, ok))
            pm.on_batch(BatchSummary("ollama-1", sc.name, "llama3.1:8b", case.name, 1, 6, 1, 8.5))
        pm.on_run(RunSummary("ollama-1", sc.name, "r", time.time() - 60, time.time(), 6 * len(sc.cases), 0))
    em.reload_ok.set(1)
    return registry


def section_scrape(quick: bool) -> list:
    out = []
    reps = 3 if quick else 5
    for combos in (1, 50, 500):
        registry = build_registry(combos)
        app = make_wsgi_app(registry)  # prometheus_client's own: renders on every scrape
        # The exporter's: serves the last background rendering (exporter/exposition.py).
        exposition = CachedExposition(registry)
        served = create_app(exposition)
        text = generate_latest(registry)
        series = sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))

        def scrape(wsgi, gzip: bool):
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "",
                       "wsgi.url_scheme": "http", "SERVER_NAME": "x", "SERVER_PORT": "80"}
            if gzip:
                environ["HTTP_ACCEPT_ENCODING"] = "gzip"
            t = MONO()
            body = b"".join(wsgi(environ, lambda *a, **k: None))
            return MONO() - t, len(body)

        render, background, plain, gz, cached, cached_gz = [], [], [], [], [], []
        for _ in range(reps):
            t = MONO()
            generate_latest(registry)
            render.append(MONO() - t)
            t = MONO()
            exposition.render()  # what the exporter does after a run, off the scrape path (with gzip)
            background.append(MONO() - t)
            plain.append(scrape(app, False)[0])
            gz_s, gz_bytes = scrape(app, True)
            gz.append(gz_s)
            cached.append(scrape(served, False)[0])
            cached_gz.append(scrape(served, True)[0])
        exposition.close()
        out.append({
            "section": "scrape", "combinations": combos, "series": series, "bytes": len(text), "gzip_bytes": gz_bytes,
            "render_ms_p50": pct(render, 50) * 1e3, "render_ms_max": max(render) * 1e3,
            "background_render_ms_p50": pct(background, 50) * 1e3,
            "http_ms_p50": pct(plain, 50) * 1e3, "http_gzip_ms_p50": pct(gz, 50) * 1e3,
            "served_ms_p50": pct(cached, 50) * 1e3, "served_ms_max": max(cached) * 1e3,
            "served_gzip_ms_p50": pct(cached_gz, 50) * 1e3,
        })
        gc.collect()
    return out


# ----------------------------------------------------------------------------- memory (child process)

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(kind: str, url: str, probes: int, lines: int) -> dict:
    """Run in a fresh process: the exporter's runner and sinks, RSS sampled as probes accumulate."""
    from exporter.runner import ScenarioRunner
    from exporter.sinks import FanOut, ResultsFileSink, Sink

    tmp = tempfile.mkdtemp(prefix="probe-bench-mem-")
    samples = []
    gc.collect()
    rss_start = _rss_bytes()
    samples.append((0, rss_start))
    t0 = MONO()
    level = 8
    if kind == "engine":
        registry = CollectorRegistry()
        pm = ProbeMetrics(registry)
        em = ExporterMetrics(registry)
        writer = ResultsWriter(os.path.join(tmp, "results.jsonl"))
        sinks = FanOut([pm, ResultsFileSink(writer, em.results_lines, em.results_errors)])
        target = Target(name="bench", url=url, process_match=None)
        case = Case(name="c", prompt=prompt_for("mem", 8, 2000.0, 0.0), system=None, options={})
        scenario = Scenario(
            name="mem", model="bench", api="generate", targets=(target,), interval=60.0, cron=None,
            repeats=probes // level, warmup=0, concurrency=(level,), keep_alive=None, timeout=60.0, think=None,
            cases=(case,),
        )
        count = [0]
        every = max(1, probes // 10)

        class Progress(Sink):
            def on_result(self, _r):
                count[0] += 1
                if count[0] % every == 0:
                    samples.append((count[0], _rss_bytes()))

        summary = ScenarioRunner(scenario, target, [sinks, Progress()]).run()
        done, failed = summary.requests, summary.failures
        rss_probes = _rss_bytes()
        # Then results lines up to `lines`: records through the same sinks (metrics + results file).
        rng = random.Random(3)
        template = _record(rng, "mem", "c", "warm")
        template.target, template.model = "bench", "bench"
        template.concurrency = level
        t1 = MONO()
        for i in range(done, lines):
            sinks.on_result(template)
            if (i + 1) % (lines // 10) == 0:
                samples.append((i + 1, _rss_bytes()))
        lines_s = MONO() - t1
        writer.close()
        rss_lines = _rss_bytes()
        size = os.path.getsize(writer.path)
        os.unlink(writer.path)
        return {"client": "engine", "probes": done, "failures": failed, "probe_s": t1 - t0 - 0, "lines": int(registry.get_sample_value("llm_exporter_results_lines_total")),
                "results_file_bytes": size, "lines_s": lines_s, "rss_start": rss_start, "rss_after_probes": rss_probes,
                "rss_after_lines": rss_lines, "samples": samples}
    # Baseline: the ollama package, batches of `level` threads.
    client = OllamaPyClient(url)
    done = failed = 0
    every = max(1, probes // 10)
    while done < probes:
        results = []
        threads = [threading.Thread(target=lambda: results.append(client.one("mem", 8, 2000.0, 0.0, level)))
                   for _ in range(level)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed += sum(1 for r in results if not r.ok)
        done += level
        if done % every < level:
            samples.append((done, _rss_bytes()))
    rss_probes = _rss_bytes()
    return {"client": "ollama-py", "probes": done, "failures": failed, "probe_s": MONO() - t0, "rss_start": rss_start,
            "rss_after_probes": rss_probes, "rss_after_lines": None, "samples": samples}


def section_memory(server: StreamServer, quick: bool) -> list:
    probes = 2000 if quick else 10000
    lines = 20000 if quick else 100000
    out = []
    for kind in ("engine", "ollama-py"):
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--memory-child", kind, "--url", server.url,
             "--probes", str(probes), "--lines", str(lines)],
            capture_output=True, text=True, timeout=600,
        )
        server.drain()  # the child's requests are not measured; forget their logs
        if proc.returncode != 0:
            out.append({"section": "memory", "client": kind, "error": proc.stderr[-2000:]})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["section"] = "memory"
        s = row["samples"]
        # Growth after warm-up: from the first sample after 10% of the probes to the end of the probes.
        probe_samples = [x for x in s if 0 < x[0] <= row["probes"]]
        row["growth_after_warmup"] = (probe_samples[-1][1] - probe_samples[0][1]) if len(probe_samples) > 1 else None
        out.append(row)
    return out


# ----------------------------------------------------------------------------- report

def fmt(x, digits=2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x != x:
            return "—"
        return f"{x:.{digits}f}"
    return str(x)


def table(headers: list, rows: list) -> str:
    if not rows:
        return "(not run)"
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def render(report: dict) -> str:
    out = []
    m = report["meta"]
    out.append(f"Probe engine benchmark — {m['mode']} run, {m['cpus']} CPUs, Python {m['python']}, "
               f"load average at start {m['loadavg_start']}, {m['elapsed_s']:.0f} s\n")

    def dist(d):
        return f"{fmt(d['p50_ms'], 3)} / {fmt(d['p99_ms'], 3)} / {fmt(d['max_ms'], 3)}"

    rows = [[r["concurrency"], r["client"], r["requests"], r["failures"], dist(r["ttft_error"]),
             dist(r["send_delay"]), fmt(r["client_cpu_pct_of_core"], 1)]
            for r in report["ttft"]]
    out.append("### 1. TTFT error (client first-token time − server first-token write), ms\n")
    out.append("Batches released together as the runner does; server TTFT 10–50 ms, then 10 tokens at 100 tok/s.\n")
    out.append(table(["conc.", "client", "requests", "fail", "TTFT error p50 / p99 / max",
                      "request out p50 / p99 / max", "client CPU %"], rows))

    if report.get("interference"):
        rows = [[r["client"], r["requests"], r["failures"], dist(r["ttft_error"]), dist(r["gap_error"])]
                for r in report["interference"]]
        first = report["interference"][0]
        out.append("\n### 1b. The same while another thread renders /metrics (500 combinations) nonstop\n")
        out.append(f"8 streams at 100 tok/s, 20 tokens each; {first['renders']} renders of "
                   f"{fmt(first['render_s_p50'] * 1e3, 0)} ms (p50) ran meanwhile.\n")
        out.append(table(["client", "requests", "fail", "TTFT error p50 / p99 / max", "gap error p50 / p99 / max"],
                         rows))

    rows = [[r["concurrency"], fmt(r["stream_rate"], 0), r["client"], r["tokens"], dist(r["gap_error"]),
             fmt(r["aggregate_tokens_per_s"], 0), fmt(r["client_cpu_pct_of_core"], 1), r["server_deferred_writes"]]
            for r in report["gaps"]]
    out.append("\n### 2. Inter-token gap error |client gap − server gap|, ms\n")
    out.append(table(["conc.", "tok/s per stream", "client", "tokens", "gap error p50 / p99 / max",
                      "aggregate tok/s", "client CPU %", "deferred"], rows))

    rows = [[r["client"], fmt(r["client_cpu_ms_per_1000_tokens"], 1), fmt(r["cpu_pct_of_core_per_stream"], 3),
             dist(r["ttft_error"])] for r in report["cost"]]
    out.append("\n### 3a. Client CPU for 100 tok/s streams (8 streams, 100-token requests)\n")
    out.append(table(["client", "CPU ms / 1000 tokens", "% of one core per stream", "TTFT error p50 / p99 / max"], rows))

    rows = [[fmt(r["stream_rate"], 0), r["client"], fmt(r["aggregate_tokens_per_s"], 0), r["failures"],
             dist(r["ttft_error"]), fmt(r["gap_error"]["p99_ms"], 3), fmt(r["client_cpu_ms_per_1000_tokens"], 1),
             fmt(r["client_cpu_pct_of_core"], 0), fmt(r["server_cpu_s"] / r["wall_s"] * 100, 0)]
            for r in report["capacity"]]
    out.append("\n### 3b. Capacity: 32 streams, faster each step, until p99 TTFT error > 5 ms\n")
    out.append(table(["tok/s per stream", "client", "aggregate tok/s", "fail", "TTFT error p50 / p99 / max",
                      "gap err p99", "CPU ms/1000 tok", "client CPU %", "server CPU %"], rows))
    out.append("")
    for name in dict.fromkeys(r["client"] for r in report["capacity"]):
        steps = [r for r in report["capacity"] if r["client"] == name]
        passed = [r for r in steps if r["ttft_error"]["p99_ms"] <= TARGETS["capacity_ttft_p99_ms"] and not r["failures"]]
        if not passed:
            text = f"below {fmt(steps[0]['aggregate_tokens_per_s'], 0)} tok/s (it missed at the first step)"
        else:
            text = f"{fmt(report['capacity_max'][name], 0)} tok/s"
            if len(passed) == len(steps) == len(CAPACITY_RATES):
                text += " or more (it passed every step; the sweep ends there)"
        out.append(f"- {name}: highest aggregate rate with p99 TTFT error <= 5 ms: {text}")

    rows = [[r["combinations"], r["series"], r["bytes"], r["gzip_bytes"], fmt(r["render_ms_p50"], 1),
             fmt(r.get("background_render_ms_p50"), 1), fmt(r["http_ms_p50"], 1), fmt(r["http_gzip_ms_p50"], 1),
             fmt(r.get("served_ms_p50"), 2), fmt(r.get("served_gzip_ms_p50"), 2)]
            for r in report["scrape"]]
    out.append("\n\n### 4. Scrape cost: /metrics\n")
    out.append("render: generate_latest; background: the exporter's render after a run, with gzip (off the scrape "
               "path); uncached: prometheus_client's WSGI app, rendering per scrape; served: the exporter's /metrics, "
               "the last background rendering.\n")
    out.append(table(["combinations", "series", "bytes", "gzip bytes", "render ms", "background ms",
                      "uncached ms", "uncached gzip ms", "served ms", "served gzip ms"], rows))

    rows = []
    for r in report["memory"]:
        if "error" in r:
            rows.append([r["client"], "error", "", "", "", "", ""])
            continue
        mib = lambda b: fmt(b / 2**20, 1) if b is not None else "—"  # noqa: E731
        rows.append([r["client"], mib(r["rss_start"]), f"{mib(r['rss_after_probes'])} ({r['probes']} probes)",
                     f"{mib(r['rss_after_lines'])} ({r.get('lines', '—')} lines)" if r.get("rss_after_lines") else "—",
                     mib(r["growth_after_warmup"]), r["failures"]])
    out.append("\n### 5. Memory: RSS of a fresh exporter process, MiB\n")
    out.append(table(["client", "at start", "after probes", "after results lines", "growth after first 10%",
                      "failures"], rows))

    out.append("\n### Targets\n")
    names = sorted({c for t in report["targets"] for c in t["values"]}, key=lambda c: (c != "engine", c))
    rows = [[t["name"], t["target"], *(fmt(t["values"].get(c), t.get("digits", 3)) for c in names),
             {True: "met", False: "MISSED", None: "—"}[t["met"]]] for t in report["targets"]]
    out.append(table(["target", "goal", *names, "engine verdict"], rows))
    return "\n".join(out) + "\n"


def evaluate(report: dict) -> list:
    """The issue's targets, for every client that has the numbers; engine decides met/missed."""

    def find(section, client, **kw):
        for r in report.get(section, []):
            if r.get("client") == client and all(r.get(k) == v for k, v in kw.items()):
                return r
        raise KeyError(section)

    def rss_growth(client):
        mem = find("memory", client)
        end = mem["rss_after_lines"] or mem["rss_after_probes"]
        return (end - mem["samples"][1][1]) / 2**20

    checks = (
        ("TTFT error p99 at concurrency 32 (ms)", "<= 1",
         lambda c: find("ttft", c, concurrency=32)["ttft_error"]["p99_ms"], lambda v: v <= 1.0),
        ("client CPU per 100 tok/s stream (% of a core)", "<= 2",
         lambda c: find("cost", c)["cpu_pct_of_core_per_stream"], lambda v: v <= 2.0),
        ("aggregate tok/s at p99 TTFT error <= 5 ms", "(measured)",
         lambda c: report["capacity_max"][c], None),
        ("/metrics at 500 combinations (ms)", "< 50",
         lambda c: find("scrape", None, combinations=500).get("served_ms_p50") if c == "engine" else None,
         lambda v: v < 50),
        ("RSS growth after the first 10% of probes (MiB)", "noise (< 2)", rss_growth, lambda v: v < 2.0),
    )
    clients = sorted({r["client"] for sec in ("ttft", "gaps", "cost", "capacity", "memory")
                      for r in report.get(sec, []) if r.get("client")}, key=lambda c: (c != "engine", c))
    out = []
    for name, goal, fn, good in checks:
        row = {"name": name, "target": goal, "values": {}, "digits": 0 if "aggregate" in name else 3}
        for c in clients:
            try:
                row["values"][c] = fn(c)
            except (KeyError, IndexError, TypeError):
                pass
        value = row["values"].get("engine")
        if value is None or not row["values"]:
            continue
        row["met"] = None if good is None else bool(good(value))
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmark the probe engine's measurement error and footprint.")
    ap.add_argument("--quick", action="store_true", help="fewer samples (about a minute)")
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results.json"), help="where to write raw results")
    ap.add_argument("--markdown", default=os.path.join(ROOT, "benchmarks", "RESULTS.md"),
                    help="also write the printed tables to this file ('' for none)")
    ap.add_argument("--sections", default="ttft,interference,gaps,cost,capacity,scrape,memory",
                    help="comma-separated subset to run (default: all)")
    ap.add_argument("--memory-child", choices=("engine", "ollama-py"), help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--probes", type=int, default=10000, help=argparse.SUPPRESS)
    ap.add_argument("--lines", type=int, default=100000, help=argparse.SUPPRESS)
    ap.add_argument("--from-json", metavar="PATH", help="print the tables of an earlier run's JSON and exit")
    args = ap.parse_args()
    disable_created_metrics()  # as the exporter's command line does

    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        report["targets"] = evaluate(report)
        print(render(report))
        return 0

    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.url, args.probes, args.lines)))
        return 0

    sections = set(args.sections.split(","))
    started = MONO()
    report: dict = {"meta": {
        "mode": "quick" if args.quick else "full", "cpus": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }}
    for key in ("ttft", "interference", "gaps", "cost", "capacity", "scrape", "memory"):
        report[key] = []
    report["capacity_max"] = {}
    server = StreamServer()
    try:
        clients = [
            EngineClient("engine", server.url),
            EngineClient("engine-old", server.url, transport="http.client"),
            OllamaPyClient(server.url),
        ]
        # Warm both paths (imports, first connections) before measuring.
        for c in clients:
            for i in range(20):
                c.one(f"warm-{c.name}-{i}", 3, 1000.0, 0.0, 1)
        server.drain()
        for key, fn in (("ttft", section_ttft), ("interference", section_interference), ("gaps", section_gaps),
                        ("cost", section_cost), ("capacity", section_capacity)):
            if key in sections:
                t = MONO()
                report[key] = fn(server, clients, args.quick)
                print(f"[{key}: {MONO() - t:.0f} s]", file=sys.stderr, flush=True)
        for c in clients:
            c.close()
        for r in report["capacity"]:
            if r["ttft_error"]["p99_ms"] <= TARGETS["capacity_ttft_p99_ms"] and not r["failures"]:
                best = report["capacity_max"].get(r["client"], 0.0)
                report["capacity_max"][r["client"]] = max(best, r["aggregate_tokens_per_s"])
        if "scrape" in sections:
            t = MONO()
            report["scrape"] = section_scrape(args.quick)
            print(f"[scrape: {MONO() - t:.0f} s]", file=sys.stderr, flush=True)
        if "memory" in sections:
            t = MONO()
            report["memory"] = section_memory(server, args.quick)
            print(f"[memory: {MONO() - t:.0f} s]", file=sys.stderr, flush=True)
    finally:
        server.stop()
    report["meta"]["elapsed_s"] = MONO() - started
    report["meta"]["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        report["targets"] = evaluate(report)
    except (StopIteration, KeyError, TypeError, IndexError):
        report["targets"] = []
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1, default=str)
    text = render(report)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    print(f"raw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
