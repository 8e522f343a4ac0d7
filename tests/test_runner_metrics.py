"""Runs through the runner into the metrics sink; values asserted through a fresh registry."""

import pytest

from exporter.results import FAILURE_REASONS
from exporter.runner import ScenarioRunner
from tests.kit.exporters import CollectingSink, ProbeStack
from tests.kit.fake_ollama import Behavior


def run(cfg, registry, sinks=()):
    metrics = ProbeStack(registry, cfg).metrics
    scenario = cfg.scenarios[0]
    collect = CollectingSink()
    summary = ScenarioRunner(scenario, scenario.targets[0], [metrics, collect, *sinks]).run()
    return summary, collect.results


def labels(**kw):
    base = {"target": "t1", "scenario": "s", "model": "tiny", "case": "short", "concurrency": "1"}
    base.update(kw)
    return base


def test_cold_then_warm(fake, make_config, registry):
    fake.behavior = Behavior(tokens=4, load_time=0.3)
    summary, records = run(make_config(fake.url, extra="repeats: 3\n"), registry)
    assert [r.start for r in records] == ["cold", "warm", "warm"]
    assert records[0].load_duration_s == pytest.approx(0.3, abs=0.001)
    assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_count", labels(start="cold")) == 1
    assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_count", labels(start="warm")) == 2
    assert registry.get_sample_value("llm_probe_request_duration_seconds_count", labels(start="warm")) == 2
    assert registry.get_sample_value("llm_probe_requests_total", labels()) == 3
    assert registry.get_sample_value("llm_probe_output_tokens_total", labels()) == 12
    assert registry.get_sample_value("llm_probe_inter_token_latency_seconds_count", labels()) == 9
    assert registry.get_sample_value("llm_probe_load_duration_seconds_count", labels()) == 3
    cold_sum = registry.get_sample_value("llm_probe_time_to_first_token_seconds_sum", labels(start="cold"))
    assert cold_sum >= 0.3
    assert registry.get_sample_value("llm_probe_success", {"target": "t1", "scenario": "s"}) == 1
    assert summary.requests == 3 and summary.failures == 0


def test_warmups_are_not_recorded(fake, make_config, registry):
    summary, records = run(make_config(fake.url, extra="repeats: 2\nwarmup: 2\n"), registry)
    assert len(fake.requests) == 4
    assert len(records) == 2 and all(r.start == "warm" for r in records)
    assert registry.get_sample_value("llm_probe_requests_total", labels()) == 2


def test_failure_sets_success_zero_and_counts_reason(fake, make_config, registry):
    fake.behavior = Behavior(mode="http_503")
    summary, records = run(make_config(fake.url, extra="repeats: 2\n"), registry)
    assert registry.get_sample_value("llm_probe_request_failures_total", labels(reason="server_busy")) == 2
    assert registry.get_sample_value("llm_probe_request_failures_total", labels(reason="timeout")) == 0
    assert registry.get_sample_value("llm_probe_success", {"target": "t1", "scenario": "s"}) == 0
    # Declared at 0 at config load; a failed request observes nothing.
    assert registry.get_sample_value("llm_probe_time_to_first_token_seconds_count", labels(start="warm")) == 0
    for reason in FAILURE_REASONS:
        assert registry.get_sample_value("llm_probe_request_failures_total", labels(reason=reason)) is not None


def test_concurrency_batches_start_together(fake, make_config, registry):
    fake.behavior = Behavior(tokens=5, token_interval=0.01, load_time=0)
    summary, records = run(make_config(fake.url, extra="repeats: 2\nconcurrency: [1, 4]\n"), registry)
    assert summary.requests == 2 + 2 * 4
    batches = {}
    for r in records:
        if r.concurrency == 4:
            batches.setdefault(r.batch, []).append(r)
    assert len(batches) == 2 and all(len(b) == 4 for b in batches.values())
    # A batch's requests run side by side: each starts before any of its batch ends.
    for batch in batches.values():
        assert max(r.started_at for r in batch) < min(r.ended_at for r in batch)
    tps4 = registry.get_sample_value("llm_probe_batch_output_tokens_per_second", labels(concurrency="4"))
    tps1 = registry.get_sample_value("llm_probe_batch_output_tokens_per_second", labels(concurrency="1"))
    assert tps4 and tps1
    # The fake server serves requests in parallel, so four streams carry ~4x the tokens per second.
    assert tps4 > 2 * tps1
    assert registry.get_sample_value("llm_probe_requests_total", labels(concurrency="4")) == 8


def test_stop_event_ends_the_run_early(fake, make_config, registry):
    import threading

    scenario = make_config(fake.url, extra="repeats: 50\n").scenarios[0]
    stop = threading.Event()
    seen = []

    class StopAfterTwo:
        def on_result(self, r):
            seen.append(r)
            if len(seen) == 2:
                stop.set()

        def on_batch(self, b):
            pass

        def on_run(self, s):
            pass

    summary = ScenarioRunner(scenario, scenario.targets[0], [StopAfterTwo()], stop=stop).run()
    assert summary.requests == 2 and summary.stopped


def test_a_failing_sink_does_not_stop_the_run(fake, make_config, registry):
    class Broken:
        def on_result(self, r):
            raise RuntimeError("boom")

        def on_batch(self, b):
            raise RuntimeError("boom")

        def on_run(self, s):
            raise RuntimeError("boom")

    summary, records = run(make_config(fake.url, extra="repeats: 2\n"), registry, sinks=[Broken()])
    assert len(records) == 2
    assert registry.get_sample_value("llm_probe_success", {"target": "t1", "scenario": "s"}) == 1


def test_expiry_parsing_and_unloading_models_count_as_cold():
    from ollama import ProcessResponse

    from exporter import runner
    from exporter.ollama import RunningModel

    def running(name, expires_at):
        return RunningModel.from_ps(ProcessResponse.Model(name=name, expires_at=expires_at))

    assert running("m", "2026-11-28T11:35:48.686760323Z").expires_at == pytest.approx(1795865748.686760, abs=1e-5)
    assert running("m", "2026-11-28T12:35:48+01:00").expires_at == pytest.approx(1795865748.0)
    assert running("m", "2026-11-28T12:35:48").expires_at is None  # no zone: not trusted
    assert running("m", None).name == "m:latest"

    class Client:
        def __init__(self, models):
            self.models = models

        def running_models(self):
            return self.models

    import time as _t
    soon = _t.strftime("%Y-%m-%dT%H:%M:%S", _t.gmtime(_t.time() + 0.2)) + ".5Z"
    later = _t.strftime("%Y-%m-%dT%H:%M:%S", _t.gmtime(_t.time() + 300)) + "Z"
    assert runner.model_is_loaded(Client([running("m:latest", later)]), "m") is True
    assert runner.model_is_loaded(Client([running("m:latest", soon)]), "m") is False
    assert runner.model_is_loaded(Client([running("other:latest", later)]), "m") is False
    assert runner.model_is_loaded(Client([running("m", None)]), "m:latest") is True
