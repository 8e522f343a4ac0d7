"""Prometheus config, recording and alerting rules, their promtool unit tests, Alertmanager routing.

The promtool/amtool tests carry the `prometheus` marker: they need Debian's `prometheus`
package (`make test` installs it; `make test-fast` leaves them out). The pure-Python
convention checks run everywhere.
"""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.kit.exporters import ROOT

PROM_DIR = os.path.join(ROOT, "prometheus")
PROM_CONFIG = os.path.join(PROM_DIR, "prometheus.yml")
RECORDING = os.path.join(PROM_DIR, "rules", "recording.yml")
ALERTS = os.path.join(PROM_DIR, "rules", "alerts.yml")
REGRESSION = os.path.join(PROM_DIR, "rules", "regression.yml")
RULE_TESTS = os.path.join(PROM_DIR, "tests", "alerts_test.yml")
SLO_RULES = os.path.join(PROM_DIR, "rules", "slo.yml")
SLO_TESTS = os.path.join(PROM_DIR, "tests", "slo_test.yml")
REGRESSION_TESTS = os.path.join(PROM_DIR, "tests", "regression_test.yml")
BOTTLENECK = os.path.join(PROM_DIR, "rules", "bottleneck.yml")
BOTTLENECK_TESTS = os.path.join(PROM_DIR, "tests", "bottleneck_test.yml")
# Each alerting rule file and the promtool test file that covers it.
ALERT_FILES = {ALERTS: RULE_TESTS, REGRESSION: REGRESSION_TESTS, SLO_RULES: SLO_TESTS, BOTTLENECK: BOTTLENECK_TESTS}
ALERTMANAGER = os.path.join(PROM_DIR, "alertmanager.yml")

# level:metric:operations, each part in the metric-name alphabet, operations lower-case.
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z0-9_]+$")
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]+$")


def _load(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _rules(path):
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def _tool(name):
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make test` installs Debian's prometheus package (apt-get install prometheus)"
    return path


def _run(args, timeout=120):
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


# ---------------------------------------------------------------- promtool


@pytest.mark.prometheus
def test_promtool_check_config():
    out = _run([_tool("promtool"), "check", "config", PROM_CONFIG])
    assert "SUCCESS" in out
    # check config also parses every rule file that rule_files matches.
    assert all(name in out for name in ("recording.yml", "alerts.yml", "regression.yml", "slo.yml", "bottleneck.yml")), out


@pytest.mark.prometheus
def test_promtool_check_rules():
    out = _run([_tool("promtool"), "check", "rules", RECORDING, *ALERT_FILES])
    assert out.count("SUCCESS") == 1 + len(ALERT_FILES), out


@pytest.mark.prometheus
@pytest.mark.parametrize("tests", sorted(ALERT_FILES.values()), ids=os.path.basename)
def test_promtool_unit_tests_pass(tests):
    out = _run([_tool("promtool"), "test", "rules", tests], timeout=300)
    assert "SUCCESS" in out and "FAILED" not in out, out


# ---------------------------------------------------------------- conventions


@pytest.mark.parametrize("path", [RECORDING, SLO_RULES], ids=os.path.basename)
def test_recording_rules_are_named_level_metric_operations(path):
    rules = [r for r in _rules(path) if "record" in r]
    assert rules and all("record" in r for r in rules)
    names = [r["record"] for r in rules]
    assert len(names) == len(set(names)), "duplicate recording rule"
    for name in names:
        assert RECORD_NAME.match(name), name
        level, metric, _ops = name.split(":")
        assert metric.startswith(("llm_probe_", "llm_server_")), name
        assert not metric.endswith(("_total", "_bucket")), f"{name}: strip _total/_bucket from the metric part"


def test_recording_rules_cover_the_contract():
    names = {r["record"] for r in _rules(RECORDING)}
    for metric, level in (
        ("llm_probe_time_to_first_token_seconds", "target_model_scenario_start"),
        ("llm_probe_time_per_output_token_seconds", "target_model_scenario"),
        ("llm_probe_request_duration_seconds", "target_model_scenario_start"),
    ):
        for q in ("p50", "p90", "p95", "p99"):
            assert f"{level}:{metric}:{q}_rate10m" in names
    assert "target_model_scenario:llm_probe_output_tokens_per_second:p50_rate10m" in names
    assert "target_model_scenario:llm_probe_prompt_tokens_per_second:p50_rate10m" in names
    assert "target_model_scenario:llm_probe_request_failures:ratio_rate10m" in names


# Bottleneck verdicts: every name the rules can give, and a promtool test group that expects
# each one to be 1 somewhere (prometheus/tests/bottleneck_test.yml).
BOTTLENECKS = {"gpu_memory_bandwidth", "gpu_compute", "cpu_offload", "host_cpu", "host_memory", "queueing", "cold_load",
               "none"}


def test_bottleneck_rules_are_named_and_each_verdict_has_a_firing_unit_test():
    rules = [r for r in _rules(BOTTLENECK) if "record" in r]
    for r in rules:
        assert RECORD_NAME.match(r["record"]), r["record"]
        assert not r["record"].split(":")[1].endswith(("_total", "_bucket")), r["record"]
    verdicts = {r["labels"]["bottleneck"] for r in rules if r["record"] == "target_model:llm_bottleneck:active"}
    assert verdicts == BOTTLENECKS
    shown = set()
    for group in _load(BOTTLENECK_TESTS)["tests"]:
        for case in group.get("promql_expr_test", []):
            for sample in case["exp_samples"]:
                m = re.search(r'bottleneck="(\w+)"', sample["labels"])
                if m and sample["value"] == 1:
                    shown.add(m.group(1))
    assert shown == BOTTLENECKS, f"no unit test where these are 1: {sorted(BOTTLENECKS - shown)}"


def test_bottleneck_rules_read_the_exporters_real_metric_names():
    """The names as NVIDIA's DCGM exporter, AMD's device metrics exporter and node_exporter export
    them (tests/exporter_samples/ holds documented output of each)."""
    text = open(BOTTLENECK, encoding="utf-8").read()
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_PROF_DRAM_ACTIVE", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED",
                 "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
                 "gpu_gfx_activity", "gpu_umc_activity", "gpu_used_vram", "gpu_power_usage", "gpu_junction_temperature",
                 "node_cpu_seconds_total", "node_pressure_cpu_waiting_seconds_total",
                 "node_pressure_memory_waiting_seconds_total", "node_memory_MemAvailable_bytes"):
        assert name in text, name


@pytest.mark.parametrize("path", [RECORDING, SLO_RULES], ids=os.path.basename)
def test_recording_rule_levels_match_their_aggregation(path):
    """The level part names exactly the labels that the outer `by (...)` keeps."""
    for rule in (r for r in _rules(path) if "record" in r):
        level = rule["record"].split(":")[0]
        expected = set(level.split("_")) - {""}
        groupings = re.findall(r"by \(([^)]*)\)", rule["expr"])
        assert groupings, rule["record"]
        for g in groupings:
            labels = {x.strip() for x in g.split(",")} - {"le"}
            assert labels == expected, f"{rule['record']}: by ({g}) does not match level {level}"


def test_every_alert_has_severity_summary_description():
    alerts = [a for path in ALERT_FILES for a in _rules(path) if "alert" in a]
    assert len(alerts) >= 11
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for a in alerts:
        assert CAMEL_CASE.match(a["alert"]), a["alert"]
        assert a.get("labels", {}).get("severity") in ("critical", "warning", "info"), a["alert"]
        ann = a.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), a["alert"]


def test_the_required_alerts_exist():
    names = {a["alert"] for path in ALERT_FILES for a in _rules(path) if "alert" in a}
    assert {
        "LLMProbeFailing", "LLMExporterDown", "OllamaServerDown", "LLMLatencyRegression",
        "LLMThroughputRegression", "OllamaRepeatedColdStarts", "OllamaServerMemoryGrowth", "LLMProbeRunsStopped",
    } <= names
    assert {a["alert"] for a in _rules(SLO_RULES) if "alert" in a} == {"LLMSLOErrorBudgetBurnFast",
                                                                       "LLMSLOErrorBudgetBurnSlow"}


def test_slo_alerts_pair_a_long_and_a_short_window_at_the_workbook_burn_rates():
    alerts = {a["alert"]: a for a in _rules(SLO_RULES) if "alert" in a}
    for name, long_w, short_w, burn, severity in (("LLMSLOErrorBudgetBurnFast", "1h", "5m", "14.4", "critical"),
                                                  ("LLMSLOErrorBudgetBurnSlow", "6h", "30m", "6", "warning")):
        expr = alerts[name]["expr"]
        assert re.search(rf"error_ratio_rate{long_w}\s", expr) and f"error_ratio_rate{short_w}[" in expr, name
        assert len(re.findall(rf">\s*{re.escape(burn)}\s", expr)) == 2, name
        assert alerts[name]["labels"]["severity"] == severity
    records = {r["record"] for r in _rules(SLO_RULES) if "record" in r}
    for w in ("5m", "30m", "1h", "6h"):
        assert f"target_model_scenario_case:llm_probe_slo_requests:error_ratio_rate{w}" in records


def test_regression_alerts_use_the_exact_statistics_not_buckets():
    """Bucket-interpolated quantiles misfire (issue 10): the regression rules compare the
    exporter's exact recent median with what is expected of it, above the published threshold,
    during an episode the exporter confirmed (issue 19: a burst of load is not a regression)."""
    for rule in _rules(REGRESSION):
        expr = rule["expr"]
        assert "_bucket" not in expr and "histogram_quantile" not in expr, rule["alert"]
        for gauge in ("llm_probe_recent_quantile", "llm_probe_regression_expected", "llm_probe_regression_threshold_ratio",
                      "llm_probe_regression_since_timestamp_seconds"):
            assert gauge in expr, (rule["alert"], gauge)


@pytest.mark.parametrize("rules_path", sorted(ALERT_FILES), ids=os.path.basename)
def test_every_alert_has_a_firing_and_a_quiet_unit_test(rules_path):
    alerts = {a["alert"] for a in _rules(rules_path) if "alert" in a}
    tests = _load(ALERT_FILES[rules_path])
    fires, quiet = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts <= fires, f"no firing test for {sorted(alerts - fires)}"
    assert alerts <= quiet, f"no must-not-fire test for {sorted(alerts - quiet)}"
    # The tests load the repository's own rule file (alerts.yml with the recording rules it uses).
    assert "../rules/" + os.path.basename(rules_path) in tests["rule_files"]


def test_prometheus_config_scrapes_the_stack_and_loads_the_rules():
    cfg = _load(PROM_CONFIG)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"ollama-perf-exporter", "prometheus", "alertmanager"} <= set(jobs)
    # Host and GPU exporters come with the override files: a target file each, never a static
    # target that would be down (up == 0) on a stack without them.
    for job in ("node-exporter", "dcgm-exporter", "amd-device-metrics-exporter"):
        assert "static_configs" not in jobs[job], job
        (files,) = [c["files"] for c in jobs[job]["file_sd_configs"]]
        assert files == [f"/etc/prometheus-targets/{job}*.yml"], job
    assert jobs["ollama-perf-exporter"]["static_configs"][0]["targets"] == ["exporter:9877"]
    assert cfg["rule_files"] == ["rules/*.yml"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # The unit tests must not be picked up as rule files.
    assert not os.path.exists(os.path.join(PROM_DIR, "rules", "alerts_test.yml"))


# ---------------------------------------------------------------- Alertmanager


def test_alertmanager_routes_on_severity():
    cfg = _load(ALERTMANAGER)
    receivers = {r["name"] for r in cfg["receivers"]}
    route = cfg["route"]
    assert route["receiver"] in receivers
    assert "target" in route["group_by"] and "alertname" in route["group_by"]
    sub = {tuple(r["matchers"]): r["receiver"] for r in route["routes"]}
    assert sub[('severity="critical"',)] == "critical" and "critical" in receivers
    for rule in cfg.get("inhibit_rules", []):
        assert rule["source_matchers"] and rule["target_matchers"] and rule["equal"]


@pytest.mark.prometheus
def test_amtool_accepts_the_config_and_routes_each_severity():
    # amtool ships in Debian's prometheus-alertmanager; the Python checks above run without it.
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool not installed (Debian package prometheus-alertmanager)")
    _run([amtool, "check-config", ALERTMANAGER])
    for labels, receiver in ((["severity=critical", "alertname=OllamaServerDown"], "critical"),
                             (["severity=warning", "alertname=LLMProbeFailing"], "default")):
        out = _run([amtool, "config", "routes", "test", "--config.file", ALERTMANAGER, *labels])
        assert out.splitlines()[0].strip() == receiver, out


@pytest.mark.parametrize("override, service, job", [
    ("compose.gpu.yml", "dcgm-exporter", "dcgm-exporter"),
    ("compose.rocm.yml", "amd-device-metrics-exporter", "amd-device-metrics-exporter"),
    ("compose.node.yml", "node-exporter", "node-exporter"),
])
def test_each_override_starts_a_pinned_exporter_and_gives_prometheus_its_target(override, service, job):
    compose = _load(os.path.join(ROOT, "docker", override))["services"]
    image = compose[service]["image"]
    tag = image.rsplit(":", 1)[1]
    assert tag and tag != "latest" and "/" not in tag, image
    mount = f"./docker/scrape/{job}.yml:/etc/prometheus-targets/{job}.yml:ro"
    assert mount in compose["prometheus"]["volumes"]
    (group,) = _load(os.path.join(ROOT, "docker", "scrape", f"{job}.yml"))
    port = group["targets"][0].rsplit(":", 1)[1]
    assert group["targets"] == [f"{service}:{port}"] and group["labels"]["target"] == "local"
