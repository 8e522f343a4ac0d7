"""The probe series: their families, the per-key state behind them, and the sink that feeds it.

Probe metrics come from scheduled background runs, not from the scrape: a scrape only
reads what the last runs recorded. The numbers live in the state store (state.py), one
slot per case key (target, scenario, model, case, concurrency) and per run key (target,
scenario); this module says what a slot holds and how it renders.
"""

from __future__ import annotations

import bisect
import time
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge

from .keyspace import CASE, RUN, CaseContext, RunContext
from .results import FAILURE_REASONS, BatchSummary, ProbeResult, RunSummary
from .sinks import Sink
from .state import Part, StateStore
from .textformat import Family, Labels, fmt, le_text

PROBE_LABELS = ("target", "scenario", "model", "case", "concurrency")
START_LABELS = PROBE_LABELS + ("start",)
RUN_LABELS = ("target", "scenario")
TURN_LABELS = PROBE_LABELS + ("turn",)
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


CASE_LABELS = PROBE_LABELS


def _family(name: str, type_: str, doc: str) -> Family:
    return Family(name, type_, doc)


TTFT = _family("llm_probe_time_to_first_token_seconds", "histogram",
               "Client clock: time from sending the request to the first non-empty token." + BG)
DURATION = _family("llm_probe_request_duration_seconds", "histogram",
                   "Client clock: end-to-end latency of a successful request." + BG)
INTER_TOKEN = _family("llm_probe_inter_token_latency_seconds", "histogram",
                      "Client clock: each gap between consecutive streamed tokens." + BG)
PER_REQUEST = tuple((_family(name, "histogram", doc + BG), buckets, field)
                    for name, doc, buckets, field in PER_REQUEST_HISTOGRAMS)
PROMPT_TOKENS = _family("llm_probe_prompt_tokens_total", "counter", "Prompt tokens evaluated by the server." + BG)
OUTPUT_TOKENS = _family("llm_probe_output_tokens_total", "counter", "Tokens generated by the server." + BG)
REQUESTS = _family("llm_probe_requests_total", "counter", "Probe requests sent (warm-ups excluded)." + BG)
FAILURES = _family("llm_probe_request_failures_total", "counter",
                   "Failed probe requests by reason (" + ", ".join(FAILURE_REASONS) + ")." + BG)
LATE_STAMPS = _family(
    "llm_probe_first_token_late_stamps_total", "counter",
    "Probe requests whose first token came in one read with later data, so its receive stamp was only an "
    "upper bound (the reading thread woke late: a busy host). recovered=\"true\": its time was counted back "
    "from the server's created_at spacing; \"false\": TTFT kept the upper bound." + BG)
BATCH_TPS = _family("llm_probe_batch_output_tokens_per_second", "gauge",
                    "Aggregate output tokens / wall time of the last batch at this concurrency level." + BG)
SLO_REQUESTS = _family("llm_probe_slo_requests_total", "counter",
                       "Probe requests judged against the case's SLO (warm-ups excluded)." + BG)
SLO_GOOD = _family("llm_probe_slo_good_requests_total", "counter",
                   "Probe requests that succeeded and met every threshold of the case's SLO." + BG)
SLO_OBJECTIVE = _family("llm_probe_slo_objective_ratio", "gauge",
                        "The SLO's objective: the share of requests that must be good, e.g. 0.99.")
CACHED_TOKENS = _family("llm_probe_prompt_cached_tokens_total", "counter",
                        "Prompt tokens served from the server's prompt cache, where known (reported by the "
                        "server, or estimated for a conversation's later turns; see cache_source in the "
                        "results file)." + BG)
CACHE_KNOWN_TOKENS = _family("llm_probe_prompt_cache_measured_tokens_total", "counter",
                             "Prompt tokens of the requests whose cached share is known: the denominator of "
                             "the prompt-cache hit ratio." + BG)
CACHE_HIT_RATIO = _family("llm_probe_prompt_cache_hit_ratio", "gauge",
                          "Cached prompt tokens / prompt tokens of the last conversation (a case with turns), "
                          "or of the last request whose cached share is known." + BG)
TURN_TTFT = _family("llm_probe_turn_time_to_first_token_seconds", "gauge",
                    "Client clock: TTFT of each turn of the last conversation (a case with turns). Growing with "
                    "the turn number means the server no longer reuses the conversation's prefix." + BG)
ANSWER_MATCHED = _family("llm_probe_answer_matched", "gauge",
                         "1 if the last answer of a correctness canary (a case with expect) matched, else 0." + BG)
ANSWER_MISMATCHES = _family("llm_probe_answer_mismatches_total", "counter",
                            "Answers of a correctness canary that did not match its expect." + BG)
ANSWER_STREAK = _family("llm_probe_answer_mismatch_streak", "gauge",
                        "Answers of a correctness canary in a row, up to the last, that did not match." + BG)
CASE_FAMILIES = (TTFT, DURATION, INTER_TOKEN) + tuple(f for f, _, _ in PER_REQUEST) + (
    PROMPT_TOKENS, OUTPUT_TOKENS, REQUESTS, FAILURES, LATE_STAMPS, BATCH_TPS, SLO_REQUESTS, SLO_GOOD, SLO_OBJECTIVE,
    CACHED_TOKENS, CACHE_KNOWN_TOKENS, CACHE_HIT_RATIO, TURN_TTFT, ANSWER_MATCHED, ANSWER_MISMATCHES, ANSWER_STREAK)

SUCCESS = _family("llm_probe_success", "gauge", "1 if the scenario's last run had no failed request, else 0." + BG)
LAST_RUN = _family("llm_probe_last_run_timestamp_seconds", "gauge",
                   "Unix time when the scenario's last run ended." + BG)
RUN_DURATION = _family("llm_probe_run_duration_seconds", "gauge", "How long the scenario's last run took." + BG)
SCHEDULE_INTERVAL = _family(
    "llm_probe_schedule_interval_seconds", "gauge",
    "Longest expected wait between two runs of the scenario: its interval, or for a cron "
    "schedule the widest gap between its fire times over the next week.")
SCHEDULE_START = _family("llm_probe_schedule_start_timestamp_seconds", "gauge",
                         "Unix time when the scenario was (re)scheduled by a config load; its first run starts then.")
SKIPPED = _family("llm_probe_skipped_runs_total", "counter",
                  "Scheduled runs skipped because the previous run of the scenario was still going.")
RUN_FAMILIES = (SUCCESS, LAST_RUN, RUN_DURATION, SCHEDULE_INTERVAL, SCHEDULE_START, SKIPPED)


class Hist:
    """One histogram child: counts per bucket (not cumulative) and the sum, as prometheus_client keeps them."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def render(self, name: str, labels: Labels) -> str:
        head, tail = labels.around("le")
        head = name + "_bucket" + head
        out = []
        total = 0
        for le, count in zip(le_text(self.bounds), self.counts):
            total += count
            # Inlined fmt(): bucket lines are most of /metrics.
            out.append(f"{head}{le}{tail} {total}.0\n" if total < 1_000_000 else f"{head}{le}{tail} {fmt(total)}\n")
        out.append(f"{name}_count{labels.text} {fmt(total)}\n{name}_sum{labels.text} {fmt(self.sum)}\n")
        return "".join(out)


class CaseState:
    """Everything the probe sink exports for one case key."""

    def __init__(self):
        self.ttft = {start: Hist(TTFT_BUCKETS) for start in START_KINDS}
        self.duration = {start: Hist(DURATION_BUCKETS) for start in START_KINDS}
        self.inter_token = Hist(TOKEN_GAP_BUCKETS)
        self.per_request = [Hist(buckets) for _, buckets, _ in PER_REQUEST]
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.requests = 0
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.late_stamps = {"false": 0, "true": 0}  # by recovered
        self.batch_tps: Optional[float] = None
        self.slo_requests = 0
        self.slo_good = 0
        self.cached_tokens = 0
        self.cache_known_tokens = 0
        self.cache_ratio: Optional[float] = None
        self.conversation = [0, 0]  # cached and known prompt tokens of the conversation going on
        self.turn_ttft: dict[int, float] = {}
        self.answer_matched: Optional[bool] = None
        self.mismatches = 0
        self.streak = 0

    def _observe_turn_and_answer(self, r: ProbeResult) -> None:
        """The conversation's per-turn TTFT and cache counts, and a canary's verdict."""
        if r.turn == 1:
            self.turn_ttft = {}
            self.conversation = [0, 0]
        if r.turn is not None and r.ttft_s is not None:
            self.turn_ttft[r.turn] = r.ttft_s
        size = r.prompt_size_tokens
        if r.cached_prompt_tokens is not None and size:
            self.cached_tokens += r.cached_prompt_tokens
            self.cache_known_tokens += size
            if r.turn is None:
                self.conversation = [0, 0]
            self.conversation[0] += r.cached_prompt_tokens
            self.conversation[1] += size
            self.cache_ratio = self.conversation[0] / self.conversation[1]
        if r.answer_matched is not None:
            self.answer_matched = r.answer_matched
            self.streak = 0 if r.answer_matched else self.streak + 1
            self.mismatches += not r.answer_matched

    def observe(self, r: ProbeResult, slo) -> None:
        self.requests += 1
        if r.first_token_stamp_late:
            self.late_stamps["true" if r.first_token_recovered else "false"] += 1
        if slo is not None:
            self.slo_requests += 1
            self.slo_good += slo_good(r, slo)
        if r.ok:
            self._observe_turn_and_answer(r)
        if not r.ok:
            reason = r.reason if r.reason in self.failures else "stream_error"
            self.failures[reason] += 1
            return
        start = r.start if r.start in self.ttft else "warm"
        for hists, value in ((self.ttft, r.ttft_s), (self.duration, r.request_duration_s)):
            if value is not None:
                hists[start].observe(value)
        for gap in r.inter_token_gaps_s:
            self.inter_token.observe(gap)
        for hist, (_, _, field) in zip(self.per_request, PER_REQUEST):
            value = getattr(r, field)
            if value is not None:
                hist.observe(value)
        self.prompt_tokens += r.prompt_eval_count or 0
        self.output_tokens += r.eval_count or 0

    def render(self, key: tuple, context: CaseContext) -> dict[str, str]:
        labels = Labels(CASE_LABELS, key)
        plain = labels.text
        out = {}
        for family, hists in ((TTFT, self.ttft), (DURATION, self.duration)):
            out[family.name] = "".join(
                hists[s].render(family.name, Labels(START_LABELS, key + (s,))) for s in START_KINDS)
        out[INTER_TOKEN.name] = self.inter_token.render(INTER_TOKEN.name, labels)
        for hist, (family, _, _) in zip(self.per_request, PER_REQUEST):
            out[family.name] = hist.render(family.name, labels)
        for family, value in ((PROMPT_TOKENS, self.prompt_tokens), (OUTPUT_TOKENS, self.output_tokens),
                              (REQUESTS, self.requests)):
            out[family.name] = f"{family.name}{plain} {fmt(value)}\n"
        head, tail = labels.around("reason")
        out[FAILURES.name] = "".join(
            f"{FAILURES.name}{head}{reason}{tail} {fmt(n)}\n" for reason, n in self.failures.items())
        head, tail = labels.around("recovered")
        out[LATE_STAMPS.name] = "".join(
            f"{LATE_STAMPS.name}{head}{recovered}{tail} {fmt(n)}\n" for recovered, n in self.late_stamps.items())
        if self.batch_tps is not None:
            out[BATCH_TPS.name] = f"{BATCH_TPS.name}{plain} {fmt(self.batch_tps)}\n"
        if context.slo is not None:
            out[SLO_REQUESTS.name] = f"{SLO_REQUESTS.name}{plain} {fmt(self.slo_requests)}\n"
            out[SLO_GOOD.name] = f"{SLO_GOOD.name}{plain} {fmt(self.slo_good)}\n"
            if context.first_level:
                objective = Labels(CASE_LABELS[:4], key[:4]).text
                out[SLO_OBJECTIVE.name] = f"{SLO_OBJECTIVE.name}{objective} {fmt(context.slo.objective)}\n"
        self._render_turns_and_answers(key, context, plain, out)
        return out

    def _render_turns_and_answers(self, key: tuple, context: CaseContext, plain: str, out: dict[str, str]) -> None:
        # Cache counters exist from zero for a conversation, and from the first known count otherwise.
        if context.turns or self.cache_known_tokens:
            out[CACHED_TOKENS.name] = f"{CACHED_TOKENS.name}{plain} {fmt(self.cached_tokens)}\n"
            out[CACHE_KNOWN_TOKENS.name] = f"{CACHE_KNOWN_TOKENS.name}{plain} {fmt(self.cache_known_tokens)}\n"
        if self.cache_ratio is not None:
            out[CACHE_HIT_RATIO.name] = f"{CACHE_HIT_RATIO.name}{plain} {fmt(self.cache_ratio)}\n"
        if context.turns and self.turn_ttft:
            out[TURN_TTFT.name] = "".join(
                f"{TURN_TTFT.name}{Labels(TURN_LABELS, key + (str(t),)).text} {fmt(v)}\n"
                for t, v in sorted(self.turn_ttft.items()) if t <= context.turns)
        if context.canary:
            out[ANSWER_MISMATCHES.name] = f"{ANSWER_MISMATCHES.name}{plain} {fmt(self.mismatches)}\n"
            out[ANSWER_STREAK.name] = f"{ANSWER_STREAK.name}{plain} {fmt(self.streak)}\n"
            if self.answer_matched is not None:
                out[ANSWER_MATCHED.name] = f"{ANSWER_MATCHED.name}{plain} {fmt(1 if self.answer_matched else 0)}\n"


class RunState:
    """What the probe sink exports for one run key (target, scenario)."""

    def __init__(self, scheduled_at: float):
        self.scheduled_at = scheduled_at
        self.last: Optional[RunSummary] = None
        self.skipped = 0

    def render(self, key: tuple, context: RunContext) -> dict[str, str]:
        plain = Labels(RUN_LABELS, key).text
        out = {
            SCHEDULE_INTERVAL.name: f"{SCHEDULE_INTERVAL.name}{plain} {fmt(context.gap_s)}\n",
            SCHEDULE_START.name: f"{SCHEDULE_START.name}{plain} {fmt(self.scheduled_at)}\n",
            SKIPPED.name: f"{SKIPPED.name}{plain} {fmt(self.skipped)}\n",
        }
        if self.last is not None:
            out[SUCCESS.name] = f"{SUCCESS.name}{plain} {fmt(1 if self.last.success else 0)}\n"
            out[LAST_RUN.name] = f"{LAST_RUN.name}{plain} {fmt(self.last.ended_at)}\n"
            out[RUN_DURATION.name] = f"{RUN_DURATION.name}{plain} {fmt(self.last.duration_s)}\n"
        return out


class ProbeMetrics(Sink):
    """The probe sink: result records into the case and run slots of the state store.

    A record whose key is not in the store's key space (its target or case left the
    config while it was in flight) is dropped there."""

    PART = "probe"

    def __init__(self, store: StateStore, clock: Callable[[], float] = time.time):
        self.store = store
        # When a run key first appears: its schedule start. A key that stays keeps it (its job
        # keeps its schedule too, scheduler.apply), so a stopped scenario is not hidden.
        store.add_part(Part(CASE, self.PART, CASE_FAMILIES, lambda key, ctx: CaseState(),
                            lambda key, state, ctx: state.render(key, ctx)))
        store.add_part(Part(RUN, self.PART, RUN_FAMILIES, lambda key, ctx: RunState(clock()),
                            lambda key, state, ctx: state.render(key, ctx)))

    def on_result(self, r: ProbeResult) -> None:
        key = (r.target, r.scenario, r.model, r.case, str(r.concurrency))
        self.store.update(CASE, key, self.PART, lambda state, ctx: state.observe(r, ctx.slo))

    def on_batch(self, b: BatchSummary) -> None:
        if b.output_tokens_per_s is None:
            return
        key = (b.target, b.scenario, b.model, b.case, str(b.concurrency))
        self.store.update(CASE, key, self.PART, lambda state, ctx: setattr(state, "batch_tps", b.output_tokens_per_s))

    def on_run(self, run: RunSummary) -> None:
        self.store.update(RUN, (run.target, run.scenario), self.PART, lambda state, ctx: setattr(state, "last", run))

    def skipped(self, target: str, scenario: str) -> None:
        def count(state: RunState, ctx) -> None:
            state.skipped += 1

        self.store.update(RUN, (target, scenario), self.PART, count)


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
