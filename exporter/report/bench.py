"""`ollama-perf-exporter bench`: run the scenarios once, on the exporter's own probe
engine, and write the raw records, system facts, statistics, REPORT.md and plots."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Optional

from ..config import Config
from ..exit_codes import EXIT_OK, EXIT_REGRESSION, EXIT_RUNTIME, EXIT_USAGE
from ..results import ProbeResult, ResultsWriter, read_results
from ..runner import ScenarioRunner, planned_requests
from ..server_stats import ProcessTree
from ..sinks import ResultsFileSink, Sink
from . import gpu, sysinfo
from .advice import advise, scenarios_record, suggested_scenarios
from .compare import compare_runs, is_run_dir, regression_lines
from .conversations import conversation_summary
from .ladder import ContextLadder, ladder_fit, run_context_ladder
from .ratesweep import RateSweep, run_rate_sweep, saturation
from .stats import sections, summarize

log = logging.getLogger(__name__)
SAMPLE_INTERVAL_S = 0.5
SUGGESTED_SCENARIOS = "suggested-scenarios.yaml"
RATE_SWEEP_RESULTS = "rate_sweep.jsonl"
LADDER_RESULTS = "context_ladder.jsonl"  # the requests
LADDER_STEPS = "context_ladder.json"  # memory per step


class ResourceSampler:
    """Samples each local target's process tree in the background while the benchmark runs."""

    def __init__(self, config: Config, interval: float = SAMPLE_INTERVAL_S,
                 gpu_sampler: Optional[Callable[[], Optional[list[dict[str, Any]]]]] = None):
        self.trees = {t.name: ProcessTree(t.process_match, t.port) for t in config.targets if t.process_match}
        # This host's GPUs (nvidia-smi), recorded with each local server's sample of the same tick.
        self.gpu_sampler = gpu_sampler
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)

    def _loop(self) -> None:
        while True:
            gpus = self.gpu_sampler() if self.gpu_sampler and self.trees else None
            for name, tree in self.trees.items():
                sample = tree.sample()
                if sample is not None:
                    record = {"t": time.time(), "target": name, "cpu_seconds_total": sample.cpu_seconds_total,
                              "resident_bytes": sample.resident_bytes, "processes": sample.processes}
                    if gpus:
                        record["gpus"] = gpus
                    self.samples.append(record)
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


class Progress(Sink):
    """requests done / total, elapsed, current case: one rewritten line on a terminal, sparse lines otherwise."""

    def __init__(self, total: int, quiet: bool, stream=sys.stderr):
        self.total = max(total, 1)
        self.done = 0
        self.failed = 0
        self.quiet = quiet
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0

    def on_result(self, r: ProbeResult) -> None:
        self.done += 1
        self.failed += 0 if r.ok else 1
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        line = (f"[{self.done:>4}/{self.total}] {elapsed:6.1f}s  {r.target}/{r.scenario}/{r.case} c={r.concurrency}"
                f"  failures={self.failed}")
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            self.stream.flush()
        elif self.done == self.total or time.monotonic() - self._last_line > 5:
            self.stream.write(line + "\n")
            self._last_line = time.monotonic()

    def finish(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")


def _write_json(path: str, data: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def _load_json(path: str, default: Any) -> Any:
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_advice(out_dir: str, summary: dict[str, Any], system: dict[str, Any]) -> None:
    """What to change, per target and model, and the scenario file that measures the request-option suggestions."""
    scenarios = _load_json(os.path.join(out_dir, "scenarios.json"), [])
    for _target, model, m in sections(summary):
        m["advice"] = advise(model, m, system, scenarios)
    suggestions = suggested_scenarios([(target, model, m["advice"]) for target, model, m in sections(summary)],
                                      scenarios)
    path = os.path.join(out_dir, SUGGESTED_SCENARIOS)
    if suggestions:
        with open(path, "w", encoding="utf-8") as f:
            f.write(suggestions)
    elif os.path.exists(path):
        os.remove(path)
    summary["suggested_scenarios"] = SUGGESTED_SCENARIOS if suggestions else None


def _add_rate_sweep(out_dir: str, summary: dict[str, Any], system: dict[str, Any]) -> list[str]:
    from .plots import write_saturation_plot

    path = os.path.join(out_dir, RATE_SWEEP_RESULTS)
    spec = system.get("rate_sweep")
    if not spec or not os.path.exists(path):
        return []
    summary["saturation"] = saturation(list(read_results(path)), spec)
    summary["rate_sweep"] = spec
    return write_saturation_plot(out_dir, summary["saturation"], spec["ttft_limit_s"], spec["tpot_limit_s"])


def build_report(out_dir: str, compare_dir: Optional[str] = None,
                 fail_on_regression: Optional[float] = None) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """(Re)build summary.json, comparison.json, plots, REPORT.md and report.html from the raw files in out_dir."""
    from .html import render_html
    from .markdown import render
    from .plots import write_plots

    records = list(read_results(os.path.join(out_dir, "results.jsonl")))
    system = _load_json(os.path.join(out_dir, "system.json"), None)
    samples_path = os.path.join(out_dir, "resources.jsonl")
    samples = []
    if os.path.exists(samples_path):
        with open(samples_path, encoding="utf-8") as f:
            samples = [json.loads(line) for line in f if line.strip()]
    summary = summarize(records, samples, system, system.get("running_models", {}))
    summary["conversations"] = conversation_summary(records)
    _write_advice(out_dir, summary, system)
    plots = [os.path.basename(p) for p in write_plots(out_dir, records, summary, samples)]
    plots += [os.path.basename(p) for p in _add_rate_sweep(out_dir, summary, system)]
    steps = _load_json(os.path.join(out_dir, LADDER_STEPS), None)
    if steps:
        summary["context_ladder"] = ladder_fit(steps, system)
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    comparison = None
    if compare_dir:
        comparison = compare_runs(compare_dir, records, system, fail_on_regression)
        _write_json(os.path.join(out_dir, "comparison.json"), comparison)
    text = render(summary, system, plots, out_dir, comparison)
    with open(os.path.join(out_dir, "REPORT.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out_dir, "report.html"), "w", encoding="utf-8") as f:
        f.write(render_html(text, out_dir))
    return summary, comparison


def _remove(out_dir: str, *names: str) -> None:
    for name in names:
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.remove(path)


def _run_extras(config: Config, out_dir: str, system: dict[str, Any], rate_sweep: Optional[RateSweep],
                context_ladder: Optional[ContextLadder], quiet: bool) -> None:
    """The open-loop rate sweep and the context ladder, each to its own records file."""
    _remove(out_dir, RATE_SWEEP_RESULTS, LADDER_RESULTS, LADDER_STEPS)
    if rate_sweep is not None:
        system["rate_sweep"] = rate_sweep.to_dict()
        if not quiet:
            print(f"rate sweep: {len(rate_sweep.rates)} rates x {rate_sweep.duration_s:g} s per scenario and target",
                  file=sys.stderr)
        writer = ResultsWriter(os.path.join(out_dir, RATE_SWEEP_RESULTS))
        run_rate_sweep(config, rate_sweep, [ResultsFileSink(writer)])
        writer.close()
    if context_ladder is not None:
        system["context_ladder"] = context_ladder.to_dict()
        if not quiet:
            print(f"context ladder: num_ctx {', '.join(map(str, context_ladder.contexts))}", file=sys.stderr)
        writer = ResultsWriter(os.path.join(out_dir, LADDER_RESULTS))
        steps = run_context_ladder(config, context_ladder, [ResultsFileSink(writer)])
        writer.close()
        _write_json(os.path.join(out_dir, LADDER_STEPS), steps)


def run_bench(config: Config, out_dir: str, compare: Optional[str] = None, quiet: bool = False,
              memory_bandwidth: Optional[float] = None, fail_on_regression: Optional[float] = None,
              rate_sweep: Optional[RateSweep] = None, context_ladder: Optional[ContextLadder] = None) -> int:
    if compare and not is_run_dir(compare):
        print(f"--compare {compare}: no results.jsonl and system.json there (is it a bench output directory?)",
              file=sys.stderr)
        return EXIT_USAGE
    if fail_on_regression is not None and not compare:
        print("--fail-on-regression needs --compare OLD_DIR", file=sys.stderr)
        return EXIT_USAGE
    if compare and os.path.abspath(compare) == os.path.abspath(out_dir):
        print("--compare must name another directory than --output (the new run replaces the old records)",
              file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(out_dir, exist_ok=True)
    results_path = os.path.join(out_dir, "results.jsonl")
    if os.path.exists(results_path):
        os.remove(results_path)  # one report per directory: never mix two runs
    system = sysinfo.collect(config, memory_bandwidth)
    _write_json(os.path.join(out_dir, "scenarios.json"), scenarios_record(config))
    writer = ResultsWriter(results_path)

    jobs = [(s, t) for s in config.scenarios for t in s.targets]
    total = sum(planned_requests(s) for s, _ in jobs)
    progress = Progress(total, quiet)
    # Every record goes to the results file; the report is built from that file.
    sinks = [ResultsFileSink(writer), progress]
    running: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    with ResourceSampler(config, gpu_sampler=gpu.gpu_sample if system.get("gpus") else None) as sampler:
        for scenario, target in jobs:
            ScenarioRunner(scenario, target, sinks).run()

            # Loaded-model facts (size, VRAM, context) while the model is still resident.
            running[target.name] = sysinfo.running_model_facts(target) or running.get(target.name, [])
        _run_extras(config, out_dir, system, rate_sweep, context_ladder, quiet)
    progress.finish()
    writer.close()
    system["running_models"] = running
    system["bench_started_at"] = started
    system["bench_ended_at"] = time.time()
    system["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _write_json(os.path.join(out_dir, "system.json"), system)
    with open(os.path.join(out_dir, "resources.jsonl"), "w", encoding="utf-8") as f:
        for s in sampler.samples:
            f.write(json.dumps(s) + "\n")
    summary, comparison = build_report(out_dir, compare, fail_on_regression)
    if not quiet:
        print(f"{summary['requests']} requests, {summary['failures']} failed; report: {os.path.join(out_dir, 'REPORT.md')}",
              file=sys.stderr)
    all_failed = summary["requests"] and summary["failures"] == summary["requests"]
    if all_failed:
        return EXIT_RUNTIME
    if comparison and comparison["regressions"]:
        # Said even with --quiet: this is why the command fails.
        print(f"regressed by more than {fail_on_regression:g}% with {comparison['confidence']:.0%} confidence "
              f"against {compare}:", file=sys.stderr)
        for line in regression_lines(comparison):
            print("  " + line, file=sys.stderr)
        return EXIT_REGRESSION
    return EXIT_OK
