"""The exact /metrics text for fixed records, compared with tests/golden/metrics.txt.

The records go through the real sinks (ProbeMetrics, the results-file sink with its
counters, the cached exposition) into a fresh registry, so any change to a name, help
text, label, bucket or value shows up as a diff here. After a deliberate change:
`pytest tests/test_golden.py --update-golden`, then review the diff of the file.
The server-stats collector is left out: its numbers come from a live server.
"""

import difflib

import pytest
from prometheus_client import CollectorRegistry, disable_created_metrics, enable_created_metrics

from exporter.config import load_text
from exporter.exposition import CachedExposition
from exporter.metrics import ExporterMetrics, ProbeMetrics
from exporter.results import BatchSummary, ProbeResult, ResultsWriter, RunSummary
from exporter.sinks import FanOut, ResultsFileSink
from tests.kit.exporters import scenario_yaml

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: fixed, so timestamps in the text never vary


def _ok(case: str, start: str, concurrency: int = 1, batch: int = 1, offset: float = 0.0) -> ProbeResult:
    load = 1.25 if start == "cold" else 0.003
    return ProbeResult(
        target="t1", scenario="s", model="tiny", case=case, concurrency=concurrency, start=start, batch=batch,
        run_id="run1", started_at=T0 + offset, ended_at=T0 + offset + 2.0, ok=True, http_status=200,
        connect_duration_s=0.0005, ttft_s=0.25 + load, request_duration_s=2.0 + load,
        inter_token_gaps_s=[0.05, 0.0625, 0.075], output_chunks=4, response_chars=20,
        load_duration_s=load, prompt_eval_count=12, prompt_eval_duration_s=0.125,
        eval_count=4, eval_duration_s=0.25, total_duration_s=1.875 + load, done_reason="length",
    )


def _failed(case: str, reason: str) -> ProbeResult:
    return ProbeResult(target="t1", scenario="s", model="tiny", case=case, run_id="run1", started_at=T0 + 10,
                       ended_at=T0 + 15, ok=False, reason=reason, error="read timed out after 5s")


def render(tmp_path) -> str:
    config = load_text(scenario_yaml("http://127.0.0.1:11434", extra="concurrency: [1, 2]\nslo: {ttft: 1s, objective: 99%}\n",
                                     cases={"short": "hi", "long": "a longer prompt"}), "golden")
    disable_created_metrics()  # as the exporter does: `_created` series carry the wall clock
    try:
        registry = CollectorRegistry()
        probe_metrics = ProbeMetrics(registry)
        exporter_metrics = ExporterMetrics(registry)
        probe_metrics.declare(config, now=T0)
        exporter_metrics.reload_ok.set(1)
        exporter_metrics.reload_time.set(T0)
        exporter_metrics.label_combinations.set(config.label_combinations)
        exposition = CachedExposition(registry)
        writer = ResultsWriter(tmp_path / "results.jsonl")
        sinks = FanOut([probe_metrics, exposition, ResultsFileSink(
            writer, exporter_metrics.results_lines, exporter_metrics.results_errors)])
        try:
            sinks.on_result(_ok("short", "cold"))
            sinks.on_batch(BatchSummary("t1", "s", "tiny", "short", 1, 1, 0, 2.0))
            sinks.on_result(_ok("short", "warm", batch=2, offset=3))
            sinks.on_result(_failed("long", "timeout"))
            sinks.on_batch(BatchSummary("t1", "s", "tiny", "long", 1, 1, 1, None))
            pair = [_ok("short", "warm", concurrency=2, batch=3, offset=20), _ok("short", "warm", 2, 3, offset=20.5)]
            for r in pair:
                sinks.on_result(r)
            sinks.on_batch(BatchSummary("t1", "s", "tiny", "short", 2, 2, 0, 3.2))
            sinks.on_run(RunSummary("t1", "s", "run1", T0, T0 + 30, requests=5, failures=1))
            probe_metrics.skipped("t1", "s")
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
