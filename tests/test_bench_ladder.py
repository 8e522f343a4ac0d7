"""The context-length ladder: memory per step, KV-cache bytes per token fitted against theory."""

import json
import os

import pytest

from exporter.config import load_text
from exporter.report.bench import run_bench
from exporter.report.ladder import ContextLadder, kv_bytes_per_token
from exporter.results import read_results
from tests.kit.fake_ollama import Behavior, FakeOllama

# The fake's /api/show: 30 layers, 3 KV heads, 576 / 9 = 64 dims: 2 x 30 x 3 x 64 x 2 bytes per token.
THEORY = 2 * 30 * 3 * 64 * 2


def test_kv_bytes_per_token_from_the_model_dimensions():
    facts = {"block_count": 30, "head_count": 9, "head_count_kv": 3, "embedding_length": 576}
    assert kv_bytes_per_token(facts) == THEORY
    assert kv_bytes_per_token({**facts, "head_count_kv": None}) == 2 * 30 * 9 * 64 * 2  # no GQA
    assert kv_bytes_per_token({"block_count": 30}) is None


def test_ladder_reloads_per_step_and_fits_the_kv_cache(tmp_path):
    out = str(tmp_path / "o")
    # The fake's loaded size grows by 1.5x the f16 estimate per context token (a q8 cache would be ~0.53x).
    with FakeOllama(Behavior(tokens=3, load_time=0.01, kv_bytes_per_token=int(THEORY * 1.5))) as server:
        cfg = load_text(f"""
targets: [{{name: t1, url: "{server.url}", process_match: null}}]
scenarios:
  - name: s
    model: tiny
    options: {{num_predict: 3}}
    cases: {{q: {{prompt: "one two three four five"}}}}
""")
        assert run_bench(cfg, out, quiet=True, memory_bandwidth=10e9,
                         context_ladder=ContextLadder((512, 1024, 2048, 4096))) == 0
        generations = [r for r in server.requests if r.path == "/api/generate" and r.body.get("prompt")]
    ladder_requests = [g for g in generations if "num_ctx" in (g.body.get("options") or {})]
    assert [g.body["options"]["num_ctx"] for g in ladder_requests] == [512, 1024, 2048, 4096]
    # The prompt fills about half of each step's context (fake tokens are words).
    words = [len(g.body["prompt"].split()) for g in ladder_requests]
    assert words == [int(c * 0.5 / 1.3) for c in (512, 1024, 2048, 4096)]
    records = list(read_results(os.path.join(out, "context_ladder.jsonl")))
    assert [r.case for r in records] == [f"q@num_ctx={c}" for c in (512, 1024, 2048, 4096)]
    assert all(r.start == "cold" and r.load_duration_s == pytest.approx(0.01, abs=0.005) for r in records)
    [lad] = json.load(open(os.path.join(out, "summary.json")))["context_ladder"]
    assert [s["server_context_length"] for s in lad["steps"]] == [512, 1024, 2048, 4096]
    fit = lad["fits"]["loaded_size"]
    assert fit["bytes_per_token"] == pytest.approx(THEORY * 1.5, rel=1e-6) and fit["r2"] == pytest.approx(1)
    assert fit["intercept_bytes"] == pytest.approx(100_000_000, rel=1e-6)
    assert lad["theory_bytes_per_token"] == THEORY and fit["ratio_to_theory"] == pytest.approx(1.5, rel=1e-6)
    assert lad["fits"]["rss"] is None  # no process to measure on a remote server
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "## What fits: context-length ladder" in report
    assert f"| loaded size (/api/ps) | {THEORY * 1.5 / 1024:.1f} KiB | 1.000 |" in report
    assert "| theory (f16 cache) | 22.5 KiB |" in report and "1.50x" in report
