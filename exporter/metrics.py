"""Metric definitions on an injected registry, fed by result records.

Probe metrics come from scheduled background runs, not from the scrape: a
scrape only reads what the last runs recorded.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Optional, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .config import Config
from .results import FAILURE_REASONS, BatchSummary, ProbeResult, RunSummary
from .schedule import longest_gap_s
from .sinks import Sink

PROBE_LABELS = ("target", "scenario", "model", "case", "concurrency")
START_LABELS = PROBE_LABELS + ("start",)
RUN_LABELS = ("target", "scenario")
BG = " Measured by scheduled background probe runs, not at scrape time."

# Buckets are chosen for LLM work, not web requests, and span both a small CPU host and a
# fast GPU. They stay modest in number: every bucket is one series per label set, and each
# label set has a dozen histograms. Dashboards and alerts read exact statistics computed
# from the measured requests (llm_probe_recent_quantile, ...), not quantiles interpolated
# inside these buckets; the histograms remain for distributions (heatmaps, counts).
# TTFT: 2.5 ms (a warm, short prompt on a GPU) up to 10 minutes (a cold load of a large
# model from a slow disk, or a long prompt prefilled on a CPU).
TTFT_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Gaps between streamed tokens: 1 ms (fast GPU, ~1000 tok/s) to 5 s (a stalled or
# swapping CPU host); dense between 10 and 100 ms, where CPU decoding of 1-8B models lives.
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 5)
# End-to-end: 25 ms (a few tokens on a GPU) to 10 minutes (long generations on a CPU).
DURATION_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Server-side phases can be far shorter than a request: start at 1 ms.
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
# Model load: a resident model reports a few ms; a cold load from disk takes seconds to minutes.
LOAD_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Tokens per second: 1 (a 70B model on a CPU) to 50,000 (prefill of a small model on a
# fast GPU runs at tens of thousands); dense from 10 to 100, where CPU decoding lives.
RATE_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
START_KINDS = ("cold", "warm")


def slo_good(r: ProbeResult, slo) -> bool:
    """Judge one request against an SLO (config.Slo): good if it succeeded and met every
    threshold given. A threshold whose value the request lacks counts as missed, except the
    time per output token of a request with fewer than two tokens, which has no pace to judge."""
    if not r.ok:
        return False
    for threshold, value in ((slo.ttft, r.ttft_s), (slo.request_duration, r.request_duration_s)):
        if threshold is not None and (value is None or value > threshold):
            return False
    tpot = r.time_per_output_token_s
    if slo.time_per_output_token is not None and tpot is not None and tpot > slo.time_per_output_token:
        return False
    return True


Metric = Union[Counter, Gauge, Histogram]

# Histograms with one observation per successful request: name, help, buckets, ProbeResult field.
PER_REQUEST_HISTOGRAMS = (
    ("llm_probe_time_per_output_token_seconds", "Per request: (end-to-end latency - TTFT) / (output tokens - 1).",
     TOKEN_GAP_BUCKETS, "time_per_output_token_s"),
    ("llm_probe_output_tokens_per_second", "Server timings: eval_count / eval_duration (decode speed).",
     RATE_BUCKETS, "output_tokens_per_s"),
    ("llm_probe_prompt_tokens_per_second",
     "Server timings: prompt_eval_count / prompt_eval_duration (prefill speed).", RATE_BUCKETS, "prompt_tokens_per_s"),
    ("llm_probe_load_duration_seconds", "Server timings: model load time.", LOAD_BUCKETS, "load_duration_s"),
    ("llm_probe_prompt_eval_duration_seconds", "Server timings: prompt evaluation (prefill) time.",
     PHASE_BUCKETS, "prompt_eval_duration_s"),
    ("llm_probe_eval_duration_seconds", "Server timings: generation (decode) time.", PHASE_BUCKETS, "eval_duration_s"),
    ("llm_probe_queue_duration_seconds",
     "Client end-to-end latency minus the server's total_duration: queueing and transport.",
     PHASE_BUCKETS, "queue_duration_s"),
)


class ProbeMetrics(Sink):
    """The probe sink: turns result records into Prometheus series."""

    def __init__(self, registry: CollectorRegistry):
        # Every label set this sink created, by (target, scenario): what retire() removes.
        self._series: dict[tuple[str, str], set[tuple[Metric, tuple[str, ...]]]] = defaultdict(set)
        self._series_lock = threading.Lock()

        def hist(name, doc, labels, buckets):
            return Histogram(name, doc + BG, labels, buckets=buckets, registry=registry)

        self.ttft = hist(
            "llm_probe_time_to_first_token_seconds",
            "Client clock: time from sending the request to the first non-empty token.",
            START_LABELS, TTFT_BUCKETS,
        )
        self.duration = hist(
            "llm_probe_request_duration_seconds",
            "Client clock: end-to-end latency of a successful request.",
            START_LABELS, DURATION_BUCKETS,
        )
        self.inter_token = hist(
            "llm_probe_inter_token_latency_seconds",
            "Client clock: each gap between consecutive streamed tokens.",
            PROBE_LABELS, TOKEN_GAP_BUCKETS,
        )
        # One observation per successful request, of the record's field of the same row.
        self._per_request = tuple(
            (hist(name, doc, PROBE_LABELS, buckets), field) for name, doc, buckets, field in PER_REQUEST_HISTOGRAMS
        )
        self.prompt_tokens = Counter(
            "llm_probe_prompt_tokens_total", "Prompt tokens evaluated by the server." + BG, PROBE_LABELS, registry=registry
        )
        self.output_tokens = Counter(
            "llm_probe_output_tokens_total", "Tokens generated by the server." + BG, PROBE_LABELS, registry=registry
        )
        self.requests = Counter(
            "llm_probe_requests_total", "Probe requests sent (warm-ups excluded)." + BG, PROBE_LABELS, registry=registry
        )
        self.failures = Counter(
            "llm_probe_request_failures_total",
            "Failed probe requests by reason (" + ", ".join(FAILURE_REASONS) + ")." + BG,
            PROBE_LABELS + ("reason",), registry=registry,
        )
        self.success = Gauge(
            "llm_probe_success", "1 if the scenario's last run had no failed request, else 0." + BG,
            RUN_LABELS, registry=registry,
        )
        self.last_run = Gauge(
            "llm_probe_last_run_timestamp_seconds", "Unix time when the scenario's last run ended." + BG,
            RUN_LABELS, registry=registry,
        )
        self.run_duration = Gauge(
            "llm_probe_run_duration_seconds", "How long the scenario's last run took." + BG,
            RUN_LABELS, registry=registry,
        )
        self.batch_tps = Gauge(
            "llm_probe_batch_output_tokens_per_second",
            "Aggregate output tokens / wall time of the last batch at this concurrency level." + BG,
            PROBE_LABELS, registry=registry,
        )
        self.schedule_interval = Gauge(
            "llm_probe_schedule_interval_seconds",
            "Longest expected wait between two runs of the scenario: its interval, or for a cron "
            "schedule the widest gap between its fire times over the next week.",
            RUN_LABELS, registry=registry,
        )
        self.schedule_start = Gauge(
            "llm_probe_schedule_start_timestamp_seconds",
            "Unix time when the scenario was (re)scheduled by a config load; its first run starts then.",
            RUN_LABELS, registry=registry,
        )
        self.slo_requests = Counter(
            "llm_probe_slo_requests_total",
            "Probe requests judged against the case's SLO (warm-ups excluded)." + BG, PROBE_LABELS, registry=registry,
        )
        self.slo_good = Counter(
            "llm_probe_slo_good_requests_total",
            "Probe requests that succeeded and met every threshold of the case's SLO." + BG,
            PROBE_LABELS, registry=registry,
        )
        self.slo_objective = Gauge(
            "llm_probe_slo_objective_ratio",
            "The SLO's objective: the share of requests that must be good, e.g. 0.99.",
            ("target", "scenario", "model", "case"), registry=registry,
        )
        # (scenario, case) -> config.Slo of the running config; results are judged against it.
        self._slos: dict = {}
        self._slo_series: set = set()
        self.skipped_runs = Counter(
            "llm_probe_skipped_runs_total",
            "Scheduled runs skipped because the previous run of the scenario was still going.",
            RUN_LABELS, registry=registry,
        )

    def _child(self, metric: Metric, *labels: str):
        """metric.labels(...), remembered so that retire() can find it; every label set starts with target, scenario."""
        with self._series_lock:
            self._series[labels[:2]].add((metric, labels))
        return metric.labels(*labels)

    def retire(self, config: Config) -> int:
        """Drop the series of target/scenario pairs the new config no longer has.

        Otherwise a renamed or removed scenario would export its last success=0 forever,
        and its alert would never resolve. Returns how many label sets were removed.
        """
        keep = {(t.name, s.name) for s in config.scenarios for t in s.targets}
        with self._series_lock:
            gone = [pair for pair in self._series if pair not in keep]
            series = [item for pair in gone for item in self._series.pop(pair)]
        for metric, labels in series:
            try:
                metric.remove(*labels)
            except KeyError:  # already removed by someone else: nothing to do
                pass
        return len(series)

    def declare(self, config: Config, now: Optional[float] = None) -> None:
        """Create the zero series of every configured combination, so rates and ratios exist from the start.

        Histograms too, cold and warm: a child born with its first observation has no earlier
        zero, so increase() over it would miss that observation (the first cold start).
        """
        now = time.time() if now is None else now
        slos = {}
        slo_series: set[tuple[Metric, tuple[str, ...]]] = set()
        for scenario in config.scenarios:
            # Per scenario, not per target: a cron schedule's gap is found by walking a week of
            # fire times (~0.1 s for a per-minute cron), and a fleet has many targets.
            gap = longest_gap_s(scenario)
            for target in scenario.targets:
                # A pair already declared keeps its start: its job keeps its schedule too
                # (scheduler.apply), and resetting the start would hide a stopped scenario.
                with self._series_lock:
                    fresh = (target.name, scenario.name) not in self._series
                for case in scenario.cases:
                    if case.slo is not None:
                        slos[(scenario.name, case.name)] = case.slo
                        obj_labels = (target.name, scenario.name, scenario.model, case.name)
                        self._child(self.slo_objective, *obj_labels).set(case.slo.objective)
                        slo_series.add((self.slo_objective, obj_labels))
                    for level in scenario.concurrency:
                        labels = (target.name, scenario.name, scenario.model, case.name, str(level))
                        self._child(self.requests, *labels)
                        self._child(self.prompt_tokens, *labels)
                        self._child(self.output_tokens, *labels)
                        for reason in FAILURE_REASONS:
                            self._child(self.failures, *labels, reason)
                        for start in START_KINDS:
                            self._child(self.ttft, *labels, start)
                            self._child(self.duration, *labels, start)
                        for hist in self._per_request_histograms():
                            self._child(hist, *labels)
                        if case.slo is not None:
                            self._child(self.slo_requests, *labels)
                            self._child(self.slo_good, *labels)
                            slo_series.update(((self.slo_requests, labels), (self.slo_good, labels)))
                self._child(self.skipped_runs, target.name, scenario.name)
                self._child(self.schedule_interval, target.name, scenario.name).set(gap)
                if fresh:
                    self._child(self.schedule_start, target.name, scenario.name).set(now)
        # A case whose SLO was removed stops exporting it, so its alerts resolve.
        for metric, labels in self._slo_series - slo_series:
            self._forget(metric, labels)
        self._slo_series = slo_series
        self._slos = slos

    def _forget(self, metric: Metric, labels: tuple[str, ...]) -> None:
        with self._series_lock:
            self._series[labels[:2]].discard((metric, labels))
        try:
            metric.remove(*labels)
        except KeyError:  # already removed by retire(): nothing to do
            pass

    def _per_request_histograms(self):
        return (self.inter_token,) + tuple(metric for metric, _ in self._per_request)

    # ---- sink interface ----
    def on_result(self, r: ProbeResult) -> None:
        labels = (r.target, r.scenario, r.model, r.case, str(r.concurrency))
        self._child(self.requests, *labels).inc()
        slo = self._slos.get((r.scenario, r.case))
        if slo is not None:
            self._child(self.slo_requests, *labels).inc()
            if slo_good(r, slo):
                self._child(self.slo_good, *labels).inc()
        if not r.ok:
            self._child(self.failures, *labels, r.reason or "stream_error").inc()
            return
        start_labels = labels + (r.start,)
        self._observe(self.ttft, start_labels, r.ttft_s)
        self._observe(self.duration, start_labels, r.request_duration_s)
        gap_hist = self._child(self.inter_token, *labels)
        for gap in r.inter_token_gaps_s:
            gap_hist.observe(gap)
        for metric, field in self._per_request:
            self._observe(metric, labels, getattr(r, field))
        if r.prompt_eval_count:
            self._child(self.prompt_tokens, *labels).inc(r.prompt_eval_count)
        if r.eval_count:
            self._child(self.output_tokens, *labels).inc(r.eval_count)

    def _observe(self, metric: Histogram, labels: tuple[str, ...], value: Optional[float]) -> None:
        if value is not None:
            self._child(metric, *labels).observe(value)

    def on_batch(self, b: BatchSummary) -> None:
        if b.output_tokens_per_s is not None:
            self._child(self.batch_tps, b.target, b.scenario, b.model, b.case, str(b.concurrency)).set(b.output_tokens_per_s)

    def on_run(self, run: RunSummary) -> None:
        self._child(self.success, run.target, run.scenario).set(1 if run.success else 0)
        self._child(self.last_run, run.target, run.scenario).set(run.ended_at)
        self._child(self.run_duration, run.target, run.scenario).set(run.duration_s)

    def skipped(self, target: str, scenario: str) -> None:
        self._child(self.skipped_runs, target, scenario).inc()


class ExporterMetrics:
    """The exporter's own health: config reloads and results-file writes."""

    def __init__(self, registry: CollectorRegistry):
        self.reload_ok = Gauge(
            "llm_exporter_config_last_reload_successful", "1 if the last config (re)load succeeded.", registry=registry
        )
        self.reload_time = Gauge(
            "llm_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load.", registry=registry,
        )
        self.label_combinations = Gauge(
            "llm_exporter_config_label_combinations",
            "target/scenario/case/concurrency combinations in the running config.", registry=registry,
        )
        self.results_lines = Counter(
            "llm_exporter_results_lines_total", "Result records appended to the results file.", registry=registry
        )
        self.results_errors = Counter(
            "llm_exporter_results_write_errors_total",
            "Result records that could not be written (disk full, read-only, ...).", registry=registry,
        )
