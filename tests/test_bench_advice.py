"""What to change: each finding comes with settings and evidence; request options get a runnable scenario file."""

import json
import os
import re
import subprocess
import sys

import yaml

from exporter.config import load_file, load_text
from exporter.report.advice import advise
from exporter.report.bench import SUGGESTED_SCENARIOS, run_bench
from exporter.results import read_results
from tests.kit.exporters import ROOT
from tests.kit.fake_ollama import Behavior, FakeOllama

BANDWIDTH = 10e9
# One generation at a time, half the model in VRAM, a slow prefill and a slow load: every finding at once.
TROUBLED = dict(tokens=4, token_interval=0.002, first_token_delay=0.05, load_time=0.4, parallel=1, vram_share=0.5)


def advice_yaml(url):
    return f"""
targets:
  - {{name: t1, url: "{url}", process_match: null}}
scenarios:
  - name: seq
    model: tiny
    repeats: 3
    keep_alive: 0
    options: {{temperature: 0, num_predict: 4}}
    cases:
      ask: {{prompt: "a question of a few words", prompt_repeat: 150}}
  - name: conc
    model: tiny
    repeats: 2
    concurrency: [1, 2]
    options: {{num_predict: 4}}
    cases:
      hi: {{prompt: "hi"}}
"""


def by_setting(advice):
    return {a["setting"]: a for a in advice}


def test_each_finding_names_its_settings_and_evidence(tmp_path):
    out = str(tmp_path / "o")
    with FakeOllama(Behavior(**TROUBLED)) as server:
        assert run_bench(load_text(advice_yaml(server.url)), out, quiet=True, memory_bandwidth=BANDWIDTH) == 0
    summary = json.load(open(os.path.join(out, "summary.json")))
    advice = by_setting(summary["targets"]["t1"]["models"]["tiny"]["advice"])
    parallel = advice["OLLAMA_NUM_PARALLEL"]
    assert parallel["kind"] == "server" and parallel["suggested"] == "2"
    assert re.search(r"at concurrency 2 the server worked on (0\.[89]|1\.[01]) request at a time", parallel["evidence"][0])
    # keep_alive 0 unloads after every request: every one of seq's requests is a cold start.
    assert advice["OLLAMA_KEEP_ALIVE"]["kind"] == "server"
    assert advice["OLLAMA_KEEP_ALIVE"]["evidence"][0].startswith("4 cold start(s)")
    assert advice["keep_alive"]["kind"] == "request"
    assert advice["OLLAMA_FLASH_ATTENTION"]["suggested"] == "1"
    assert advice["OLLAMA_KV_CACHE_TYPE"]["suggested"] == "q8_0"
    assert "48 of 95 MiB in VRAM: 50% of the model runs from system memory" in advice["OLLAMA_KV_CACHE_TYPE"]["evidence"][0]
    assert (advice["model quantization"]["current"], advice["model quantization"]["suggested"]) == ("Q4_1", "Q4_0")
    assert (advice["num_ctx"]["current"], advice["num_ctx"]["suggested"]) == (4096, 2048)
    assert (advice["num_batch"]["current"], advice["num_batch"]["suggested"]) == (512, 1024)
    assert "prefill is" in advice["num_batch"]["evidence"][0]
    assert "num_thread" not in advice  # no CPU figures for a remote server
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "### What to change" in report
    assert "| server (environment of `ollama serve`) | `OLLAMA_NUM_PARALLEL` | `1 in effect` | `2` |" in report
    assert f"`{SUGGESTED_SCENARIOS}` runs each suggested request option" in report


def test_suggested_scenarios_pass_config_check_and_measure_the_gain(tmp_path):
    out, again = str(tmp_path / "o"), str(tmp_path / "again")
    with FakeOllama(Behavior(**TROUBLED)) as server:
        assert run_bench(load_text(advice_yaml(server.url)), out, quiet=True, memory_bandwidth=BANDWIDTH) == 0
        path = os.path.join(out, SUGGESTED_SCENARIOS)
        res = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", path],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert res.returncode == 0 and ": OK: 2 scenario(s), 1 target(s)" in res.stdout, res.stdout + res.stderr
        doc = yaml.safe_load(open(path))
        assert [s["name"] for s in doc["scenarios"]] == ["try-num_ctx", "try-num_batch"]
        ctx = doc["scenarios"][0]
        assert ctx["cases"]["num_ctx_4096"]["options"] == {"temperature": 0, "num_predict": 4, "num_ctx": 4096}
        assert ctx["cases"]["num_ctx_2048"]["prompt"] == " ".join(["a question of a few words"] * 150)
        assert doc["targets"] == [{"name": "t1", "url": server.url, "process_match": None}]
        # One more bench on the file runs both values.
        assert run_bench(load_file(path), again, quiet=True, memory_bandwidth=BANDWIDTH) == 0
    ran = {(r.scenario, r.case, r.options.get("num_ctx"), r.options.get("num_batch"))
           for r in read_results(os.path.join(again, "results.jsonl")) if r.ok}
    assert ran == {("try-num_ctx", "num_ctx_4096", 4096, None), ("try-num_ctx", "num_ctx_2048", 2048, None),
                   ("try-num_batch", "num_batch_512", None, 512), ("try-num_batch", "num_batch_1024", None, 1024)}


def model_summary(**over):
    case = {"scenario": "s", "case": "c", "concurrency": 1, "requests": 5, "failures": 0, "cold": 0,
            "prompt_tokens": {"median": 900, "max": 1000}, "produced_tokens": {"median": 100, "max": 100},
            "prefill_tps": {"median": 200}}
    m = {"target": "t1", "cases": [case], "phases_overall": {"load": 0, "prefill": 0.1, "decode": 0.9, "queue": 0},
         "concurrency": [], "resources": None, "theory": {}, "facts": {"quantization_level": "Q4_K_M"},
         "bottleneck": {"cpu_saturated": False, "evidence": []}}
    m.update(over)
    return m


def test_a_healthy_run_gets_no_advice_and_a_saturated_cpu_gets_num_thread():
    system = {"cpu_count": 8, "physical_cores": 4, "running_models": {"t1": [{"name": "tiny:latest", "size": 10,
                                                                              "size_vram": 0, "context_length": 2048}]}}
    assert advise("tiny", model_summary(), system) == []
    saturated = model_summary(bottleneck={"cpu_saturated": True, "evidence": ["server CPU: mean 790%, peak 800%"]})
    [rec] = advise("tiny", saturated, system)
    assert (rec["setting"], rec["current"], rec["suggested"], rec["kind"]) == ("num_thread", 8, 4, "request")
    assert rec["evidence"] == ["server CPU: mean 790%, peak 800%", "4 physical / 8 logical cores"]
    # A model fully in VRAM is not CPU-decoded: no thread advice.
    gpu = {**system, "running_models": {"t1": [{"name": "tiny:latest", "size": 10, "size_vram": 10,
                                                 "context_length": 2048}]}}
    assert advise("tiny", saturated, gpu) == []


def test_one_cold_start_at_the_beginning_asks_for_a_warmup_not_keep_alive():
    system = {"cpu_count": 2, "running_models": {"t1": [{"name": "tiny:latest", "context_length": 2048}]}}
    m = model_summary(phases_overall={"load": 0.5, "prefill": 0.05, "decode": 0.45, "queue": 0})
    m["cases"][0]["cold"] = 1
    [rec] = advise("tiny", m, system)
    assert (rec["kind"], rec["setting"], rec["current"], rec["suggested"]) == ("scenario", "warmup", 0, 1)
    m["cases"][0]["cold"] = 3
    assert [a["setting"] for a in advise("tiny", m, system)] == ["OLLAMA_KEEP_ALIVE", "keep_alive"]
