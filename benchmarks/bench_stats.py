"""Statistics of the benchmark: what each client measured against what the server wrote.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The goals the results are judged against (evaluate, and the capacity sweep's stop rule).
TARGETS = {
    "ttft_p99_c32_ms": 1.0,
    "busy_ttft_p99_ms": 1.0,
    "cost_pct_of_core_100tps": 2.0,
    "scrape_ms_500": 50.0,
    "capacity_ttft_p99_ms": 5.0,
}


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


def capacity_max(capacity_rows: list) -> dict:
    """Per client: the highest aggregate tokens/s of a capacity step within the TTFT-error goal."""
    best: dict = {}
    for r in capacity_rows:
        if r["ttft_error"]["p99_ms"] <= TARGETS["capacity_ttft_p99_ms"] and not r["failures"]:
            best[r["client"]] = max(best.get(r["client"], 0.0), r["aggregate_tokens_per_s"])
    return best


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
        ("TTFT error p99 on a busy host, worst of c = 1, 8, 32 (ms)", "<= 1",
         lambda c: max(r["ttft_error"]["p99_ms"] for r in report["busy"] if r["client"] == c),
         lambda v: v <= TARGETS["busy_ttft_p99_ms"]),
        ("client CPU per 100 tok/s stream (% of a core)", "<= 2",
         lambda c: find("cost", c)["cpu_pct_of_core_per_stream"], lambda v: v <= 2.0),
        ("aggregate tok/s at p99 TTFT error <= 5 ms", "(measured)",
         lambda c: report["capacity_max"][c], None),
        ("/metrics at 500 combinations (ms)", "< 50",
         lambda c: find("scrape", None, combinations=500).get("served_ms_p50") if c == "engine" else None,
         lambda v: v < 50),
        ("RSS growth after the first 10% of probes (MiB)", "noise (< 2)", rss_growth, lambda v: v < 2.0),
    )
    clients = sorted({r["client"] for sec in ("ttft", "busy", "gaps", "cost", "capacity", "memory")
                      for r in report.get(sec, []) if r.get("client")}, key=lambda c: (c != "engine", c))
    out = []
    for name, goal, fn, good in checks:
        row = {"name": name, "target": goal, "values": {}, "digits": 0 if "aggregate" in name else 3}
        for c in clients:
            try:
                row["values"][c] = fn(c)
            except (KeyError, IndexError, TypeError, ValueError):
                pass
        value = row["values"].get("engine")
        if value is None or not row["values"]:
            continue
        row["met"] = None if good is None else bool(good(value))
        out.append(row)
    return out
