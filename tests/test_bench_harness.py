"""The probe-engine benchmark harness (benchmarks/): its parts fit together without running any load."""

import json

from benchmarks import render, workloads
from benchmarks.bench_stats import capacity_max, evaluate
from tests.kit.exporters import ROOT


def committed_report():
    with open(f"{ROOT}/benchmarks/results.json") as f:
        return json.load(f)


def test_results_md_is_the_rendering_of_results_json():
    # Both files are written by one run: a change to a section's rendering that is not a
    # deliberate format change shows up here, before anyone spends six minutes on `make bench`.
    with open(f"{ROOT}/benchmarks/RESULTS.md") as f:
        assert render.render(committed_report()) == f.read()


def test_goals_and_capacity_are_recomputed_from_the_rows():
    report = committed_report()
    assert capacity_max(report["capacity"]) == report["capacity_max"]
    assert evaluate(report) == report["targets"]


def test_workload_keys_are_unique_and_a_section_without_rows_renders_nothing():
    keys = [w.key for w in workloads.WORKLOADS]
    assert len(keys) == len(set(keys))
    assert {"ttft", "interference", "gaps", "cost", "capacity", "scrape", "memory"} <= set(keys)
    # A section whose workload did not run (an older results.json) renders nothing, not an error.
    report = committed_report()
    del report["interference"]
    assert "### 1b." not in render.render(report) and "### 1." in render.render(report)
