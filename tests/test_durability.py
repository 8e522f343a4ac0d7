"""Leaks and crashes: a short soak of the real exporter process, and SIGKILL while it writes results."""

import io
import signal

from exporter.results import read_results
from tests.kit.exporters import ExporterProcess, scenario_yaml, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama
from tests.kit.soak import soak


def test_short_soak_returns_to_its_descriptor_and_thread_counts():
    result = soak(duration=20, interval=1, report_every=5, out=io.StringIO())
    assert result["requests"] > 50
    assert result["fds_end"] <= result["fds_start"], result
    assert result["threads_end"] <= result["threads_start"], result
    assert result["exit_code"] == 0


def test_sigkill_while_writing_never_breaks_the_results_file(tmp_path):
    """Kill -9 the exporter mid-write many times: every earlier line stays readable, the next start appends cleanly."""
    results = tmp_path / "results.jsonl"
    with FakeOllama(Behavior(tokens=2, load_time=0)) as server:
        cfg = tmp_path / "c.yaml"
        # Back-to-back runs of a 4-wide batch: result lines are written almost all the time.
        text = scenario_yaml(server.url, extra="repeats: 50\nconcurrency: [4]\n")
        cfg.write_text(text.replace("interval: 1h", "interval: 0.1s"))
        seen = 0
        for _ in range(8):
            exp = ExporterProcess(["--config.file", str(cfg), "--results.file", str(results), "--log.level", "info"])
            wait_for(lambda seen=seen: results.exists() and results.stat().st_size > 0 and
                     sum(1 for _ in open(results, "rb")) > seen + 20, timeout=60, what="new result lines")
            exp.stop(signal.SIGKILL)
            records = list(read_results(results))  # never raises
            assert len(records) >= seen + 20
            seen = len(records)
    raw = results.read_bytes().split(b"\n")
    torn = [line for line in raw[:-1] if line and not line.startswith(b"{")]
    complete = [line for line in raw[:-1] if line.startswith(b"{") and line.endswith(b"}")]
    # At most one torn line per kill, and every complete line is a readable record.
    assert len(raw[:-1]) - len(complete) - raw[:-1].count(b"") <= 8
    assert not torn  # lines never interleave: each is one write() on an O_APPEND descriptor
    assert len(list(read_results(results))) == len(complete)


def test_sigterm_during_a_concurrency_batch_ends_in_bounded_time(tmp_path):
    import time

    results = tmp_path / "results.jsonl"
    with FakeOllama(Behavior(tokens=200, token_interval=0.05, load_time=0)) as server:  # each request ~10 s
        cfg = tmp_path / "c.yaml"
        cfg.write_text(scenario_yaml(server.url, extra="repeats: 1\nconcurrency: [1, 8]\ntimeout: 60s\n",
                                     cases={"short": "hi"}))
        exp = ExporterProcess(["--config.file", str(cfg), "--results.file", str(results), "--shutdown.grace", "2"])
        # The sequential request finishes after ~10 s, then the batch of 8 starts.
        wait_for(lambda: results.exists() and results.stat().st_size > 0, timeout=60, what="the sequential request")
        wait_for(lambda: len(server.requests) >= 1 + 8, timeout=10, what="the batch to start")
        t0 = time.monotonic()
        code = exp.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - t0
    assert code == 0, exp.output
    assert took < 2 + 3, took  # the grace period plus a margin, not the batch's ~10 s
    assert results.read_bytes().endswith(b"\n")
    records = list(read_results(results))
    assert len(records) == 1 and records[0].ok and records[0].concurrency == 1
