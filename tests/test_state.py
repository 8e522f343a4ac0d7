"""The lifecycle of a series: it exists exactly while its key is in the running config.

The review's reproductions (D1, D2, D6 and the late batch result) as tests, plus a stateful
property test: config and target files changed at random while runs are in flight against
fake servers; once things settle, /metrics holds exactly the series of the current config.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Target, load_text
from exporter.results import BatchSummary, ProbeResult, RunSummary
from tests.kit.exporters import ProbeStack, ThreadedExporter, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama

T0 = 1_780_000_000.0


def config(targets=("a", "b"), cases=("short", "long"), levels=(1, 2), model="tiny", slo=True):
    doc = {
        "targets": [{"name": t, "url": "http://127.0.0.1:9", "process_match": None} for t in targets],
        "scenarios": [{
            "name": "s", "model": model, "schedule": {"interval": "1h"}, "concurrency": list(levels),
            "cases": {c: {"prompt": c} for c in cases},
            **({"slo": {"ttft": "1s", "objective": "99%"}} if slo else {}),
        }],
    }
    return load_text(yaml.safe_dump(doc), "test")


def record(target="a", case="short", concurrency=1, model="tiny", run_id="r1", ok=True, t=T0) -> ProbeResult:
    return ProbeResult(target=target, scenario="s", model=model, case=case, concurrency=concurrency, start="warm",
                       run_id=run_id, started_at=t - 1, ended_at=t, ok=ok, reason=None if ok else "timeout",
                       ttft_s=0.2, request_duration_s=1.0, inter_token_gaps_s=[0.01], eval_count=5,
                       eval_duration_s=0.05)


def run_of(stack: ProbeStack, target="a", case="short", concurrency=1, model="tiny", run_id="r1", ok=True, t=T0):
    """One run's records through the sinks, as the runner hands them over."""
    for sink in stack.sinks:
        sink.on_result(record(target, case, concurrency, model, run_id, ok, t))
        sink.on_batch(BatchSummary(target, "s", model, case, concurrency, 1, 0 if ok else 1, 42.0))
        sink.on_run(RunSummary(target, "s", run_id, t - 2, t, 1, 0 if ok else 1))


def series(text: str) -> set[tuple]:
    """(name, labels) of every sample in an exposition."""
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(text) for s in family.samples}


def label_values(text: str, label: str) -> set[str]:
    return {dict(labels)[label] for _, labels in series(text) if label in dict(labels)}


def test_a_target_removed_while_its_run_is_in_flight_stays_gone():
    """D1: the run of b ends after the reload that removed b; nothing of b comes back."""
    stack = ProbeStack(config=config())
    run_of(stack, "b", ok=False, run_id="rb0")
    assert 'llm_probe_success{scenario="s",target="b"} 0.0' in stack.store.render().decode()
    stack.load(config(targets=("a",)))
    # The run in flight finishes with the old config: results, batch, run summary, live statistics.
    run_of(stack, "b", ok=False, run_id="rb1")
    run_of(stack, "b", ok=True, run_id="rb2")
    stack.metrics.skipped("b", "s")
    text = stack.store.render().decode()
    assert label_values(text, "target") == {"a"}
    assert stack.live.snapshot(("b", "s", "tiny", "short", "1", "warm", "time_to_first_token_seconds")) is None


@pytest.mark.parametrize("change, gone", [
    ({"cases": ("short",)}, ("case", "long")),
    ({"levels": (1,)}, ("concurrency", "2")),
    ({"model": "other"}, ("model", "tiny")),
])
def test_a_dropped_case_level_or_model_leaves_with_all_its_series(change, gone):
    """D2: retiring by (target, scenario) left a dropped case's, level's or old model's series behind."""
    stack = ProbeStack(config=config())
    for case in ("short", "long"):
        for level in (1, 2):
            run_of(stack, case=case, concurrency=level, run_id=f"{case}{level}")
    label, value = gone
    assert value in label_values(stack.store.render().decode(), label)
    stack.load(config(**change))
    run_of(stack, case="long", concurrency=2, run_id="late")  # a run of the old config, still in flight
    text = stack.store.render().decode()
    assert value not in label_values(text, label)
    # What stays keeps its numbers: a level or case that stays is not reset by the reload.
    if "model" not in change:
        assert 'llm_probe_requests_total{case="short",concurrency="1",model="tiny",scenario="s",target="a"} 1.0' in text
    # And the SLO: a case whose SLO was removed stops exporting it, so its alerts resolve.
    stack.load(config(slo=False, **change))
    assert "llm_probe_slo_" not in stack.store.render().decode().replace("# HELP llm_probe_slo_", "").replace(
        "# TYPE llm_probe_slo_", "")


def test_a_server_removed_while_its_poll_is_in_flight_stays_gone():
    """D6: the poll of a removed target wrote its snapshot back, and llm_server_up 0 stayed for ever."""
    release = threading.Event()
    started = threading.Event()

    class SlowDown:
        port = 11434

        def version(self):
            started.set()
            release.wait(10)
            from exporter.ollama import OllamaError
            raise OllamaError("connection", "connection refused")

        def running_models(self):
            return []

    stack = ProbeStack(config=config(), client_factory=lambda target: SlowDown())
    poll = threading.Thread(target=stack.servers.poll_target, args=(Target(name="b", url="http://127.0.0.1:9"),))
    poll.start()
    assert started.wait(10)
    stack.load(config(targets=("a",)))
    release.set()
    poll.join(10)
    assert "b" not in label_values(stack.store.render().decode(), "target")
    assert 'llm_server_up{target="b"}' not in stack.store.render().decode()


def test_a_straggler_after_its_run_ended_is_not_a_new_run():
    """A request that outlives its batch's join delivers its result after the run's summary: it is
    counted as a request, but it does not open a run that never closes."""
    stack = ProbeStack(config=config())
    run_of(stack, run_id="r1")
    stack.live.on_result(record(run_id="r1", t=T0 + 100))
    assert "r1" not in stack.live._pending
    snap = stack.live.snapshot(("a", "s", "tiny", "short", "1", "warm", "time_to_first_token_seconds"))
    assert snap.recent_runs == 1 and snap.recent_requests == 1


def test_only_the_key_space_is_rendered_and_a_swap_keeps_what_stays():
    stack = ProbeStack(config=config(targets=("a", "b", "c")))
    for t in ("a", "b", "c"):
        run_of(stack, t, run_id=t)
    before = stack.store.render().decode()
    stack.load(config(targets=("c", "a")))
    after = stack.store.render().decode()
    assert label_values(after, "target") == {"a", "c"}
    kept = {s for s in series(before) if dict(s[1]).get("target") in ("a", "c")}
    assert kept <= series(after)


# ---- the property: random changes while runs are in flight, then exactly the current config ----

POOL = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def slow_fakes():
    # Slow enough that a run is still in flight when the next change lands; b fails, as a removed
    # target often does.
    servers = {name: FakeOllama(Behavior(load_time=0.0, tokens=3, first_token_delay=0.15, token_interval=0.02,
                                         mode="http_500" if name == "b" else "ok")).start() for name in POOL}
    yield servers
    for s in servers.values():
        s.stop()


def write_targets(path, fakes, names) -> None:
    groups = [{"targets": [f"127.0.0.1:{fakes[n].port}"], "labels": {"name": n}} for n in names]
    with open(str(path) + ".tmp", "w") as f:
        json.dump(groups, f)
    os.replace(str(path) + ".tmp", path)


def scenarios_yaml(targets_path, cases, levels, model) -> str:
    case_lines = "".join(f"      {c}: {{prompt: {c}}}\n" for c in cases)
    return textwrap.dedent(f"""\
        target_files:
          - group: fleet
            path: {targets_path}
            refresh_interval: 50ms
        server_stats: {{interval: 200ms}}
        scenarios:
          - name: s
            model: {model}
            schedule: {{interval: 1h}}
            timeout: 5s
            concurrency: {list(levels)}
            cases:
        """) + case_lines


CHANGE = st.one_of(
    st.tuples(st.just("targets"), st.lists(st.sampled_from(POOL), unique=True, max_size=4)),
    st.tuples(st.just("config"), st.tuples(
        st.lists(st.sampled_from(("short", "long", "mid")), unique=True, min_size=1, max_size=3),
        st.lists(st.sampled_from((1, 2)), unique=True, min_size=1, max_size=2),
        st.sampled_from(("tiny", "tiny2")))),
    st.tuples(st.just("pause"), st.floats(0.0, 0.3)),
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(CHANGE, min_size=3, max_size=12))
def test_metrics_hold_exactly_the_current_config_after_random_changes(tmp_path_factory, slow_fakes, changes):
    import time

    tmp = tmp_path_factory.mktemp("prop")
    targets_path, config_path = tmp / "targets.json", tmp / "scenarios.yaml"
    names, cases, levels, model = ["a", "b"], ["short", "long"], [1, 2], "tiny"
    write_targets(targets_path, slow_fakes, names)
    config_path.write_text(scenarios_yaml(targets_path, cases, levels, model))
    with ThreadedExporter(str(config_path)) as running:
        exp = running.exporter
        for kind, value in changes:
            if kind == "targets":
                names = list(value)
                write_targets(targets_path, slow_fakes, names)
            elif kind == "config":
                cases, levels, model = value
                config_path.write_text(scenarios_yaml(targets_path, cases, levels, model))
                ok, message = exp.reload()
                assert ok, message
            else:
                time.sleep(value)
        # Settle: the last target file is in force, no run is in flight, every server polled once more.
        wait_for(lambda: sorted(t.name for t in exp.config.targets) == sorted(names), timeout=10,
                 what="the last target file")
        wait_for(lambda: exp.scheduler.active_runs == 0, timeout=30, what="runs in flight to end")
        exp.server_stats.poll()
        text = exp.exposition.render().decode()
    expected_cases = {(t, "s", model, c, str(level)) for t in names for c in cases for level in levels}
    found_cases, found_runs, found_servers = set(), set(), set()
    for name, labels in series(text):
        labels = dict(labels)
        if "target" not in labels:
            continue
        assert labels["target"] in names, (name, labels)
        if "case" in labels and "concurrency" in labels:
            found_cases.add(tuple(labels[k] for k in ("target", "scenario", "model", "case", "concurrency")))
        elif "scenario" in labels:
            found_runs.add((labels["target"], labels["scenario"]))
        elif name.startswith("llm_server_"):
            found_servers.add(labels["target"])
    assert found_cases == expected_cases
    assert found_runs == {(t, "s") for t in names}
    assert found_servers == set(names)
