"""The exact /metrics text for fixed records, compared with tests/golden/metrics.txt.

The records go through the real sinks (ProbeMetrics, LiveStats, the results-file sink
with its counters, the cached exposition) into a fresh state store, and the server-stats
part polls a fixed stand-in server, so every hand-written family is covered: any change to
a name, help text, label, bucket or value shows up as a diff here. After a deliberate
change: `pytest tests/test_golden.py --update-golden`, then review the diff of the file.
"""

import difflib

import pytest
from prometheus_client import CollectorRegistry, disable_created_metrics, enable_created_metrics

from exporter.config import load_text
from exporter.exposition import CachedExposition
from exporter.keyspace import Keyspace
from exporter.live_stats import LiveStats
from exporter.metrics import ExporterMetrics, ProbeMetrics
from exporter.ollama import RunningModel
from exporter.results import BatchSummary, ProbeResult, ResultsWriter, RunSummary
from exporter.server_stats import ServerStats
from exporter.sinks import FanOut, ResultsFileSink
from exporter.state import StateStore
from tests.kit.exporters import scenario_yaml

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so timestamps in the text never vary


def _ok(case: str, start: str, concurrency: int = 1, batch: int = 1, offset: float = 0.0, run_id: str = "run1",
        ttft: float = 0.25) -> ProbeResult:
    load = 1.25 if start == "cold" else 0.003
    return ProbeResult(
        target="t1", scenario="s", model="tiny", case=case, concurrency=concurrency, start=start, batch=batch,
        run_id=run_id, started_at=T0 + offset, ended_at=T0 + offset + 2.0, ok=True, http_status=200,
        connect_duration_s=0.0005, ttft_s=ttft + load, request_duration_s=2.0 + load,
        inter_token_gaps_s=[0.05, 0.0625, 0.075], output_chunks=4, response_chars=20,
        load_duration_s=load, prompt_eval_count=12, prompt_eval_duration_s=0.125,
        eval_count=4, eval_duration_s=0.25, total_duration_s=1.875 + load, done_reason="length",
    )


def _failed(case: str, reason: str) -> ProbeResult:
    return ProbeResult(target="t1", scenario="s", model="tiny", case=case, run_id="run1", started_at=T0 + 10,
                       ended_at=T0 + 15, ok=False, reason=reason, error="read timed out after 5s")


class FixedServer:
    """The control calls ServerStats makes, answered with fixed values (one GPU-offloaded model)."""

    port = 11434

    def version(self) -> str:
        return "0.11.4"

    def running_models(self) -> list:
        return [RunningModel("tiny:latest", size=200_000_000, size_vram=150_000_000, context_length=4096)]


def _turn(turn: int, cached: int, matched=None) -> ProbeResult:
    """A turn of the conversation case (chat, a canary on its last turn)."""
    r = _ok("conv", "warm", offset=40.0 + turn, ttft=0.125 * turn)
    r.turn, r.prompt_eval_count, r.cached_prompt_tokens, r.cache_source = turn, 16 * turn, cached, "timing"
    r.answer_matched = matched
    return r


def render(tmp_path) -> str:
    text = scenario_yaml("http://127.0.0.1:11434",
                         extra="api: chat\nconcurrency: [1, 2]\nslo: {ttft: 1s, objective: 99%}\n",
                         cases={"short": "hi", "long": "a longer prompt"})
    text += "      conv: {turns: [hi, and again], expect: {contains: t1}}\n"
    config = load_text(text, "golden")
    disable_created_metrics()  # as the exporter does: `_created` series carry the wall clock
    try:
        registry = CollectorRegistry()
        store = StateStore()
        probe_metrics = ProbeMetrics(store, clock=lambda: T0)
        live_stats = LiveStats(store)
        server_stats = ServerStats(store, client_factory=lambda target: FixedServer())
        store.swap(Keyspace.of(config))
        server_stats.set_targets(config.targets)
        exporter_metrics = ExporterMetrics(registry)
        exporter_metrics.reload_ok.set(1)
        exporter_metrics.reload_time.set(T0)
        exporter_metrics.label_combinations.set(config.label_combinations)
        exposition = CachedExposition(registry, store)
        writer = ResultsWriter(tmp_path / "results.jsonl")
        sinks = FanOut([probe_metrics, live_stats, exposition, ResultsFileSink(
            writer, exporter_metrics.results_lines, exporter_metrics.results_errors)])
        try:
            # Thirty earlier hourly runs: enough history for a reference, its noise and a threshold.
            for k in range(30, 0, -1):
                sinks.on_result(_ok("short", "warm", offset=-3600.0 * k, run_id=f"h{k}", ttft=0.25 + 0.0625 * (k % 3)))
                sinks.on_run(RunSummary("t1", "s", f"h{k}", T0 - 3600 * k, T0 - 3600 * k + 3, requests=1, failures=0))
            sinks.on_result(_ok("short", "cold"))
            sinks.on_batch(BatchSummary("t1", "s", "tiny", "short", 1, 1, 0, 2.0))
            sinks.on_result(_ok("short", "warm", batch=2, offset=3))
            sinks.on_result(_failed("long", "timeout"))
            sinks.on_batch(BatchSummary("t1", "s", "tiny", "long", 1, 1, 1, None))
            pair = [_ok("short", "warm", concurrency=2, batch=3, offset=20), _ok("short", "warm", 2, 3, offset=20.5)]
            # On a busy host: one first token recovered from created_at, one left at its upper bound.
            pair[0].first_token_stamp_late, pair[0].first_token_recovered = True, True
            pair[1].first_token_stamp_late, pair[1].first_token_recovered = True, False
            for r in pair:
                sinks.on_result(r)
            sinks.on_batch(BatchSummary("t1", "s", "tiny", "short", 2, 2, 0, 3.2))
            for r in (_turn(1, 0), _turn(2, 12, matched=False)):
                sinks.on_result(r)
            sinks.on_run(RunSummary("t1", "s", "run1", T0, T0 + 30, requests=7, failures=1))
            probe_metrics.skipped("t1", "s")
            server_stats.poll()
            return exposition.render().decode()  # what the next scrape gets
        finally:
            exposition.close()
            writer.close()
    finally:
        enable_created_metrics()


def test_metrics_text_matches_the_golden_file(tmp_path, update_golden, golden_metrics):
    text = render(tmp_path)
    if update_golden:
        golden_metrics.parent.mkdir(exist_ok=True)
        golden_metrics.write_text(text, encoding="utf-8")
    expected = golden_metrics.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            "tests/golden/metrics.txt", "rendered", n=1))
        pytest.fail("the /metrics text changed; if that is intended, run "
                    f"`pytest tests/test_golden.py --update-golden` and review the file:\n{diff[:6000]}")


def test_rendering_is_deterministic(tmp_path):
    assert render(tmp_path / "a") == render(tmp_path / "b")


def test_the_text_parses_back_to_the_same_samples(tmp_path):
    """The store writes the text format itself: prometheus_client's parser must read every line back."""
    from prometheus_client.parser import text_string_to_metric_families

    text = render(tmp_path)
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(samples) == len(lines) > 1000


@pytest.mark.prometheus
def test_promtool_accepts_the_text(tmp_path):
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make system-deps`"
    res = subprocess.run([promtool, "check", "metrics"], input=render(tmp_path), capture_output=True, text=True,
                         timeout=60)
    # promtool's lint warns about names (e.g. a counter's HELP); it fails only on text it cannot parse.
    assert "error while linting" not in res.stderr and "parse" not in res.stderr.lower(), res.stderr
