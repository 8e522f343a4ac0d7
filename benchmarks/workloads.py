"""What the benchmark runs: load patterns, and the workloads that measure the probe engine.

A workload is a function `(server, clients, quick) -> list of rows` (dicts, one per
measured cell) listed in WORKLOADS: its key names it in --sections and in results.json,
and render.SECTIONS shows its rows in RESULTS.md. They run in the order listed.
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

from benchmarks.bench_stats import TARGETS, Cell, cell_summary, merge, pct
from benchmarks.clients import MONO, BusyHost, EngineClient, StreamServer, fifo_allowed
from benchmarks.footprint import build_exposition, section_memory, section_scrape

CAPACITY_RATES = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)  # tokens/s per stream, 32 streams


# ----------------------------------------------------------------------------- load patterns

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

def interleaved(clients: list, rounds: int, fn: Callable) -> dict:
    """Run fn(client, round) for every client, alternating, `rounds` times; merge per client."""
    parts: dict = {c.name: [] for c in clients}
    for r in range(rounds):
        order = clients if r % 2 == 0 else list(reversed(clients))
        for c in order:
            parts[c.name].append(fn(c, r))
    return {name: merge(cells) for name, cells in parts.items()}


# ----------------------------------------------------------------------------- workloads

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


def section_busy(server, clients, quick: bool) -> list:
    """TTFT and gap error with the host's cores 3x oversubscribed (3 busy-loop processes per core).

    Server: 40 ms to the first token, then 10 tokens 4 ms apart; batches released together as
    the runner does. Besides the engine and the `ollama` package: the engine with late stamps
    only marked (engine-stamp: what re-timing from created_at buys), and the same with every
    probe thread at SCHED_FIFO (engine-stamp-fifo: what a favoured reader thread buys), where
    this process may do that.
    """
    extra = [EngineClient("engine-stamp", server.url, recover=False)]
    if fifo_allowed():
        extra.append(EngineClient("engine-stamp-fifo", server.url, recover=False, fifo=True))
    for c in extra:
        for i in range(20):
            c.one(f"warm-{c.name}-{i}", 3, 1000.0, 0.0, 1)
    compared = [c for c in clients if c.name in ("engine", "ollama-py")] + extra
    busy = 3 * (os.cpu_count() or 1)
    out = []
    try:
        with BusyHost(busy):
            for level in (1, 8, 32):
                requests = ((80 if quick else 240) if level == 1
                            else max(level * (4 if quick else 12), 160 if quick else 480))
                per_round = max(level, requests // 2)
                cells = interleaved(compared, 2, lambda c, r: run_batches(
                    server, c, level, per_round, n=10, rate=250.0, ttft_range=(0.040, 0.040), seed=level * 300 + r))
                for name, cell in cells.items():
                    row = cell_summary(cell)
                    judged = [s for s, _ in cell.ok_samples() if s.late is not None]
                    row.update(section="busy", concurrency=level, busy_processes=busy, cpus=os.cpu_count(),
                               tokens_per_request=10, stream_rate=250.0,
                               late_first_tokens=sum(1 for s in judged if s.late) if judged else None,
                               recovered_first_tokens=sum(1 for s in judged if s.recovered) if judged else None,
                               judged_first_tokens=len(judged))
                    out.append(row)
    finally:
        for c in extra:
            c.close()
    return out


def section_interference(server, clients, quick: bool) -> list:
    """TTFT and gap error while another thread of the same process renders /metrics nonstop.

    500 combinations in the key space; a thread ends a run, renders the keys it changed and
    serves a gzip scrape, back to back, while probes stream: Python rendering holds the GIL
    in 5 ms slices, zlib and the joins of cached bytes release it or hold it briefly.
    """
    exposed = build_exposition(500)
    stop = threading.Event()
    renders: list = []

    def scraper():
        # Harsher than the exporter, which spaces its renders by a second or more: a run ends,
        # its keys render again, and a gzip scrape reads the result, back to back.
        i = 0
        while not stop.is_set():
            exposed.run(exposed.scenarios[i % len(exposed.scenarios)])
            i += 1
            t = MONO()
            exposed.exposition.render_chunks()
            exposed.exposition.get_chunks(gzipped=True)
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


@dataclass(frozen=True)
class Workload:
    key: str  # its --sections name and its list in results.json
    run: Callable[[StreamServer, list, bool], list]  # (server, clients, quick) -> rows


# In run order: the stream workloads first, then the two that measure the exporter process.
def section_fleet(server, clients, quick: bool) -> list:
    """/metrics at fleet scale: the state store's rendering for 100 and 1,000 targets x the default
    scenario (benchmarks/render_scale.py), on this process's one thread."""
    from benchmarks.render_scale import measure

    return [{"section": "fleet", **measure(n, 6 if quick else 24, before=False)} for n in (100, 1000)]


def section_api(server, clients, quick: bool) -> list:
    """The same engine and reader on Ollama's NDJSON API and the OpenAI-compatible SSE API, interleaved:
    the framing changes, the receive stamps do not, so the TTFT and gap errors must match."""
    engine = next(c for c in clients if c.name == "engine")
    openai = EngineClient("engine-openai", server.url, api="openai")
    for i in range(20):
        openai.one(f"warm-openai-{i}", 3, 1000.0, 0.0, 1)
    server.drain()
    out = []
    for level in (1, 8):
        requests = (40 if quick else 120) if level == 1 else (96 if quick else 320)
        cells = interleaved([engine, openai], 2, lambda c, r: run_batches(
            server, c, level, max(level, requests // 2), n=10, rate=100.0, ttft_range=(0.010, 0.050),
            seed=level * 1000 + r))
        for name, cell in cells.items():
            row = cell_summary(cell)
            row.update(section="api", concurrency=level, api="openai" if name == "engine-openai" else "generate")
            out.append(row)
    openai.close()
    return out


def section_beside_prometheus(server, clients, quick: bool) -> list:
    from benchmarks.beside_prometheus import section_beside_prometheus as measure

    return measure(server, clients, quick)


WORKLOADS = (
    Workload("ttft", section_ttft),
    Workload("api", section_api),
    Workload("busy", section_busy),
    Workload("interference", section_interference),
    Workload("gaps", section_gaps),
    Workload("cost", section_cost),
    Workload("capacity", section_capacity),
    Workload("scrape", section_scrape),
    Workload("fleet", section_fleet),
    Workload("beside_prometheus", section_beside_prometheus),
    Workload("memory", section_memory),
)
