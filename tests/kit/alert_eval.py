#!/usr/bin/env python3
"""Measure the regression alerts: the real LiveStats code, the real rule file, Prometheus's own engine.

For each schedule (a run every 15 s, 1 min, 1 h) it simulates 14 days of probe runs of many
independent cases, each one quantity of one case (time to first token or end-to-end latency,
higher is worse; decode tokens/s, lower is worse):

- per-request values are lognormal around the case's level; the noise has a run-level part
  (CV/2: the whole run is a bit faster or slower) and a request-level part (CV x sqrt(3)/2),
  so the total coefficient of variation is CV;
- requests per run per case: 1 at 15 s and 1 min (scenarios/default.yaml: repeats 1),
  5 at 1 h (scenarios/day1.yaml's smallest repeats);
- step cases: a regression (+10/+25/+50% latency, -10/-25/-50% tokens/s) starts at a random
  time in the second day of every two-day cycle and is held for 6 hours: 7 per case,
  3 cases per effect, CV and direction = 21 injections per row;
- noise cases (10): nothing changes (CV 10%); wobble cases (10 at CV 10%, 2 at CV 2%, where
  every value sits on one side of a histogram bucket edge): the level moves by 4% (random
  sign) for 10 min to 3 h, then back, every 3 h on average. False alerts are counted on
  these and on the step cases outside their regressions (and 3 h after).

Every simulated record goes through LiveStats.on_result / on_run (simulated time comes from
the records). Once per simulated minute the script reads the gauges from the Prometheus
registry and appends them to promtool `input_series`; `promtool test rules` then evaluates
prometheus/rules/regression.yml on them, with an `alert_rule_test` every 5 minutes that
expects no alert. Its FAILED report lists every alert that did fire, and when: that is
the measurement. Delays are therefore rounded up to the 5-minute evaluation grid.

Prints one table per schedule and, last, `alert-eval: K of N targets met`.
`--quick` runs 4 days of the 1 min and 1 h schedules, one case per row (tests/test_alert_eval.py).
`--schedules 1h --seed 210` runs the hourly schedule alone with the full eval's seed for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from statistics import median

from prometheus_client import CollectorRegistry


from exporter.live_window import Policy
from exporter.results import ProbeResult, RunSummary
from .exporters import ROOT, open_live_stats

RULES = os.path.join(ROOT, "prometheus", "rules", "regression.yml")
T0 = 1_780_000_000.0  # simulated wall clock at minute 0
DAY = 86400.0
HOLD_S = 6 * 3600.0
EVAL_STEP_MIN = 5
# (seconds between runs, requests per run per case)
SCHEDULES = {"15s": (15, 1), "1m": (60, 1), "1h": (3600, 5)}
BASE = {"time_to_first_token_seconds": 0.3, "request_duration_seconds": 3.0, "output_tokens_per_second": 40.0}
LOWER_IS_WORSE = {"output_tokens_per_second"}


@dataclass
class Case:
    name: str
    quantity: str
    kind: str  # step | noise | wobble
    effect: float  # relative change of the level while a regression is held (worse is positive)
    cv: float
    segments: list = field(default_factory=list)  # (start, end, factor): level multiplier
    injections: list = field(default_factory=list)  # start times of the steps

    @property
    def higher_is_worse(self) -> bool:
        return self.quantity not in LOWER_IS_WORSE

    def row(self) -> tuple:
        direction = "latency" if self.higher_is_worse else "tokens/s"
        return (self.kind, direction, self.effect, self.cv)


def plan(days: int, quick: bool, rng: random.Random) -> list[Case]:
    cases: list[Case] = []
    per_effect = 1 if quick else 3
    effects = ((0.25, 0.05), (0.50, 0.10)) if quick else ((0.10, 0.05), (0.25, 0.05), (0.25, 0.10), (0.50, 0.10))
    latency = ("time_to_first_token_seconds", "request_duration_seconds")
    for effect, cv in effects:
        for i in range(per_effect):
            for q in (latency[i % 2], "output_tokens_per_second"):
                cases.append(Case(f"c{len(cases):02d}", q, "step", effect, cv))
    n_noise = 1 if quick else 5
    for kind, cv, n in (("noise", 0.10, n_noise), ("wobble", 0.10, n_noise), ("wobble", 0.02, 0 if quick else 1)):
        for i in range(n):
            for q in (latency[i % 2], "output_tokens_per_second"):
                cases.append(Case(f"c{len(cases):02d}", q, kind, 0.0, cv))
    end = T0 + days * DAY
    for c in cases:
        if c.kind == "step":
            for cycle in range(days // 2):
                start = T0 + cycle * 2 * DAY + DAY + rng.uniform(0, 18 * 3600)
                factor = 1 + c.effect if c.higher_is_worse else 1 - c.effect
                c.segments.append((start, start + HOLD_S, factor))
                c.injections.append(start)
        elif c.kind == "wobble":
            t = T0 + rng.expovariate(1 / (3 * 3600))
            while t < end:
                length = rng.uniform(600, 3 * 3600)
                c.segments.append((t, t + length, 1 + rng.choice((-0.04, 0.04))))
                t += length + rng.expovariate(1 / (3 * 3600))
    return cases


def level(case: Case, t: float) -> float:
    for start, stop, factor in case.segments:
        if start <= t < stop:
            return factor
    return 1.0


def simulate(schedule: str, days: int, cases: list[Case], seed: int, policy: Policy = Policy()) -> tuple[dict, dict]:
    """Drive LiveStats over simulated time; return per-minute gauge samples per (metric, case)."""
    interval, per_run = SCHEDULES[schedule]
    rng = random.Random(seed)
    registry = CollectorRegistry()
    stats = open_live_stats(registry, policy)
    minutes = int(days * 1440)
    wanted = ("llm_probe_recent_quantile", "llm_probe_baseline_median", "llm_probe_regression_threshold_ratio",
              "llm_probe_baseline_noise", "llm_probe_baseline_runs")
    samples = {(m, c.name): [None] * (minutes + 1) for m in wanted for c in cases}
    run = 0
    began = time.monotonic()
    for minute in range(minutes + 1):
        now = T0 + minute * 60
        while T0 + run * interval + per_run * 0.5 <= now:
            start = T0 + run * interval
            for c in cases:
                sigma_run = math.sqrt(math.log(1 + (c.cv / 2) ** 2))
                sigma_req = math.sqrt(math.log(1 + (c.cv * math.sqrt(3) / 2) ** 2))
                lvl = BASE[c.quantity] * level(c, start) * math.exp(rng.gauss(0, sigma_run))
                run_id = f"{c.name}-{run}"
                for k in range(per_run):
                    v = lvl * math.exp(rng.gauss(0, sigma_req))
                    r = ProbeResult(target="sim", scenario=schedule, model="m", case=c.name, run_id=run_id, ok=True,
                                    started_at=start + k * 0.5, ended_at=start + (k + 1) * 0.5)
                    if c.quantity == "time_to_first_token_seconds":
                        r.ttft_s = v
                    elif c.quantity == "request_duration_seconds":
                        r.request_duration_s = v
                    else:
                        r.eval_count, r.eval_duration_s = 100, 100 / v
                    stats.on_result(r)
                stats.on_run(RunSummary("sim", schedule, run_id, start, start + per_run * 0.5, per_run, 0))
            run += 1
        for family in registry.collect():
            if family.name not in wanted:
                continue
            for s in family.samples:
                if s.name != family.name or s.labels.get("quantile", "0.5") != "0.5":
                    continue
                samples[(family.name, s.labels["case"])][minute] = s.value
    info = {"runs": run, "seconds": time.monotonic() - began}
    return samples, info


def _compact(values: list) -> str:
    """promtool series notation: runs of equal values as `vx(N-1)`, missing samples as `_`."""
    out = []
    i = 0
    while i < len(values):
        v = values[i]
        j = i
        while j + 1 < len(values) and values[j + 1] == v:
            j += 1
        if v is None:
            out.extend(["_"] * (j - i + 1))
        else:
            text = format(v, ".7g")
            out.append(text if j == i else f"{text}x{j - i}")
        i = j + 1
    return " ".join(out)


def write_test(path: str, schedule: str, cases: list[Case], samples: dict, minutes: int) -> None:
    lines = [
        f"rule_files:\n  - {json.dumps(RULES)}\nevaluation_interval: 1m\ntests:\n",
        f"  - name: alert-eval {schedule}\n    interval: 1m\n    input_series:\n",
    ]
    for c in cases:
        labels = (f'target="sim", scenario="{schedule}", model="m", case="{c.name}", concurrency="1", '
                  f'start="warm", quantity="{c.quantity}"')
        for metric in ("llm_probe_recent_quantile", "llm_probe_baseline_median", "llm_probe_regression_threshold_ratio",
                       "llm_probe_baseline_noise", "llm_probe_baseline_runs"):
            extra = ', quantile="0.5"' if metric == "llm_probe_recent_quantile" else ""
            lines.append(f"      - series: '{metric}{{{labels}{extra}}}'\n        values: '{_compact(samples[(metric, c.name)])}'\n")
    lines.append("    alert_rule_test:\n")
    for m in range(EVAL_STEP_MIN, minutes + 1, EVAL_STEP_MIN):
        for alert in ("LLMLatencyRegression", "LLMThroughputRegression"):
            lines.append(f"      - eval_time: {m}m\n        alertname: {alert}\n        exp_alerts: []\n")
    with open(path, "w") as f:
        f.writelines(lines)


_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_MIN = {"y": 525600, "w": 10080, "d": 1440, "h": 60, "m": 1, "s": 1 / 60, "ms": 1 / 60000}


def _minutes(text: str) -> float:
    return sum(int(n) * _UNIT_MIN[u] for n, u in _DURATION.findall(text))


def run_promtool(path: str) -> dict[str, list[float]]:
    """Evaluate the rule file on the generated input; return the minutes at which each case's alert fired."""
    promtool = shutil.which("promtool")
    if not promtool:
        sys.exit("promtool not found: install Debian's prometheus package (make system-deps)")
    res = subprocess.run([promtool, "test", "rules", path], capture_output=True, text=True)
    out = res.stdout + res.stderr
    if res.returncode == 0:
        return {}
    fired: dict[str, list[float]] = {}
    blocks = re.split(r"alertname: \w+, time: ", out)
    if len(blocks) < 2:
        raise RuntimeError(f"promtool failed without alert results:\n{out[-3000:]}")
    for block in blocks[1:]:
        when = _minutes(block.split(",", 1)[0])
        got = block.split("got:", 1)[1] if "got:" in block else ""
        for case in re.findall(r'case="([^"]+)"', got):
            fired.setdefault(case, []).append(when)
    return fired


@dataclass
class Outcome:
    detected: list = field(default_factory=list)  # (delay minutes, delay runs) per detected injection
    missed: int = 0
    false_alerts: int = 0
    case_weeks: float = 0.0


def score(schedule: str, days: int, cases: list[Case], fired: dict) -> dict[tuple, Outcome]:
    interval, _ = SCHEDULES[schedule]
    rows: dict[tuple, Outcome] = {}
    for c in cases:
        o = rows.setdefault(c.row(), Outcome())
        minutes = sorted(set(fired.get(c.name, [])))
        episodes = [m for i, m in enumerate(minutes) if i == 0 or m - minutes[i - 1] > EVAL_STEP_MIN]
        excluded = [((s - T0) / 60, (s - T0 + HOLD_S) / 60 + 180) for s in c.injections]
        for inj in c.injections:
            start = (inj - T0) / 60
            hits = [m for m in minutes if start <= m <= start + HOLD_S / 60]
            if hits:
                delay = hits[0] - start
                # Runs that started after the injection, up to the evaluation that fired.
                runs = math.floor((hits[0] * 60 - 0.5) / interval) - math.floor((start * 60) / interval)
                o.detected.append((delay, runs))
            else:
                o.missed += 1
        o.false_alerts += sum(1 for m in episodes if not any(a <= m <= b for a, b in excluded))
        o.case_weeks += (days * 1440 - sum(b - a for a, b in excluded)) / 10080
    return rows


def evaluate(schedule: str, days: int, quick: bool, seed: int, workdir: str, policy: Policy = Policy()) -> tuple[dict, dict]:
    rng = random.Random(seed)
    cases = plan(days, quick, rng)
    samples, info = simulate(schedule, days, cases, seed + 1, policy)
    path = os.path.join(workdir, f"alert_eval_{schedule}.yml")
    write_test(path, schedule, cases, samples, days * 1440)
    began = time.monotonic()
    fired = run_promtool(path)
    info["promtool_seconds"] = time.monotonic() - began
    info["cases"] = len(cases)
    return score(schedule, days, cases, fired), info


def _fmt_delay(values: list, unit: str) -> str:
    if not values:
        return "-"
    return f"{median(values):.0f}/{max(values):.0f} {unit}"


def report(results: dict, days: int) -> tuple[list[str], list[bool]]:
    lines = []
    met: list[bool] = []
    for schedule, (rows, info) in results.items():
        interval, per_run = SCHEDULES[schedule]
        lines.append("")
        lines.append(
            f"schedule {schedule}: {days} days, {info['cases']} cases, {per_run} request(s)/run/case, "
            f"{info['runs']} runs (simulation {info['seconds']:.0f}s, promtool {info['promtool_seconds']:.0f}s)"
        )
        lines.append(f"{'kind':7} {'quantity':9} {'effect':>6} {'CV':>4} {'inj':>4} {'detected':>10} "
                     f"{'delay min med/max':>18} {'delay runs med/max':>19} {'false/case-wk':>13} {'case-wks':>8}")
        for (kind, direction, effect, cv), o in sorted(results[schedule][0].items()):
            n = len(o.detected) + o.missed
            sign = "+" if direction == "latency" else "-"
            eff = f"{sign}{effect:.0%}" if kind == "step" else ("+-4%" if kind == "wobble" else "0%")
            det = f"{len(o.detected)}/{n}" if n else "-"
            fpw = o.false_alerts / o.case_weeks if o.case_weeks else 0.0
            lines.append(
                f"{kind:7} {direction:9} {eff:>6} {cv:>4.0%} {n:>4} {det:>10} "
                f"{_fmt_delay([d for d, _ in o.detected], 'min'):>18} {_fmt_delay([r for _, r in o.detected], 'runs'):>19} "
                f"{fpw:>13.3f} {o.case_weeks:>8.1f}"
            )
        # Targets of issue 10.
        for kind in ("noise", "wobble"):
            fa = sum(o.false_alerts for (k, _, _, cv), o in rows.items() if k == kind and cv == 0.10)
            weeks = sum(o.case_weeks for (k, _, _, cv), o in rows.items() if k == kind and cv == 0.10)
            ok = weeks > 0 and fa / weeks * 4 <= 1
            met.append(ok)
            lines.append(f"  target {'met' if ok else 'MISSED'}: {kind} at CV 10%: {fa} false alerts in {weeks:.0f} case-weeks "
                         f"= {4 * fa / weeks if weeks else float('nan'):.2f} per case per 4 weeks (<= 1)")
        for effect, cv in ((0.25, 0.05), (0.25, 0.10), (0.5, 0.10)):
            outs = [o for (k, _, e, c), o in rows.items() if k == "step" and e == effect and c == cv]
            if schedule not in ("1m", "1h") or not outs:
                continue
            n = sum(len(o.detected) + o.missed for o in outs)
            if schedule == "1m":
                good = sum(1 for o in outs for d, _ in o.detected if d <= 30)
                limit = "30 min"
            else:
                good = sum(1 for o in outs for _, r in o.detected if r <= 3)
                limit = "3 runs"
            ok = n > 0 and good == n
            met.append(ok)
            lines.append(f"  target {'met' if ok else 'MISSED'}: {effect:.0%} at CV {cv:.0%} detected within {limit}: {good}/{n} (all)")
        if schedule == "1m":
            outs = [o for (k, _, e, cv), o in rows.items() if k == "step" and e == 0.10 and cv <= 0.05]
            n = sum(len(o.detected) + o.missed for o in outs)
            if n:
                good = sum(1 for o in outs for d, _ in o.detected if d <= 120)
                ok = good >= 0.9 * n
                met.append(ok)
                lines.append(f"  target {'met' if ok else 'MISSED'}: 10% at CV 5% detected within 2 h: {good}/{n} (>= 90%)")
    return lines, met


def rebuild_timing(workdir: str, days: float = 3.0) -> str:
    """Write a results file as scenarios/default.yaml makes it (3 cases, a run a minute, 32 tokens
    a request) for `days` days, then time LiveStats.rebuild on it, as the exporter does at start-up."""
    from exporter.results import ResultsWriter

    path = os.path.join(workdir, "results.jsonl")
    writer = ResultsWriter(path)
    rng = random.Random(1)
    for run in range(int(days * 1440)):
        start = T0 + run * 60
        for k, case in enumerate(("short", "medium", "long")):
            ttft = (0.05, 0.3, 1.2)[k] * rng.lognormvariate(0, 0.05)
            gaps = [0.035 * rng.lognormvariate(0, 0.1) for _ in range(31)]
            t = start + 3 * k
            writer.write(ProbeResult(
                target="local", scenario="default", model="llama3.2:1b", case=case, run_id=f"r{run}", ok=True,
                options={"temperature": 0, "seed": 42, "num_predict": 32}, prompt_chars=(11, 170, 560)[k],
                started_at=t, ended_at=t + ttft + sum(gaps), connect_duration_s=0.0002, ttft_s=ttft,
                request_duration_s=ttft + sum(gaps), inter_token_gaps_s=gaps, output_chunks=32, response_chars=150,
                load_duration_s=0.004, prompt_eval_count=(30, 60, 130)[k], prompt_eval_duration_s=ttft * 0.9,
                eval_count=32, eval_duration_s=sum(gaps), total_duration_s=ttft + sum(gaps) - 0.001, done_reason="length",
            ))
    writer.close()
    size = os.path.getsize(path)
    began = time.monotonic()
    stats = open_live_stats(CollectorRegistry()).rebuild(path)
    took = time.monotonic() - began
    return (f"rebuild: {size / 1e6:.1f} MB results file ({days:.0f} days of scenarios/default.yaml), "
            f"{stats.records} records, {stats.runs} runs, {stats.series} series in {took:.2f}s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 days, schedules 1m and 1h, fewer cases")
    ap.add_argument("--days", type=int, help="simulated days per schedule (default 14, quick 4)")
    ap.add_argument("--schedules", default=None,
                    help="comma-separated subset of 15s,1m,1h; the i-th listed (from 0) gets seed --seed + 100 i, so "
                         "`--schedules 1h --seed 210` reproduces the full eval's hourly table")
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=min(3, os.cpu_count() or 1))
    ap.add_argument("--keep", help="write the generated promtool files to this folder instead of a temp dir")
    ap.add_argument("--policy", action="append", default=[], metavar="FIELD=VALUE",
                    help="try another exporter.live_window.Policy value (tuning), e.g. min_effect=0.1")
    args = ap.parse_args(argv)
    days = args.days or (4 if args.quick else 14)
    schedules = args.schedules.split(",") if args.schedules else (["1m", "1h"] if args.quick else list(SCHEDULES))
    p = Policy(**{k: type(getattr(Policy(), k))(v) for k, v in (item.split("=", 1) for item in args.policy)})
    print(f"alert-eval: policy recent=max({p.recent_runs} runs, {p.recent_seconds / 60:.0f} min), baseline={p.baseline_seconds / 3600:.0f} h "
          f"(>= {p.baseline_min_runs}, <= {p.baseline_max_runs} runs), min effect {p.min_effect:.0%}, "
          f"tolerance {p.tolerance:.0%}, false alerts per 4 weeks budget {p.false_alerts_per_4_weeks}, "
          f"baseline reaches back to {p.baseline_min_span_runs} runs within {p.baseline_max_seconds / 3600:.0f} h")
    workdir = args.keep or tempfile.mkdtemp(prefix="alert-eval-")
    os.makedirs(workdir, exist_ok=True)
    try:
        if not args.quick:
            print(rebuild_timing(workdir))
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {s: pool.submit(evaluate, s, days, args.quick, args.seed + i * 100, workdir, p) for i, s in enumerate(schedules)}
            results = {s: f.result() for s, f in futures.items()}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    lines, met = report(results, days)
    print("\n".join(lines))
    print(f"alert-eval: {sum(met)} of {len(met)} targets met")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
