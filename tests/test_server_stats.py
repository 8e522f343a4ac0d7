"""The server's process tree, found by command line, summed with its children."""

import subprocess
import sys
import time
import uuid

import psutil
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import Target, load_text
from exporter.server_stats import ProcessTree
from tests.kit.exporters import free_port, scenario_yaml, server_stats, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama

# A parent that burns CPU in a child it restarts on demand, like `ollama serve` and its runners.
PARENT = """
import subprocess, sys, time
marker = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", "import time\\nt=time.time()\\nwhile time.time()-t<30: pass"])
open(sys.argv[2], "w").write(str(child.pid))
time.sleep(60)
"""


@pytest.fixture
def fake_server_tree(tmp_path):
    marker = f"fake-serve-{uuid.uuid4().hex[:8]}"
    pidfile = tmp_path / "child.pid"
    proc = subprocess.Popen([sys.executable, "-c", PARENT, marker, str(pidfile)])
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="child start")
    yield marker, proc, int(pidfile.read_text())
    for p in psutil.Process(proc.pid).children(recursive=True):
        p.kill()
    proc.kill()
    proc.wait()


def test_tree_is_found_and_summed(fake_server_tree):
    marker, parent, child_pid = fake_server_tree
    tree = ProcessTree(marker)
    first = tree.sample()
    assert first.root_pid == parent.pid and first.processes == 2
    time.sleep(1.0)
    second = tree.sample()
    # The busy child's CPU counts: about a second of CPU in a second (minus scheduling noise).
    assert second.cpu_seconds_total - first.cpu_seconds_total > 0.3
    assert second.resident_bytes > 5e6


def test_cpu_counter_never_goes_back_when_a_child_exits(fake_server_tree):
    marker, parent, child_pid = fake_server_tree
    tree = ProcessTree(marker)
    time.sleep(0.5)
    before = tree.sample()
    child = psutil.Process(child_pid)
    child.kill()

    def gone():
        try:
            return child.status() == psutil.STATUS_ZOMBIE  # the parent has not reaped it yet
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, what="child exit")
    after = tree.sample()
    assert after.processes == 1
    assert after.cpu_seconds_total >= before.cpu_seconds_total


def test_no_matching_process_means_no_series():
    registry = CollectorRegistry()
    stats = server_stats([Target(name="remote", url=f"http://127.0.0.1:{free_port()}",
                                 process_match="no-such-process-" + uuid.uuid4().hex)], registry)
    stats.poll()
    assert registry.get_sample_value("llm_server_up", {"target": "remote"}) == 0
    assert registry.get_sample_value("llm_server_process_cpu_seconds_total", {"target": "remote"}) is None
    assert registry.get_sample_value("llm_server_process_resident_memory_bytes", {"target": "remote"}) is None
    assert registry.get_sample_value("llm_server_info", {"target": "remote", "version": "0.11.4"}) is None


def test_up_info_and_loaded_models_from_the_api():
    with FakeOllama() as server:
        server.loaded.add("tiny:latest")
        registry = CollectorRegistry()
        stats = server_stats([Target(name="t", url=server.url, process_match=None)], registry)
        stats.poll()
        assert registry.get_sample_value("llm_server_up", {"target": "t"}) == 1
        assert registry.get_sample_value("llm_server_info", {"target": "t", "version": "0.11.4"}) == 1
        loaded = registry.get_sample_value("llm_server_model_loaded_bytes", {"target": "t", "model": "tiny:latest"})
        assert loaded == 1e8
        assert registry.get_sample_value("llm_server_model_vram_bytes", {"target": "t", "model": "tiny:latest"}) == 0
    stats.poll()  # the server is gone now
    assert registry.get_sample_value("llm_server_up", {"target": "t"}) == 0
    assert registry.get_sample_value("llm_server_model_loaded_bytes", {"target": "t", "model": "tiny:latest"}) is None


def _collect(behavior):
    with FakeOllama(behavior) as server:
        server.loaded.add("tiny:latest")
        registry = CollectorRegistry()
        stats = server_stats([Target(name="t", url=server.url, process_match=None)], registry)
        stats.poll()
        return registry


def test_vram_ratio_and_context_length_of_a_partly_offloaded_model():
    registry = _collect(Behavior(model_size=8_000_000_000, size_vram=6_000_000_000, context_length=8192))
    labels = {"target": "t", "model": "tiny:latest"}
    assert registry.get_sample_value("llm_server_model_vram_ratio", labels) == 0.75
    assert registry.get_sample_value("llm_server_model_context_length", labels) == 8192


def test_cpu_run_is_ratio_zero_and_a_missing_context_length_is_no_series():
    registry = _collect(Behavior(size_vram=0, context_length=None))
    labels = {"target": "t", "model": "tiny:latest"}
    assert registry.get_sample_value("llm_server_model_vram_ratio", labels) == 0
    assert registry.get_sample_value("llm_server_model_context_length", labels) is None


def test_vram_ratio_is_unknown_without_a_size():
    from exporter.ollama.wire import RunningModel

    assert RunningModel("m", size=None, size_vram=5).vram_ratio is None
    assert RunningModel("m", size=0, size_vram=0).vram_ratio is None
    assert RunningModel("m", size=10, size_vram=None).vram_ratio is None
    assert RunningModel("m", size=10, size_vram=12).vram_ratio == 1.0  # rounding on the server side


def test_a_server_that_accepts_and_never_answers_delays_only_itself():
    """The stats job polls every target side by side: a silent server ties up its own poll only."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    try:
        with FakeOllama() as server:
            registry = CollectorRegistry()
            stats = server_stats([Target(name="silent", url=f"http://127.0.0.1:{silent.getsockname()[1]}"),
                                  Target(name="good", url=server.url, process_match=None)], registry)
            poll = threading.Thread(target=stats.poll, daemon=True)
            poll.start()
            wait_for(lambda: registry.get_sample_value("llm_server_up", {"target": "good"}) == 1,
                     what="the good server's snapshot while the silent one is still being polled")
            assert poll.is_alive()
            assert registry.get_sample_value("llm_server_up", {"target": "silent"}) is None
            # A second poll of the silent server while the first still waits is not queued behind it.
            assert stats.poll_target(Target(name="silent", url=f"http://127.0.0.1:{silent.getsockname()[1]}")) is None
    finally:
        silent.close()


def test_a_run_polls_only_its_own_target():
    from exporter.scheduler import ProbeScheduler

    polled = []
    with FakeOllama(Behavior(tokens=1)) as server:
        cfg = load_text(scenario_yaml(server.url), "t")
        scheduler = ProbeScheduler([], lambda *a: None, lambda: polled.append("all"), lambda t: polled.append(t.name))
        scheduler._run(cfg.scenarios[0], cfg.scenarios[0].targets[0])
    assert polled == ["t1"]
