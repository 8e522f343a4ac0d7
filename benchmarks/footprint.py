"""The exporter process's own footprint: /metrics scrape cost and memory as probes accumulate.

build_exposition makes the exporter's /metrics (state store, own registry, cached exposition)
with a chosen number of scenario/case combinations fed realistic records; the scrape workload
and the interference workload (workloads.py) render it.
"""

from __future__ import annotations

import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from prometheus_client import CollectorRegistry

from benchmarks.bench_stats import pct
from benchmarks.clients import MONO, OllamaPyClient, StreamServer, prompt_for
from exporter.config import Case, Config, Scenario, Target
from exporter.exposition import CachedExposition
from exporter.http import create_app
from exporter.keyspace import Keyspace
from exporter.live_stats import LiveStats
from exporter.metrics import ExporterMetrics, ProbeMetrics
from exporter.results import BatchSummary, ProbeResult, ResultsWriter, RunSummary
from exporter.state import StateStore

# The memory workload runs each client in a fresh process of the driver (--memory-child).
DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_bench.py")


# ----------------------------------------------------------------------------- /metrics

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


def build_exposition(combinations: int, seed: int = 1) -> "Exposed":
    """The exporter's /metrics with `combinations` scenario/case pairs in its key space, fed realistic
    records: its state store and own registry behind one CachedExposition."""
    rng = random.Random(seed)
    registry = CollectorRegistry()
    store = StateStore()
    pm = ProbeMetrics(store)
    live = LiveStats(store)
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
    store.swap(Keyspace.of(config))
    exposed = Exposed(CachedExposition(registry, store), store, pm, live, rng, scenarios)
    for sc in scenarios:
        exposed.run(sc)
    em.reload_ok.set(1)
    return exposed


class Exposed:
    """A built /metrics and the sinks that feed it: `run()` ends one more run of a scenario."""

    def __init__(self, exposition, store, pm, live, rng, scenarios):
        self.exposition, self.store, self.sinks = exposition, store, (pm, live)
        self.rng, self.scenarios = rng, scenarios
        self.runs = 0

    def run(self, sc) -> None:
        self.runs += 1
        run_id = f"r{self.runs}"
        for case in sc.cases:
            # One cold start, four warm runs and one timeout per combination.
            for start, ok in (("cold", True), ("warm", True), ("warm", True), ("warm", True), ("warm", True),
                              ("warm", False)):
                r = _record(self.rng, sc.name, case.name, start, ok)
                r.run_id = run_id
                for sink in self.sinks:
                    sink.on_result(r)
            for sink in self.sinks:
                sink.on_batch(BatchSummary("ollama-1", sc.name, "llama3.1:8b", case.name, 1, 6, 1, 8.5))
        for sink in self.sinks:
            sink.on_run(RunSummary("ollama-1", sc.name, run_id, time.time() - 60, time.time(), 6 * len(sc.cases), 0))


def section_scrape(server, clients, quick: bool) -> list:
    """/metrics at 1, 50 and 500 combinations: the first rendering, the rendering after a run, serving."""
    out = []
    reps = 3 if quick else 5
    for combos in (1, 50, 500):
        exposed = build_exposition(combos)
        exposition = exposed.exposition
        # The exporter's: serves the last background rendering (exporter/exposition.py).
        served = create_app(exposition)
        t = MONO()
        exposition.render_chunks()  # every key new: start-up
        first = MONO() - t
        text = exposition.render()
        gz_bytes = len(exposition.get(gzipped=True))
        series = sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))

        def scrape(wsgi, gzip: bool):
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "",
                       "wsgi.url_scheme": "http", "SERVER_NAME": "x", "SERVER_PORT": "80"}
            if gzip:
                environ["HTTP_ACCEPT_ENCODING"] = "gzip"
            t = MONO()
            body = b"".join(wsgi(environ, lambda *a, **k: None))
            return MONO() - t, len(body)

        render, background, cached, cached_gz = [], [], [], []
        for i in range(reps):
            exposed.run(exposed.scenarios[i % len(exposed.scenarios)])  # one run ended: its keys change
            t = MONO()
            exposition.render_chunks()  # what the exporter does after a run, off the scrape path
            render.append(MONO() - t)
            t = MONO()
            exposition.get_chunks(gzipped=True)  # the first gzip scrape after it
            background.append(MONO() - t)
            cached.append(scrape(served, False)[0])
            cached_gz.append(scrape(served, True)[0])
        exposition.close()
        out.append({
            "section": "scrape", "combinations": combos, "series": series, "bytes": len(text), "gzip_bytes": gz_bytes,
            "render_ms_p50": pct(render, 50) * 1e3, "render_ms_max": max(render) * 1e3,
            "background_render_ms_p50": pct(background, 50) * 1e3,
            "first_render_ms": first * 1e3,
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
        pm = ProbeMetrics(StateStore(open_keys=True))  # the bench has no config file: any key
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
        return {"client": "engine", "probes": done, "failures": failed, "probe_s": t1 - t0 - 0,
                "lines": int(registry.get_sample_value("llm_exporter_results_lines_total")),
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


def section_memory(server: StreamServer, clients, quick: bool) -> list:
    """RSS of a fresh process per client (the engine, then the ollama package) as probes accumulate."""
    probes = 2000 if quick else 10000
    lines = 20000 if quick else 100000
    out = []
    for kind in ("engine", "ollama-py"):
        proc = subprocess.run(
            [sys.executable, DRIVER, "--memory-child", kind, "--url", server.url,
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
