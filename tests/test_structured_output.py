"""Structured output: a case's `format` (json or a JSON schema), as each API sends it, the record's
note of it, the config's checks, and bench advice on the grammar's cost against the same case
without it."""

import json
import os
import subprocess
import sys

import pytest

from exporter.config import ConfigError, load_text
from exporter.ollama import OllamaClient
from exporter.ollama.openai import response_format
from exporter.probe import probe_once
from exporter.report.advice import advise, grammar_overhead
from exporter.report.bench import run_bench
from exporter.results import ProbeResult, read_results
from tests.kit.exporters import ROOT
from tests.kit.fake_ollama import Behavior, FakeOllama

SCHEMA = {"title": "Capital", "type": "object", "properties": {"city": {"type": "string"},
                                                                "population": {"type": "integer"}},
          "required": ["city"]}
SCHEMA_YAML = json.dumps(SCHEMA)  # JSON is YAML: the schema inline, as a user may paste it


def config(url, api, case_format, scenario_format=None):
    scenario = f"    format: {scenario_format}\n" if scenario_format else ""
    case = f", format: {case_format}" if case_format else ""
    return load_text(f"""
targets: [{{name: t1, url: "{url}", process_match: null}}]
scenarios:
  - name: s
    model: tiny
    api: {api}
    timeout: 5s
    options: {{temperature: 0, num_predict: 6}}
{scenario}    cases:
      q: {{prompt: "Capital of France?"{case}}}
      free: {{prompt: "Capital of France?"}}
""", "test")


@pytest.mark.parametrize("api", ["generate", "chat", "openai"])
@pytest.mark.parametrize("fmt", ["json", "schema"])
def test_each_api_sends_format_as_its_server_expects(fake, api, fmt):
    cfg = config(fake.url, api, "json" if fmt == "json" else SCHEMA_YAML)
    scenario = cfg.scenarios[0]
    client = OllamaClient(scenario.targets[0])
    r, answer = probe_once(client, scenario, scenario.cases[0])
    assert r.ok, r.error
    body = fake.requests[-1].body
    if api == "openai":
        assert "format" not in body
        named = {"type": "json_schema", "json_schema": {"name": "Capital", "schema": SCHEMA}}
        assert body["response_format"] == ({"type": "json_object"} if fmt == "json" else named)
    else:
        assert "response_format" not in body
        assert body["format"] == ("json" if fmt == "json" else SCHEMA)
    # The fake answers a constrained request with a JSON object, as a grammar makes a model do.
    assert json.loads(answer) == {"a": "t1 t2 t3 t4 "}
    assert r.structured_output == fmt
    # The free-text case of the same scenario sends nothing of it, and says so.
    free, text = probe_once(client, scenario, scenario.cases[1])
    assert free.ok and free.structured_output is None and text.startswith("t0 ")
    assert "format" not in fake.requests[-1].body and "response_format" not in fake.requests[-1].body


def test_the_record_keeps_the_kind_never_the_schema(fake, tmp_path):
    cfg = config(fake.url, "chat", SCHEMA_YAML)
    scenario = cfg.scenarios[0]
    r, _ = probe_once(OllamaClient(scenario.targets[0]), scenario, scenario.cases[0])
    line = json.dumps(r.to_dict())
    assert '"structured_output": "schema"' in line and "population" not in line
    assert ProbeResult.from_dict(json.loads(line)).structured_output == "schema"
    # An older results file without the field reads as free text.
    old = {k: v for k, v in r.to_dict().items() if k != "structured_output"}
    assert ProbeResult.from_dict(old).structured_output is None


def test_a_case_format_overrides_the_scenarios():
    cfg = config("http://127.0.0.1:9", "openai", SCHEMA_YAML, scenario_format="json")
    by_name = {c.name: c for c in cfg.scenarios[0].cases}
    assert by_name["q"].format == SCHEMA and by_name["free"].format == "json"
    assert (by_name["q"].structured_output, by_name["free"].structured_output) == ("schema", "json")


def test_the_schema_name_is_the_title_when_openai_would_take_it():
    assert response_format({"type": "object"})["json_schema"]["name"] == "response"
    assert response_format({"title": "a title with spaces"})["json_schema"]["name"] == "response"
    assert response_format({"title": "x" * 65})["json_schema"]["name"] == "response"
    assert response_format({"title": "Answer_v2-b"})["json_schema"]["name"] == "Answer_v2-b"


BAD = """
targets: [{name: t1, url: "http://127.0.0.1:9", process_match: null}]
scenarios:
  - name: s
    model: tiny
    format: xml
    cases:
      a: {prompt: hi, format: [1, 2]}
      b: {prompt: hi, format: {type: objekt}}
      c: {prompt: hi, format: {type: object, properties: 3}}
      d: {prompt: hi, format: {type: object, required: city}}
      e: {prompt: hi, format: {type: object, properties: {when: {const: 2024-01-01}}}}
      ok: {prompt: hi, format: {}}
"""


def test_every_bad_format_is_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_text(BAD, "bad")
    problems = info.value.problems
    expected = [
        "scenarios[0].format: expected json or a JSON schema (a mapping), got 'xml'",
        "scenarios[0].cases.a.format: a JSON schema must be an object (a mapping), got list",
        "scenarios[0].cases.b.format: not a usable JSON schema: type: expected one of object, array, string, "
        "number, integer, boolean, null (or a list of them), got 'objekt'",
        "scenarios[0].cases.c.format: not a usable JSON schema: properties: must be an object of schemas",
        "scenarios[0].cases.d.format: not a usable JSON schema: required: must be a list of property names",
        "scenarios[0].cases.e.format: not a usable JSON schema: properties.when.const: "
        "datetime.date(2024, 1, 1) is not a JSON value",
    ]
    assert problems == expected
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    res = subprocess.run([sys.executable, "-m", "exporter", "--config.check", "--config.file", str(path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode != 0
    for problem in expected:
        assert problem in res.stdout + res.stderr


# ---- bench advice: the grammar's cost ----

def stat(value, n, cv):
    return {"n": n, "median": value, "mean": value, "stdev": value * cv}


def row(scenario, case, ttft, tpot, decode=None, n=5, conc=1, cv=0.02, tokens=30):
    return {"scenario": scenario, "case": case, "concurrency": conc, "requests": n, "failures": 0, "cold": 0,
            "ttft": stat(ttft, n, cv), "tpot": stat(tpot, n, cv),
            "decode_tps": stat(decode, n, cv) if decode else {"n": 0},
            "prompt_tokens": {"median": 20, "max": 20}, "produced_tokens": {"median": tokens, "max": tokens},
            "prefill_tps": {"median": 100}}


def scenarios_json(api="chat", **formats):
    cases = [{"name": name, "prompt": "Capital of France?", "system": None, "options": {"temperature": 0},
              "turns": [], "format": fmt} for name, fmt in formats.items()]
    return [{"name": "s", "api": api, "unique_prompt": False, "cases": cases}]


def test_a_measured_pair_gives_the_grammar_overhead():
    cases = [row("s", "free", 0.100, 0.010, decode=100.0), row("s", "json", 0.150, 0.0125, decode=80.0, tokens=24),
             row("s", "schema", 0.104, 0.0102, decode=98.0),
             row("s", "noisy", 0.150, 0.0125, decode=80.0, cv=0.5)]
    formats = {"free": None, "json": "json", "schema": SCHEMA, "noisy": "json"}
    found = {a["case"]: a for a in grammar_overhead(cases, scenarios_json(**formats))}
    assert set(found) == {"json", "schema", "noisy"}
    j = found["json"]
    assert (j["kind"], j["setting"], j["current"], j["sweep"]) == ("request", "format", "json", False)
    assert j["overhead"]["baseline"] == {"scenario": "s", "case": "free"}
    assert j["overhead"]["ttft_ratio"] == pytest.approx(1.5) and j["overhead"]["tpot_ratio"] == pytest.approx(1.25)
    assert j["overhead"]["decode_tps_ratio"] == pytest.approx(0.8)
    assert j["reason"] == ("structured output: the grammar that constrains each token costs time to first token "
                           "and time per token")
    assert j["evidence"] == ["s/json (format json) against s/free (free text), concurrency 1, 5 and 5 requests",
                             "TTFT median 0.100 -> 0.150 s (+50%)",
                             "time per output token median 10.0 -> 12.5 ms (+25%)",
                             "server decode median 100.0 -> 80.0 tok/s (-20%)",
                             "output tokens median 30 -> 24 (-20%)"]
    # 4% and 2%: within the threshold, reported as measured and free.
    s = found["schema"]
    assert s["current"] == "JSON schema" and s["suggested"] == "keep: no grammar cost measured"
    # The same ratios as json, but with 50% run-to-run variation on both sides: not told apart.
    noisy = found["noisy"]
    assert noisy["overhead"]["ttft_ratio"] == pytest.approx(1.5) and noisy["suggested"].startswith("keep")
    assert noisy["reason"] == "structured output: no cost of 10% or more beyond the run-to-run noise"


def test_only_a_true_twin_is_a_baseline():
    # Other options, another API, another concurrency: not the same request without format.
    scenarios = scenarios_json(json="json", other=None)
    scenarios[0]["cases"][1]["options"] = {"temperature": 0.7}
    assert grammar_overhead([row("s", "json", 0.2, 0.02), row("s", "other", 0.1, 0.01)], scenarios) == []
    api = scenarios_json(json="json") + [dict(scenarios_json("openai", free=None)[0], name="o")]
    assert grammar_overhead([row("s", "json", 0.2, 0.02), row("o", "free", 0.1, 0.01)], api) == []
    pair = scenarios_json(json="json", free=None)
    assert grammar_overhead([row("s", "json", 0.2, 0.02), row("s", "free", 0.1, 0.01, conc=2)], pair) == []
    # The twin may live in another scenario of the same API (a scenario-level format).
    two = [dict(scenarios_json(free=None)[0], name="plain"), dict(scenarios_json(free="json")[0], name="json")]
    [a] = grammar_overhead([row("plain", "free", 0.1, 0.01), row("json", "free", 0.2, 0.02)], two)
    assert (a["scenario"], a["overhead"]["baseline"]["scenario"]) == ("json", "plain")
    # advise() carries it with the rest; no server timings on openai: no decode line.
    m = {"target": "t1", "cases": [row("s", "json", 0.2, 0.02), row("s", "free", 0.1, 0.01)], "concurrency": [],
         "phases_overall": {}, "resources": None, "theory": {}, "facts": {}, "bottleneck": {}}
    [a] = advise("tiny", m, {"running_models": {}}, scenarios_json("openai", json="json", free=None))
    assert a["setting"] == "format" and not any("decode" in e for e in a["evidence"])


def test_bench_pairs_the_cases_and_reports_the_cost(tmp_path):
    out = str(tmp_path / "o")
    with FakeOllama(Behavior(tokens=6, grammar_delay=0.005, load_time=0)) as server:
        cfg = load_text(f"""
targets: [{{name: t1, url: "{server.url}", process_match: null}}]
scenarios:
  - name: s
    model: tiny
    api: chat
    repeats: 3
    options: {{temperature: 0, num_predict: 6}}
    cases:
      q: {{prompt: "Capital of France?", format: {SCHEMA_YAML}}}
      free: {{prompt: "Capital of France?"}}
""", "test")
        assert run_bench(cfg, out, quiet=True) == 0
    records = [r for r in read_results(os.path.join(out, "results.jsonl")) if r.ok]
    assert {(r.case, r.structured_output) for r in records} == {("q", "schema"), ("free", None)}
    summary = json.load(open(os.path.join(out, "summary.json")))
    [a] = [a for a in summary["targets"]["t1"]["models"]["tiny"]["advice"] if a["setting"] == "format"]
    assert (a["case"], a["current"]) == ("q", "JSON schema")
    assert a["overhead"]["baseline"] == {"scenario": "s", "case": "free"}
    assert a["evidence"][0] == "s/q (format JSON schema) against s/free (free text), concurrency 1, 3 and 3 requests"
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "| request option | `format` | `JSON schema` |" in report
