import os
import subprocess
import sys

import pytest

from exporter.config import ConfigError, default_ollama_url, load_file, load_text, parse_duration
from tests.kit.exporters import ROOT

SCENARIOS = os.path.join(ROOT, "scenarios")


def problems(text):
    with pytest.raises(ConfigError) as info:
        load_text(text)
    return info.value.problems


def test_shipped_scenarios_are_valid():
    default = load_file(os.path.join(SCENARIOS, "default.yaml"))
    assert [c.name for c in default.scenarios[0].cases] == ["short", "medium", "long"]
    day1 = load_file(os.path.join(SCENARIOS, "day1.yaml"))
    names = {s.name: s for s in day1.scenarios}
    assert names["concurrency"].concurrency == (1, 2, 4, 8)
    temps = sorted(c.options["temperature"] for c in names["temperature"].cases)
    assert temps == [0, 0.7, 1.5]
    assert len(names["prompt-length"].cases) == 4


def test_packaged_default_is_scenarios_default():
    # One file: exporter/default.yaml is a link to it, which a wheel build resolves into a copy.
    assert os.path.samefile(os.path.join(SCENARIOS, "default.yaml"), os.path.join(ROOT, "exporter", "default.yaml"))
    assert load_file(None).scenarios[0].name == "default"


def test_misspelled_option_is_reported_with_its_path():
    text = """
scenarios:
  - name: a
    model: m
    cases: {short: {prompt: hi}}
  - name: b
    model: m
    cases: {short: {prompt: hi}}
  - name: c
    model: m
    cases:
      long:
        prompt: hi
        options: {temprature: 0.5}
"""
    assert problems(text) == ["scenarios[2].cases.long.options.temprature: unknown key"]


def test_every_problem_is_listed_at_once():
    text = """
targets:
  - {name: a, url: "ftp://x"}
scenarios:
  - name: s
    model: m
    concurrency: [0]
    timeout: -1
    schedule: {cron: "not a cron"}
    cases: {short: {prompt: hi}}
    bogus: 1
"""
    found = problems(text)
    assert "targets[0].url: must be an http:// or https:// URL" in found
    assert "scenarios[0].concurrency: levels must be between 1 and 256" in found
    assert "scenarios[0].timeout: duration must be positive and finite" in found
    assert "scenarios[0].bogus: unknown key" in found
    assert any(p.startswith("scenarios[0].schedule.cron: not a valid crontab expression") for p in found)


def test_semantic_problems_are_collected():
    text = """
targets: [{name: a, url: "http://h:1"}, {name: a, url: "http://h:2"}]
scenarios:
  - {name: s, model: m, targets: [nope], schedule: {interval: 1m, cron: "* * * * *"}, cases: {x: {prompt: p}}}
  - {name: s, model: m, cases: {x: {prompt: p}}}
"""
    found = problems(text)
    assert "targets[1].name: duplicate target or group name 'a', already given by targets[0].name" in found
    assert any(p.startswith("scenarios[0].targets[0]: no target named 'nope'") for p in found)
    assert "scenarios[0].schedule: give exactly one of interval or cron" in found
    assert "scenarios[1].name: duplicate scenario name 's', already given by scenarios[0].name" in found


def test_yaml_syntax_error_names_the_line():
    found = problems("scenarios:\n  - name: [unclosed\n")
    assert len(found) == 1 and found[0].startswith("line ") and "invalid YAML" in found[0]


@pytest.mark.parametrize("text", ["", "[]", "42", "scenarios: 7", "scenarios: []"])
def test_degenerate_documents_give_clean_errors(text):
    assert problems(text)


def test_sweeps_expand_into_cases():
    cfg = load_text("""
scenarios:
  - name: s
    model: m
    options: {temperature: 0, num_predict: 8}
    concurrency: [1, 4]
    cases:
      short: {prompt: "hi"}
      long: {prompt: "word", prompt_repeat: 3, options: {num_predict: 16}}
    sweep:
      temperature: [0, 0.7]
""")
    s = cfg.scenarios[0]
    by_name = {c.name: c for c in s.cases}
    assert set(by_name) == {"short@temperature=0", "short@temperature=0.7", "long@temperature=0",
                            "long@temperature=0.7"}
    assert by_name["long@temperature=0.7"].options == {"temperature": 0.7, "num_predict": 16}
    assert by_name["long@temperature=0"].prompt == "word word word"
    assert cfg.label_combinations == 4 * 2


def test_label_budget_refuses_an_exploding_config():
    found = problems("""
limits: {max_label_combinations: 10}
scenarios:
  - name: s
    model: m
    concurrency: [1, 2, 4]
    cases: {a: {prompt: p}, b: {prompt: q}}
    sweep: {temperature: [0, 0.5, 1.0]}
""")
    assert found == [
        "limits.max_label_combinations: this config creates 18 target/scenario/case/concurrency combinations, "
        "more than the limit of 10; shrink the sweeps or raise the limit"
    ]


def test_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration("250ms") == 0.25
    assert parse_duration(2) == 2
    for bad in ("soon", "-1s", 0, True, float("nan"), float("inf"), "400000h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize(
    "env,expected",
    [
        (None, "http://127.0.0.1:11434"),
        ("127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("ollama", "http://ollama:11434"),
        ("https://gpu-box:443", "https://gpu-box:443"),
        ("0.0.0.0:11434", "http://127.0.0.1:11434"),
    ],
)
def test_default_target_follows_ollama_host(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("OLLAMA_HOST", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_HOST", env)
    assert default_ollama_url() == expected
    cfg = load_text("scenarios: [{name: s, model: m, cases: {a: {prompt: p}}}]")
    assert cfg.targets[0].url == expected


def test_environment_expansion(monkeypatch):
    monkeypatch.setenv("PERF_MODEL", "qwen3:0.6b")
    cfg = load_text("scenarios: [{name: s, model: '${PERF_MODEL}', cases: {a: {prompt: p}}}]")
    assert cfg.scenarios[0].model == "qwen3:0.6b"
    monkeypatch.delenv("PERF_MODEL")
    cfg = load_text("scenarios: [{name: s, model: '${PERF_MODEL:-tiny}', cases: {a: {prompt: p}}}]")
    assert cfg.scenarios[0].model == "tiny"
    assert problems("scenarios: [{name: s, model: '${PERF_MODEL}', cases: {a: {prompt: p}}}]") == [
        "(environment): ${PERF_MODEL} is not set and has no default"
    ]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_config_check_cli(tmp_path):
    ok = _cli("--config.file", "scenarios/default.yaml", "--config.check")
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios:\n  - name: s\n    model: m\n    cases: {a: {prompt: p, optoins: {}}}\n")
    res = _cli("--config.file", str(bad), "--config.check")
    assert res.returncode != 0
    assert "scenarios[0].cases.a.optoins: unknown key" in res.stderr
    missing = _cli("--config.file", str(tmp_path / "nope.yaml"), "--config.check")
    assert missing.returncode != 0 and "cannot read" in missing.stderr


def test_sweep_over_two_options():
    cfg = load_text("""
scenarios:
  - name: s
    model: m
    cases: {text: {prompt: p}}
    sweep: {temperature: [0, 0.7], prompt_repeat: [1, 4]}
""")
    names = sorted(c.name for c in cfg.scenarios[0].cases)
    assert names == ["text@temperature=0,prompt_repeat=1", "text@temperature=0,prompt_repeat=4",
                     "text@temperature=0.7,prompt_repeat=1", "text@temperature=0.7,prompt_repeat=4"]


def test_distinct_sweep_values_give_distinct_case_names():
    # %g printed both as 0.1, so the two cases shared one name, one set of series and one live window.
    cfg = load_text("""
scenarios:
  - {name: s, model: m, cases: {a: {prompt: p}}, sweep: {temperature: [0.1, 0.1000001, 0, 2.5e-07]}}
""")
    cases = cfg.scenarios[0].cases
    assert [c.name for c in cases] == ["a@temperature=0.1", "a@temperature=0.1000001", "a@temperature=0",
                                       "a@temperature=2.5e-07"]
    assert [c.options["temperature"] for c in cases] == [0.1, 0.1000001, 0.0, 2.5e-07]


@pytest.mark.parametrize("sweep, name", [
    ("{temperature: [0.5, 0.5]}", "a@temperature=0.5"),
    ("{temperature: [1, 1.0]}", "a@temperature=1"),  # one value, written two ways
    ("{seed: [1, true], top_k: [2]}", "a@top_k=2,seed=1"),  # keys in the order of Sweep's fields
])
def test_a_value_given_twice_is_refused_naming_both_places(sweep, name):
    found = problems(f"scenarios: [{{name: s, model: m, cases: {{a: {{prompt: p}}}}, sweep: {sweep}}}]")
    source = f"scenarios[0].cases.a swept at {name[2:]}"
    assert found == [f"{source}: duplicate case name {name!r}, already given by {source}"]


def test_a_literal_case_spelled_like_a_swept_one_keeps_its_own_name():
    # The sweep suffixes every case, so the suffix after the last @ tells the two apart.
    cfg = load_text("""
scenarios:
  - {name: s, model: m, cases: {a: {prompt: p}, "a@temperature=0.1": {prompt: q}}, sweep: {temperature: [0.1]}}
""")
    assert [c.name for c in cfg.scenarios[0].cases] == ["a@temperature=0.1", "a@temperature=0.1@temperature=0.1"]


def test_name_problems_come_with_every_other_problem():
    found = problems("""
targets: [{name: "bad name", url: "ftp://x"}, {name: b, url: "http://h:1"}, {name: b, url: "http://h:2"}]
scenarios:
  - {name: s, model: m, targets: [nope], cases: {"x y": {prompt: p}}, timeout: -1}
  - {name: s, model: m, cases: {long: {prompt: p}}, sweep: {temperature: [0.5, 0.5], num_ctx: [0]}}
  - {name: t, model: m, cases: {aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: {prompt: p}},
     sweep: {temperature: [0.25]}}
""")
    rule = "must be 1-64 characters of letters, digits and _.:@=/+,-"
    assert found == [
        f"targets[0].name: {rule}",
        "targets[0].url: must be an http:// or https:// URL",
        "scenarios[0].timeout: duration must be positive and finite",
        "scenarios[1].sweep.num_ctx[0]: Input should be greater than 0",
        "targets[2].name: duplicate target or group name 'b', already given by targets[1].name",
        "scenarios[1].name: duplicate scenario name 's', already given by scenarios[0].name",
        "scenarios[0].targets[0]: no target named 'nope' (nor target_files group) (known: bad name, b)",
        f"scenarios[2].cases.{'a' * 55} swept at temperature=0.25: case name '{'a' * 55}@temperature=0.25' {rule}",
    ]


def test_one_case_name_rule_for_literal_and_swept_names():
    found = problems("scenarios: [{name: s, model: m, cases: {'x y': {prompt: p}}, sweep: {top_k: [1]}}]")
    assert found == ["scenarios[0].cases.x y swept at top_k=1: case name 'x y@top_k=1' "
                     "must be 1-64 characters of letters, digits and _.:@=/+,-"]


def test_regression_settings_per_scenario_with_defaults():
    cfg = load_text("""
scenarios:
  - {name: a, model: m, cases: {x: {prompt: p}}}
  - name: b
    model: m
    regression: {recent: 30m, baseline: 2w, seasonality: daily, accept_after: 3d}
    cases: {x: {prompt: p}}
""")
    a, b = cfg.scenarios
    assert (a.regression.recent, a.regression.baseline, a.regression.seasonality, a.regression.accept_after) == (
        900, 7 * 86400, "auto", 7 * 86400)
    assert (b.regression.recent, b.regression.baseline, b.regression.seasonality, b.regression.accept_after) == (
        1800, 14 * 86400, "daily", 3 * 86400)
    for bad, where in (("{seasonality: hourly}", "regression.seasonality"), ("{baseline: 6h}", "regression"),
                       ("{recnt: 5m}", "regression.recnt"), ("{accept_after: soon}", "regression.accept_after")):
        with pytest.raises(ConfigError) as exc:
            load_text(f"scenarios: [{{name: s, model: m, regression: {bad}, cases: {{x: {{prompt: p}}}}}}]")
        assert any(where in p for p in exc.value.problems), exc.value.problems
