"""Where does it saturate: an open-loop request-rate sweep.

Requests arrive as a Poisson process at each offered rate for a fixed duration, each in its
own thread, whether or not earlier ones finished (open loop: a closed loop would slow its
own arrivals down as the server slows, and hide the queue). Per rate: throughput, TTFT and
time-per-output-token percentiles, and goodput, the requests per second that met both
limits, over the span from the first request sent to the last answer (at least the
arrival window). The knee is the
highest rate whose p95 TTFT and p95 time per output token stayed within the limits with
no failures; a lower rate that broke a limit anyway is listed beside it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..config import Config
from ..ollama import OllamaClient
from ..probe import run_probe
from ..results import ProbeResult

RATE_SEPARATOR = "@rate="


@dataclass(frozen=True)
class RateSweep:
    rates: tuple[float, ...]
    duration_s: float = 30.0
    ttft_limit_s: float = 2.0
    tpot_limit_s: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def poisson_arrivals(rate: float, duration: float, rng: np.random.Generator) -> list[float]:
    """Arrival offsets (seconds) of a Poisson process of `rate` per second over `duration`.

    Unit-rate gaps scaled by 1/rate: the same seed gives every rate the same pattern, compressed,
    so a higher rate never gets fewer arrivals by chance (common random numbers across rates).
    """
    out, t = [], 0.0
    while True:
        t += rng.exponential(1.0) / rate
        if t >= duration:
            return out
        out.append(t)


def rate_of(case: str) -> Optional[float]:
    if RATE_SEPARATOR not in case:
        return None
    try:
        return float(case.rsplit(RATE_SEPARATOR, 1)[1])
    except ValueError:
        return None


def run_rate_sweep(config: Config, sweep: RateSweep, sinks: list, stop: Optional[threading.Event] = None) -> None:
    """For each scenario and target: its first case at every offered rate, records to `sinks`."""
    for scenario in config.scenarios:
        for target in scenario.targets:
            client = OllamaClient(target)
            case = scenario.cases[0]
            run_probe(client, scenario, case)  # load the model: a cold start is not the server's rate limit
            for i, rate in enumerate(sweep.rates):
                if stop is not None and stop.is_set():
                    return
                _one_rate(client, scenario, dataclasses.replace(case, name=f"{case.name}{RATE_SEPARATOR}{rate:g}"),
                          rate, i, sweep, sinks)


def _one_rate(client, scenario, case, rate: float, index: int, sweep: RateSweep, sinks: list) -> None:
    arrivals = poisson_arrivals(rate, sweep.duration_s, np.random.default_rng(sweep.seed))
    run_id = uuid.uuid4().hex[:12]
    lock = threading.Lock()

    def one() -> None:
        r = run_probe(client, scenario, case, batch=index, run_id=run_id)
        with lock:
            for sink in sinks:
                sink.on_result(r)

    threads = []
    start = time.monotonic()
    for offset in arrivals:
        delay = start + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, name=f"rate-{rate:g}", daemon=True)
        t.start()
        threads.append(t)
    deadline = time.monotonic() + scenario.timeout + 5
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0))


def _p(values: list[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def saturation(records: list[ProbeResult], sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario and case: a row per offered rate, and the knee."""
    groups: dict[tuple, dict[float, list[ProbeResult]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        rate = rate_of(r.case)
        if rate is not None:
            groups[(r.target, r.model, r.scenario, r.case.rsplit(RATE_SEPARATOR, 1)[0])][rate].append(r)
    ttft_limit, tpot_limit, duration = sweep["ttft_limit_s"], sweep["tpot_limit_s"], sweep["duration_s"]
    out = []
    for (target, model, scenario, case), by_rate in sorted(groups.items()):
        rows = []
        for rate in sorted(by_rate):
            rs = by_rate[rate]
            ok = [r for r in rs if r.ok]
            ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
            tpot = [r.time_per_output_token_s for r in ok if r.time_per_output_token_s is not None]
            good = [r for r in ok if r.ttft_s is not None and r.ttft_s <= ttft_limit
                    and (r.time_per_output_token_s is None or r.time_per_output_token_s <= tpot_limit)]
            # At least the arrival window: a few requests that happen to finish early must not
            # read as more than was offered; an overloaded server stretches it past the window.
            span = max(max(r.ended_at for r in rs) - min(r.started_at for r in rs), duration) if rs else 0
            row = {
                "offered_rate": rate, "requests": len(rs), "arrival_rate": len(rs) / duration,
                "failures": len(rs) - len(ok),
                "throughput": len(ok) / span if span > 0 else None,
                "output_tokens_per_s": sum(r.eval_count or 0 for r in ok) / span if span > 0 else None,
                "ttft_p50": _p(ttft, 50), "ttft_p95": _p(ttft, 95), "tpot_p50": _p(tpot, 50), "tpot_p95": _p(tpot, 95),
                "latency_p95": _p([r.request_duration_s for r in ok], 95),
                # Over the same span as throughput (first send to last answer), so goodput <= throughput.
                "goodput": len(good) / span if span > 0 else 0.0, "good_share": len(good) / len(rs) if rs else None,
            }
            row["within_limits"] = bool(ok) and row["failures"] == 0 and row["ttft_p95"] <= ttft_limit and (
                row["tpot_p95"] is None or row["tpot_p95"] <= tpot_limit)
            rows.append(row)
        within = [r["offered_rate"] for r in rows if r["within_limits"]]
        knee = max(within) if within else None
        # A lower rate that broke a limit while a higher one held is noise (or a stall) worth seeing.
        broken_below = [r["offered_rate"] for r in rows if knee is not None and r["offered_rate"] < knee
                        and not r["within_limits"]]
        best = max(rows, key=lambda r: r["goodput"]) if rows else None
        out.append({"target": target, "model": model, "scenario": scenario, "case": case, "rows": rows,
                    "knee_rate": knee, "broken_below_knee": broken_below, "max_goodput": best["goodput"] if best else None,
                    "max_goodput_rate": best["offered_rate"] if best else None})
    return out
