"""GPU facts for the bench report from nvidia-smi, tested on real output (tests/exporter_samples/)."""

import logging
import subprocess
from pathlib import Path

import pytest

from exporter.report import gpu

SAMPLE = Path(__file__).parent / "exporter_samples" / "nvidia-smi-query-gpu-l40s.csv"


def test_a_real_l40s_capture_parses_by_header_name():
    (g,) = gpu.parse_query_gpu_csv(SAMPLE.read_text())
    assert g["index"] == 0 and g["name"] == "NVIDIA L40S" and g["driver_version"] == "595.80"
    assert g["memory_total_bytes"] == 46068 * 2**20 and g["memory_used_bytes"] == 1235 * 2**20
    assert g["power_watts"] == pytest.approx(110.23) and g["power_limit_watts"] == 350.0
    assert g["utilisation"] == pytest.approx(0.09)
    assert g["max_sm_clock_hz"] == 2520e6 and g["max_memory_clock_hz"] == 9001e6
    assert gpu.known_bandwidth(g["name"]) == 864e9


def _runner(stdout="", returncode=0, exc=None):
    calls = []

    def run(args, **kw):
        calls.append(args)
        if exc:
            raise exc
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="NVIDIA-SMI has failed")

    run.calls = calls
    return run


def test_facts_ask_for_the_fields_they_read_and_add_the_datasheet_bandwidth():
    text = ("index, name, uuid, driver_version, memory.total [MiB], memory.used [MiB], power.limit [W], "
            "clocks.max.sm [MHz], clocks.max.memory [MHz]\n"
            "0, NVIDIA GeForce RTX 4090, GPU-1, 550.54.14, 24564 MiB, 1 MiB, 450.00 W, 3120 MHz, 10501 MHz\n"
            "1, Tesla T4, GPU-2, 550.54.14, 15360 MiB, 0 MiB, [N/A], 1590 MHz, 5001 MHz\n")
    run = _runner(text)
    gpus = gpu.gpu_facts(run)
    assert run.calls[0][1] == "--query-gpu=" + ",".join(gpu.FACT_FIELDS) and run.calls[0][2] == "--format=csv"
    assert [g["memory_bandwidth_bytes_per_s"] for g in gpus] == [1008e9, 320e9]
    assert gpus[1]["power_limit_watts"] is None  # [N/A] is unknown, not 0


@pytest.mark.parametrize("run", [_runner(returncode=9), _runner(exc=FileNotFoundError("nvidia-smi")),
                                 _runner(exc=subprocess.TimeoutExpired("nvidia-smi", 10)), _runner("garbage")],
                         ids=["exit-status", "missing", "timeout", "unparseable"])
def test_a_failing_tool_is_no_gpu_data_and_one_log_line(run, caplog):
    with caplog.at_level(logging.INFO, logger="exporter.report.gpu"):
        assert gpu.gpu_facts(run) == [] and gpu.gpu_sample(run) is None
    assert len([r for r in caplog.records if r.name == "exporter.report.gpu"]) == 2  # one per call


def test_no_nvidia_smi_on_this_host_is_no_gpu_data(monkeypatch, caplog):
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    with caplog.at_level(logging.INFO, logger="exporter.report.gpu"):
        assert gpu.gpu_facts() == []
    assert [r.message for r in caplog.records] == ["no nvidia-smi on this host: no GPU data"]


def test_samples_in_base_units():
    text = "index, utilization.gpu [%], memory.used [MiB], power.draw [W]\n0, 97 %, 7385 MiB, 287.51 W\n"
    assert gpu.gpu_sample(_runner(text)) == [{"index": 0, "utilisation": 0.97, "memory_used_bytes": 7385 * 2**20,
                                              "power_watts": 287.51}]


def test_unknown_gpu_has_no_bandwidth():
    assert gpu.known_bandwidth("Some Future GPU") is None
    assert gpu.known_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert gpu.known_bandwidth("NVIDIA L40") == 864e9 and gpu.known_bandwidth("NVIDIA L4") == 300e9


def _config():
    import textwrap

    from exporter.config import load_text
    from tests.kit.exporters import free_port

    return load_text(textwrap.dedent(f"""\
        targets:
          - name: here
            url: http://127.0.0.1:{free_port()}
            process_match: 'pytest|python'
        scenarios:
          - name: s
            model: m
            cases: {{short: {{prompt: "hi"}}}}
        """))


L40S = {"index": 0, "name": "NVIDIA L40S", "memory_bandwidth_bytes_per_s": 864e9}


def test_system_facts_take_the_gpu_datasheet_bandwidth_unless_configured(monkeypatch):
    from exporter.report import sysinfo

    monkeypatch.setattr(sysinfo.gpu, "gpu_facts", lambda: [dict(L40S)])
    monkeypatch.setattr(sysinfo, "target_info", lambda target, models: {})
    info = sysinfo.collect(_config())
    assert info["gpus"] == [L40S] and info["memory_bandwidth_bytes_per_s"] == 864e9
    assert "L40S" in info["memory_bandwidth_source"]
    configured = sysinfo.collect(_config(), bandwidth=1e12)
    assert configured["memory_bandwidth_bytes_per_s"] == 1e12 and configured["memory_bandwidth_source"] == "configured"


def test_without_a_gpu_the_facts_are_as_before(monkeypatch):
    from exporter.report import sysinfo

    monkeypatch.setattr(sysinfo.gpu, "gpu_facts", lambda: [])
    monkeypatch.setattr(sysinfo, "target_info", lambda target, models: {})
    monkeypatch.setattr(sysinfo, "measure_memory_bandwidth", lambda: 5e9)
    info = sysinfo.collect(_config())
    assert info["gpus"] == [] and info["memory_bandwidth_bytes_per_s"] == 5e9
    assert info["memory_bandwidth_source"].startswith("measured")


def test_resource_samples_carry_the_gpus_of_the_same_tick():
    import time

    from exporter.report.bench import ResourceSampler

    reading = [{"index": 0, "utilisation": 0.97, "memory_used_bytes": 7 * 2**30, "power_watts": 287.5}]
    with ResourceSampler(_config(), interval=0.05, gpu_sampler=lambda: reading) as sampler:
        time.sleep(0.5)
    assert sampler.samples and all(s["gpus"] == reading for s in sampler.samples)
    with ResourceSampler(_config(), interval=0.05) as plain:
        time.sleep(0.2)
    assert plain.samples and all("gpus" not in s for s in plain.samples)
