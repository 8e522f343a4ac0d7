"""RESULTS.md: the tables of a run (or of an earlier run's results.json).

render(report) joins SECTIONS in order; each takes the whole report (results.json's
content) and returns its lines, or none when its workload did not run.
"""

from __future__ import annotations

import json
import os

from benchmarks.bench_stats import TARGETS
from benchmarks.workloads import CAPACITY_RATES

# Written by api_overhead.py --start --json: real servers, measured apart from the probe engine's run.
ENGINES_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engines.json")


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


def dist(d: dict) -> str:
    return f"{fmt(d['p50_ms'], 3)} / {fmt(d['p99_ms'], 3)} / {fmt(d['max_ms'], 3)}"


def header(report: dict) -> list:
    m = report["meta"]
    return [f"Probe engine benchmark — {m['mode']} run, {m['cpus']} CPUs, Python {m['python']}, "
            f"load average at start {m['loadavg_start']}, {m['elapsed_s']:.0f} s\n"]


def ttft(report: dict) -> list:
    rows = [[r["concurrency"], r["client"], r["requests"], r["failures"], dist(r["ttft_error"]),
             dist(r["send_delay"]), fmt(r["client_cpu_pct_of_core"], 1)]
            for r in report["ttft"]]
    return ["### 1. TTFT error (client first-token time − server first-token write), ms\n",
            "Batches released together as the runner does; server TTFT 10–50 ms, then 10 tokens at 100 tok/s.\n",
            table(["conc.", "client", "requests", "fail", "TTFT error p50 / p99 / max",
                   "request out p50 / p99 / max", "client CPU %"], rows)]


def busy(report: dict) -> list:
    rows_in = report.get("busy") or []
    if not rows_in:
        return []

    def share(n, of):
        return "—" if n is None or not of else f"{n} ({n / of * 100:.1f} %)"

    rows = [[r["concurrency"], r["client"], r["requests"], r["failures"], dist(r["ttft_error"]), dist(r["gap_error"]),
             share(r.get("late_first_tokens"), r.get("judged_first_tokens")),
             share(r.get("recovered_first_tokens"), r.get("judged_first_tokens"))] for r in rows_in]
    first = rows_in[0]
    return [f"\n### 1c. TTFT and gap error on a busy host: {first['busy_processes']} busy-loop processes on "
            f"{first['cpus']} cores\n",
            "Server TTFT 40 ms, then 10 tokens 4 ms apart; batches released together. engine-stamp: late first-token "
            "stamps only marked, not re-timed from the server's created_at; engine-stamp-fifo: the same with each "
            "probe thread at SCHED_FIFO. Late: the first token's read also delivered later data.\n",
            table(["conc.", "client", "requests", "fail", "TTFT error p50 / p99 / max", "gap error p50 / p99 / max",
                   "late first tokens", "re-timed"], rows)]


def api(report: dict) -> list:
    if not report.get("api"):
        return []
    rows = [[r["concurrency"], "/api/generate (NDJSON)" if r["api"] == "generate" else "/v1/chat/completions (SSE)",
             r["requests"], r["failures"], dist(r["ttft_error"]), dist(r["gap_error"]),
             fmt(r["client_cpu_ms_per_1000_tokens"], 1)]
            for r in report["api"]]
    return ["\n### 1a. The same precision on the OpenAI-compatible API\n",
            "The engine's raw-socket reader on both APIs of the stream server, interleaved; only the framing "
            "(NDJSON lines or server-sent events) differs. Server TTFT 10–50 ms, 10 tokens at 100 tok/s."
            + (f" Measured apart ({report['api_meta']})." if report.get("api_meta") else "") + "\n",
            table(["conc.", "API", "requests", "fail", "TTFT error p50 / p99 / max", "gap error p50 / p99 / max",
                   "client CPU ms / 1000 tokens"], rows)]


def interference(report: dict) -> list:
    if not report.get("interference"):
        return []
    rows = [[r["client"], r["requests"], r["failures"], dist(r["ttft_error"]), dist(r["gap_error"])]
            for r in report["interference"]]
    first = report["interference"][0]
    return ["\n### 1b. The same while another thread renders /metrics (500 combinations) nonstop\n",
            f"8 streams at 100 tok/s, 20 tokens each; {first['renders']} renders of "
            f"{fmt(first['render_s_p50'] * 1e3, 0)} ms (p50) ran meanwhile.\n",
            table(["client", "requests", "fail", "TTFT error p50 / p99 / max", "gap error p50 / p99 / max"], rows)]


def gaps(report: dict) -> list:
    rows = [[r["concurrency"], fmt(r["stream_rate"], 0), r["client"], r["tokens"], dist(r["gap_error"]),
             fmt(r["aggregate_tokens_per_s"], 0), fmt(r["client_cpu_pct_of_core"], 1), r["server_deferred_writes"]]
            for r in report["gaps"]]
    return ["\n### 2. Inter-token gap error |client gap − server gap|, ms\n",
            table(["conc.", "tok/s per stream", "client", "tokens", "gap error p50 / p99 / max",
                   "aggregate tok/s", "client CPU %", "deferred"], rows)]


def cost(report: dict) -> list:
    rows = [[r["client"], fmt(r["client_cpu_ms_per_1000_tokens"], 1), fmt(r["cpu_pct_of_core_per_stream"], 3),
             dist(r["ttft_error"])] for r in report["cost"]]
    return ["\n### 3a. Client CPU for 100 tok/s streams (8 streams, 100-token requests)\n",
            table(["client", "CPU ms / 1000 tokens", "% of one core per stream", "TTFT error p50 / p99 / max"], rows)]


def capacity(report: dict) -> list:
    rows = [[fmt(r["stream_rate"], 0), r["client"], fmt(r["aggregate_tokens_per_s"], 0), r["failures"],
             dist(r["ttft_error"]), fmt(r["gap_error"]["p99_ms"], 3), fmt(r["client_cpu_ms_per_1000_tokens"], 1),
             fmt(r["client_cpu_pct_of_core"], 0), fmt(r["server_cpu_s"] / r["wall_s"] * 100, 0)]
            for r in report["capacity"]]
    out = ["\n### 3b. Capacity: 32 streams, faster each step, until p99 TTFT error > 5 ms\n",
           table(["tok/s per stream", "client", "aggregate tok/s", "fail", "TTFT error p50 / p99 / max",
                  "gap err p99", "CPU ms/1000 tok", "client CPU %", "server CPU %"], rows),
           ""]
    for name in dict.fromkeys(r["client"] for r in report["capacity"]):
        steps = [r for r in report["capacity"] if r["client"] == name]
        goal = TARGETS["capacity_ttft_p99_ms"]
        passed = [r for r in steps if r["ttft_error"]["p99_ms"] <= goal and not r["failures"]]
        if not passed:
            text = f"below {fmt(steps[0]['aggregate_tokens_per_s'], 0)} tok/s (it missed at the first step)"
        else:
            text = f"{fmt(report['capacity_max'][name], 0)} tok/s"
            if len(passed) == len(steps) == len(CAPACITY_RATES):
                text += " or more (it passed every step; the sweep ends there)"
        out.append(f"- {name}: highest aggregate rate with p99 TTFT error <= 5 ms: {text}")
    return out


def scrape(report: dict) -> list:
    rows = [[r["combinations"], r["series"], r["bytes"], r["gzip_bytes"], fmt(r["render_ms_p50"], 1),
             fmt(r.get("background_render_ms_p50"), 1), fmt(r.get("first_render_ms"), 1),
             fmt(r.get("served_ms_p50"), 2), fmt(r.get("served_gzip_ms_p50"), 2)]
            for r in report["scrape"]]
    return ["\n\n### 4. Scrape cost: /metrics\n",
            "render: the exporter's rendering after a run ended (its keys render again, the rest is cached); "
            "gzip: the first gzip scrape after it; first: the first rendering, every key new (start-up); "
            "served: the exporter's /metrics, the last background rendering. Before the state store, "
            "prometheus_client rendered 500 combinations in 1130 ms after every run (main at 4d441bf).\n",
            table(["combinations", "series", "bytes", "gzip bytes", "render ms", "gzip ms",
                   "first ms", "served ms", "served gzip ms"], rows)]


def fleet(report: dict) -> list:
    rows = [[r["targets"], r["keys"], r["series"], fmt(r["bytes"] / 1e6, 1), fmt(r["gzip_bytes"] / 1e6, 2),
             fmt(r["first_s"], 2), fmt(r["after_run_s"], 3), fmt(r["unchanged_s"], 3), fmt(r["gzip_s"], 2)]
            for r in report.get("fleet", [])]
    if not rows:
        return []
    return ["\n\n### 4b. /metrics at fleet scale: targets x the default scenario (3 cases, SLO)\n",
            "first: every key new (start-up); after a run: one target's run ended, its keys render again; "
            "unchanged: nothing changed; gzip: the body compressed once. Seconds on one thread.\n",
            table(["targets", "case keys", "series", "MB", "gzip MB", "first s", "after a run s", "unchanged s",
                   "gzip s"], rows)]


def beside_prometheus(report: dict) -> list:
    rows_in = report.get("beside_prometheus") or []
    if not rows_in:
        return []
    rows = [[r["condition"], r["concurrency"], r["client"], r["requests"], r["failures"], dist(r["ttft_error"]),
             dist(r["gap_error"]), fmt(r.get("prometheus_cores"), 2)] for r in rows_in]
    return [f"\n\n### 4c. Probes beside a busy Prometheus ({rows_in[0]['series']} series scraped every second, "
            "recording rules every second)\n",
            "The same process's probes, quiet and with a real Prometheus beside them on the same cores "
            "(benchmarks/beside_prometheus.py); Prometheus cores: its CPU over the measurement.\n",
            table(["condition", "conc.", "client", "requests", "fail", "TTFT error p50 / p99 / max",
                   "gap error p50 / p99 / max", "Prometheus cores"], rows)]


def memory(report: dict) -> list:
    rows = []
    for r in report["memory"]:
        if "error" in r:
            rows.append([r["client"], "error", "", "", "", "", ""])
            continue
        mib = lambda b: fmt(b / 2**20, 1) if b is not None else "—"  # noqa: E731
        rows.append([r["client"], mib(r["rss_start"]), f"{mib(r['rss_after_probes'])} ({r['probes']} probes)",
                     f"{mib(r['rss_after_lines'])} ({r.get('lines', '—')} lines)" if r.get("rss_after_lines") else "—",
                     mib(r["growth_after_warmup"]), r["failures"]])
    return ["\n### 5. Memory: RSS of a fresh exporter process, MiB\n",
            table(["client", "at start", "after probes", "after results lines", "growth after first 10%",
                   "failures"], rows)]


def engines(report: dict) -> list:
    """Real engines side by side, measured apart by api_overhead.py --start --json (engines.json)."""
    try:
        with open(ENGINES_JSON, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    m = data["meta"]
    ms = lambda v: fmt(v * 1000 if v is not None else None, 1)  # noqa: E731
    rows = [[r["setup"], r["requests"], ms(r["ttft_s"]), ms(r["request_duration_s"]), ms(r["gap_s"]),
             fmt(r["client_tps"], 1), fmt(r["server_decode_tps"], 1) if r["server_decode_tps"] else "absent"]
            for r in data["rows"]]
    paired = [f"{p['setup']} minus {p['reference']}, {p['what']}: median {p['median_s'] * 1000:+.1f} ms "
              f"(interquartile range {p['q1_s'] * 1000:+.1f} .. {p['q3_s'] * 1000:+.1f} ms, {p['pairs']} pairs)"
              for p in data["paired"]]
    return ["\n### 6. Real engines side by side: Ollama's /api/chat and /v1, llama-cpp-python's /v1\n",
            f"{m['model']}, temperature 0, seed 42, {m['num_predict']} output tokens, unique prompts (no prompt "
            f"cache); {m.get('conditions') or 'servers as found'}; Ollama {m['ollama_version']}, llama-cpp-python "
            f"{m.get('llama_cpp_python_version') or '?'}; requests rotated through the setups, {m['rounds']} rounds. "
            f"Measured apart (`api_overhead.py --start --json` on "
            f"{m['date']}, load average {m['loadavg_before']} before and {m['loadavg_after']} after, "
            f"on {m['cpus']} cores).\n",
            table(["setup", "requests", "TTFT median (ms)", "end-to-end median (ms)", "token gap median (ms)",
                   "client tok/s median", "server decode tok/s median"], rows),
            "", *(f"- {p}" for p in paired)]


def goals(report: dict) -> list:
    names = sorted({c for t in report["targets"] for c in t["values"]}, key=lambda c: (c != "engine", c))
    rows = [[t["name"], t["target"], *(fmt(t["values"].get(c), t.get("digits", 3)) for c in names),
             {True: "met", False: "MISSED", None: "—"}[t["met"]]] for t in report["targets"]]
    return ["\n### Targets\n", table(["target", "goal", *names, "engine verdict"], rows)]


# RESULTS.md in order. A section reads its workload's rows as report[key] (see workloads.WORKLOADS).
SECTIONS = (header, ttft, api, busy, interference, gaps, cost, capacity, scrape, fleet, beside_prometheus, memory,
            engines, goals)


def render(report: dict) -> str:
    return "\n".join(line for section in SECTIONS for line in section(report)) + "\n"
