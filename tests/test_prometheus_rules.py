"""Prometheus config, recording and alerting rules, their promtool unit tests, Alertmanager routing.

The promtool/amtool tests carry the `prometheus` marker: they need promtool and amtool at the
versions docker-compose.yml pins (`make test` builds them with scripts/install-prometheus.sh and
puts them first on PATH; `make test-fast` leaves them out). The pure-Python convention checks run
everywhere.
"""

import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.kit.exporters import ROOT, free_port

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
TOPOLOGY_TESTS = os.path.join(PROM_DIR, "tests", "topology_test.yml")
SLO_TWO_SITES = os.path.join(ROOT, "tests", "data", "slo_two_sites_test.yml")
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
    assert path, (f"{name} is not on PATH: `make test` builds it (scripts/install-prometheus.sh) "
                  "and puts it first on PATH")
    return path


def _run(args, timeout=120):
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


# ---------------------------------------------------------------- the versions tested


def _compose_pin(image):
    services = _load(os.path.join(ROOT, "docker-compose.yml"))["services"]
    (ref,) = {s["image"] for s in services.values() if s.get("image", "").startswith(image + ":")}
    return ref.split(":v", 1)[1]


@pytest.mark.prometheus
@pytest.mark.parametrize("tool, image", [("prometheus", "prom/prometheus"), ("promtool", "prom/prometheus"),
                                         ("alertmanager", "prom/alertmanager"), ("amtool", "prom/alertmanager")])
def test_the_tools_on_path_are_the_versions_compose_pins(tool, image):
    """The rule, scrape and routing tests speak for the stack users run only if they run its versions
    (`make test` puts scripts/install-prometheus.sh's build first on PATH, ahead of Debian's 2.x)."""
    out = _run([_tool(tool), "--version"])
    assert f"version {_compose_pin(image)} " in out, out


# ---------------------------------------------------------------- promtool


@pytest.mark.prometheus
def test_promtool_check_config():
    out = _run([_tool("promtool"), "check", "config", PROM_CONFIG])
    assert "SUCCESS" in out
    # check config also parses every rule file that rule_files matches.
    rule_file_names = ("recording.yml", "alerts.yml", "regression.yml", "slo.yml", "bottleneck.yml")
    assert all(name in out for name in rule_file_names), out


@pytest.mark.prometheus
def test_promtool_check_rules():
    out = _run([_tool("promtool"), "check", "rules", RECORDING, *ALERT_FILES])
    assert out.count("SUCCESS") == 1 + len(ALERT_FILES), out


@pytest.mark.prometheus
@pytest.mark.parametrize("tests", sorted(ALERT_FILES.values()) + [TOPOLOGY_TESTS], ids=os.path.basename)
def test_promtool_unit_tests_pass(tests):
    out = _run([_tool("promtool"), "test", "rules", tests], timeout=300)
    assert "SUCCESS" in out and "FAILED" not in out, out


# The labels that identify a scrape, not a place: every aggregation drops them (`without`), and
# keeps everything else, so `site`, `cluster` and any external label survive.
SCRAPE_LABELS = ("instance", "job", "pod", "namespace", "service", "endpoint", "container")
SCRAPE_WITHOUT = ", ".join(SCRAPE_LABELS)
# slo.yml is being rewritten elsewhere: until it aggregates `without`, this is the change it needs.
SLO_BY_TO_WITHOUT = {
    "sum by (target, model, scenario, case)": f"sum without ({SCRAPE_WITHOUT}, concurrency)",
    "max by (target, model, scenario, case)": f"max without ({SCRAPE_WITHOUT}, concurrency)",
}


@pytest.mark.prometheus
def test_two_sites_with_the_same_target_name_page_apart(tmp_path):
    """Site b at 20 % bad requests (burn 20) pages with its site; site a (0 %) does not. Rules that
    aggregate `by (target, ...)` merge the two to 10 % and miss the page (issue 21)."""
    text = open(SLO_RULES, encoding="utf-8").read()
    patched = text
    for old, new in SLO_BY_TO_WITHOUT.items():
        patched = patched.replace(old, new)
    shutil.copy(SLO_TWO_SITES, tmp_path / "two_sites_test.yml")
    promtool = _tool("promtool")

    def run(rules):
        (tmp_path / "slo.yml").write_text(rules, encoding="utf-8")
        return subprocess.run([promtool, "test", "rules", "two_sites_test.yml"], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)

    res = run(patched)
    assert res.returncode == 0, f"slo.yml with `without` misses site b's page:\n{res.stdout}{res.stderr}"
    if patched != text:
        # The test can fail: slo.yml as it is (by) merges the sites and misses the page.
        res = run(text)
        assert res.returncode != 0 and "9.999999999999998E-02" in res.stdout + res.stderr, res.stdout + res.stderr


@pytest.mark.parametrize("path", [RECORDING, ALERTS, BOTTLENECK, SLO_RULES], ids=os.path.basename)
def test_rules_keep_topology_labels(path):
    """No `by (...)` over our own series (it would drop site/cluster); every `without` drops the
    scrape labels. The host/GPU evidence in bottleneck.yml keeps `target, site, cluster` by name,
    because third-party exporters carry labels of their own."""
    for rule in _rules(path):
        expr = rule["expr"]
        for g in re.findall(r"\bby \(([^)]*)\)", expr):
            assert path == BOTTLENECK and g == "target, site, cluster", f"{rule.get('record') or rule.get('alert')}: by ({g})"
        for g in re.findall(r"\bon \(([^)]*)\)", expr):
            assert g == "target, site, cluster", f"{rule.get('record') or rule.get('alert')}: on ({g})"
        for g in re.findall(r"\b(?:without|ignoring) \(([^)]*)\)", expr):
            labels = [x.strip() for x in g.split(",")]
            if labels in (["bottleneck"], ["quantile"]):
                continue
            assert labels[:len(SCRAPE_LABELS)] == list(SCRAPE_LABELS), f"{rule.get('record') or rule.get('alert')}: {g}"
            assert not {"site", "cluster", "target"} & set(labels), g


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
    assert "target_model_scenario:llm_probe_request_failures:ratio_rate10m" in names
    assert "target_model_scenario:llm_probe_requests:rate10m" in names
    assert "target_model:llm_probe_cold_starts:increase1h" in names


HISTOGRAMS = ("time_to_first_token_seconds", "inter_token_latency_seconds", "time_per_output_token_seconds",
              "request_duration_seconds", "output_tokens_per_second", "prompt_tokens_per_second",
              "load_duration_seconds", "prompt_eval_duration_seconds", "eval_duration_seconds",
              "queue_duration_seconds")
CLASSIC_PART = re.compile(r"\b(llm_probe_(?:" + "|".join(HISTOGRAMS) + r"))_(sum|count|bucket)\b")


def _histogram_reads(expr):
    """Every classic _sum/_count/_bucket series an expression reads, with whether the same
    expression also reads that histogram's native form through histogram_sum()/histogram_count()."""
    return [(m.group(0), f"histogram_{m.group(2)}(" in expr and re.search(rf"\b{m.group(1)}\{{|\b{m.group(1)}\[", expr)
             is not None) for m in CLASSIC_PART.finditer(expr)]


def _every_query():
    for path in glob.glob(os.path.join(PROM_DIR, "rules", "*.yml")):
        for rule in _rules(path):
            yield f"{os.path.basename(path)}: {rule.get('record') or rule.get('alert')}", rule["expr"]
    for path in glob.glob(os.path.join(ROOT, "grafana", "dashboards", "*.json")):
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r'"expr": ("(?:[^"\\]|\\.)*")', text):
            yield os.path.basename(path), json.loads(m.group(1))


def test_no_rule_or_panel_interpolates_bucket_quantiles():
    """Quantiles inside buckets are artefacts of the bucket edges for a prober's few requests a
    minute; and with prometheus.yml's convert_classic_histograms_to_nhcb no _bucket series is stored."""
    for where, expr in _every_query():
        assert "histogram_quantile" not in expr and "_bucket" not in expr, (where, expr)


def test_histograms_are_read_in_both_storage_forms():
    """prometheus.yml stores histograms as native histograms with custom buckets, which have no
    _sum/_count series; a Prometheus 2, a remote-write receiver or a scrape without the conversion
    has only those. Each read of a classic part has its native twin in the same expression."""
    reads = 0
    for where, expr in _every_query():
        for series, native_too in _histogram_reads(expr):
            reads += 1
            assert native_too, f"{where}: {series} without histogram_sum/_count of the native form:\n{expr}"
    assert reads >= 20  # bottleneck.yml's shares, the cold starts, the dashboards' means


def test_prometheus_stores_the_exporters_histograms_as_native_histograms():
    (job,) = [j for j in _load(PROM_CONFIG)["scrape_configs"] if j["job_name"] == "ollama-perf-exporter"]
    assert job.get("convert_classic_histograms_to_nhcb") is True
    assert not job.get("always_scrape_classic_histograms")


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


# The labels of the exporter's series that the recording rules aggregate (exporter/metrics.py).
PROBE_LABELS = {"target", "scenario", "model", "case", "concurrency"}
SERIES_LABELS = {
    "llm_probe_time_to_first_token_seconds": PROBE_LABELS | {"start", "le"},
    "llm_probe_request_duration_seconds": PROBE_LABELS | {"start", "le"},
    "llm_probe_requests_total": PROBE_LABELS,
    "llm_probe_request_failures_total": PROBE_LABELS | {"reason"},
    "llm_probe_slo_requests_total": PROBE_LABELS,
    "llm_probe_slo_good_requests_total": PROBE_LABELS,
    "llm_probe_slo_objective_ratio": PROBE_LABELS - {"concurrency"},
    "llm_server_process_resident_memory_bytes": {"target"},
    "llm_server_model_loaded_bytes": {"target", "model"},
}


@pytest.mark.parametrize("path", [RECORDING, SLO_RULES], ids=os.path.basename)
def test_recording_rule_levels_match_their_aggregation(path):
    """The level part names exactly the labels the aggregation keeps (besides topology): the
    `by (...)` list, or the series' labels minus the `without (...)` list."""
    for rule in (r for r in _rules(path) if "record" in r):
        level = rule["record"].split(":")[0]
        expected = set(level.split("_")) - {""}
        groupings = re.findall(r"\b(by|without) \(([^)]*)\) \(\s*(?:histogram_(?:count|sum)\()?(?:rate\(|increase\()?(\w+)",
                               rule["expr"])
        assert groupings, rule["record"]
        for kind, g, metric in groupings:
            labels = {x.strip() for x in g.split(",")} - {"le"}
            if kind == "without":
                name = re.sub(r"_(bucket|count|sum)$", "", metric)
                base = SERIES_LABELS.get(name, PROBE_LABELS | {"start", "le"} if name.startswith("llm_probe_") else None)
                assert base is not None, f"{rule['record']}: labels of {metric} unknown to this test"
                labels = base - labels - {"le"}
            assert labels == expected, f"{rule['record']}: {kind} ({g}) does not match level {level}"


def test_every_alert_has_severity_summary_description():
    alerts = [a for path in ALERT_FILES for a in _rules(path) if "alert" in a]
    assert len(alerts) >= 11
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for a in alerts:
        assert CAMEL_CASE.match(a["alert"]), a["alert"]
        # `none`: the Watchdog, which fires always and pages nobody (kube-prometheus's convention).
        allowed = ("none",) if a["alert"] == "LLMWatchdog" else ("critical", "warning", "info")
        assert a.get("labels", {}).get("severity") in allowed, a["alert"]
        ann = a.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), a["alert"]


RUNBOOKS = os.path.join(ROOT, "docs", "runbooks")
ALL_RULE_FILES = sorted(glob.glob(os.path.join(PROM_DIR, "rules", "*.yml")))
# Rewritten elsewhere while this test was written: their alerts get runbook_url when they land.
NOT_YET_OURS: set[str] = set()


def _all_alerts():
    return [(os.path.basename(path), a) for path in ALL_RULE_FILES for a in _rules(path) if "alert" in a]


def _runbook_params():
    out = []
    for name, a in _all_alerts():
        marks = ()
        if name in NOT_YET_OURS and "runbook_url" not in a.get("annotations", {}):
            marks = pytest.mark.xfail(strict=True, reason=f"{name} has no runbook_url for {a['alert']} yet: add "
                                      f"`runbook_url: docs/runbooks/{a['alert']}.md` (the page exists)")
        out.append(pytest.param(name, a, id=f"{name}::{a['alert']}", marks=marks))
    return out


@pytest.mark.parametrize("rule_file, alert", _runbook_params())
def test_every_alert_links_a_runbook_that_exists(rule_file, alert):
    """One test per alert of every rule file, so the report names each alert without a runbook.
    The link's last part names the page: docs/runbooks/<page>.md (the chart may prefix it)."""
    url = alert.get("annotations", {}).get("runbook_url")
    assert url, f"{rule_file}: {alert['alert']} has no runbook_url annotation"
    page = url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".md")
    assert page == alert["alert"], f"{alert['alert']}: runbook_url {url} names another page"
    path = os.path.join(RUNBOOKS, page + ".md")
    assert os.path.isfile(path), f"{alert['alert']}: {path} does not exist"


def test_every_runbook_page_says_what_to_check_and_fix_on_compose_and_kubernetes():
    names = {a["alert"] for _, a in _all_alerts()}
    pages = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(RUNBOOKS, "*.md"))} - {"README", "index"}
    assert names <= pages, f"no runbook page for {sorted(names - pages)}"
    assert pages <= names, f"runbook pages for alerts that do not exist: {sorted(pages - names)}"
    for page in pages:
        text = open(os.path.join(RUNBOOKS, page + ".md"), encoding="utf-8").read()
        assert text.startswith(f"# {page}\n"), page
        for heading in ("## What it means", "## First checks", "## Fix: compose", "## Fix: Kubernetes"):
            assert heading in text, f"{page}: no {heading!r} section"
        assert "kubectl" in text and "docker compose" in text, page


def test_alert_text_does_not_assume_docker():
    """The same rules run in Kubernetes (PrometheusRule) and under other setups: commands for one
    of them belong in the runbook, not in the alert."""
    for name, a in _all_alerts():
        for key, text in a.get("annotations", {}).items():
            assert "docker" not in text.lower() and "kubectl" not in text.lower(), f"{name}: {a['alert']} {key}"


def test_the_required_alerts_exist():
    names = {a["alert"] for path in ALERT_FILES for a in _rules(path) if "alert" in a}
    assert {
        "LLMProbeFailing", "LLMExporterDown", "OllamaServerDown", "LLMLatencyRegression",
        "LLMThroughputRegression", "OllamaRepeatedColdStarts", "OllamaServerMemoryGrowth", "LLMProbeRunsStopped",
        "LLMExporterAbsent", "LLMWatchdog", "LLMAnswerChanged",
    } <= names
    assert {a["alert"] for a in _rules(SLO_RULES) if "alert" in a} == {name for name, *_ in SLO_TIERS}


# The four rows of the SRE workbook's multiwindow, multi-burn-rate table: two pages, two tickets.
SLO_TIERS = (("LLMSLOErrorBudgetBurnFast", "1h", "5m", "14.4", "critical"),
             ("LLMSLOErrorBudgetBurnSlow", "6h", "30m", "6", "critical"),
             ("LLMSLOErrorBudgetBurnDaily", "1d", "2h", "3", "warning"),
             ("LLMSLOErrorBudgetBurnSteady", "3d", "6h", "1", "warning"))


def test_slo_alerts_pair_a_long_and_a_short_window_at_the_workbook_burn_rates():
    alerts = {a["alert"]: a for a in _rules(SLO_RULES) if "alert" in a}
    for name, long_w, short_w, burn, severity in SLO_TIERS:
        expr = alerts[name]["expr"]
        assert re.search(rf"error_ratio_rate{long_w}\s", expr), name
        # The short window is its latest value within the long one: the most recent runs of a
        # schedule rarer than the short window.
        assert f"error_ratio_rate{short_w}[{long_w}])" in expr, name
        assert len(re.findall(rf">\s*{re.escape(burn)}\s", expr)) == 2, name
        assert alerts[name]["labels"]["severity"] == severity
    records = {r["record"] for r in _rules(SLO_RULES) if "record" in r}
    for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
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
    # The Watchdog fires always, by design: it has no quiet case.
    assert alerts - {"LLMWatchdog"} <= quiet, f"no must-not-fire test for {sorted(alerts - quiet - {'LLMWatchdog'})}"
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
    # The Watchdog goes to its own receiver (a dead man's switch), ahead of the severity routes.
    first = cfg["route"]["routes"][0]
    assert first["matchers"] == ['alertname="LLMWatchdog"'] and first["receiver"] == "watchdog"
    receivers = {r["name"] for r in cfg["receivers"]}
    route = cfg["route"]
    assert route["receiver"] in receivers
    assert "target" in route["group_by"] and "alertname" in route["group_by"]
    assert {"cluster", "site"} <= set(route["group_by"]), "two sites' `local` would be one group"
    sub = {tuple(r["matchers"]): r["receiver"] for r in route["routes"]}
    assert sub[('severity="critical"',)] == "critical" and "critical" in receivers
    for rule in cfg.get("inhibit_rules", []):
        assert rule["source_matchers"] and rule["target_matchers"] and rule["equal"]


@pytest.mark.prometheus
def test_amtool_accepts_the_config_and_routes_each_severity():
    amtool = _tool("amtool")
    _run([amtool, "check-config", ALERTMANAGER])
    for labels, receiver in ((["severity=critical", "alertname=OllamaServerDown"], "critical"),
                             (["severity=warning", "alertname=LLMProbeFailing"], "default"),
                             (["severity=none", "alertname=LLMWatchdog"], "watchdog")):
        out = _run([amtool, "config", "routes", "test", "--config.file", ALERTMANAGER, *labels])
        assert out.splitlines()[0].strip() == receiver, out


def test_dcgm_collects_and_is_scraped_often_enough_for_probe_bursts():
    """dcgm-exporter's default collection (30 s) sees a burst of a few seconds by luck: it collects
    every second and Prometheus scrapes it every 5 s, and the rules take the busiest raw sample."""
    dcgm = _load(os.path.join(ROOT, "docker", "compose.gpu.yml"))["services"]["dcgm-exporter"]
    args = dcgm["command"]
    assert int(args[args.index("-c") + 1]) <= 1000, args
    for cfg in (_load(PROM_CONFIG), _load(os.path.join(PROM_DIR, "agent.yml"))):
        (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "dcgm-exporter"]
        assert job["scrape_interval"] == "5s", job
    rules = {r["record"]: r["expr"] for r in _rules(BOTTLENECK) if "record" in r}
    assert "max_over_time(DCGM_FI_DEV_GPU_UTIL" in rules["target:gpu_utilisation:ratio_max5m"]


def test_rate_windows_hold_four_scrapes_at_kube_prometheus_stacks_30s():
    for path in (RECORDING, ALERTS, BOTTLENECK):
        for rule in _rules(path):
            for window in re.findall(r"\b(?:rate|increase|irate)\([^\[]*\[(\d+)([smhd])\]", rule["expr"]):
                seconds = int(window[0]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[window[1]]
                assert seconds >= 4 * 30, f"{rule.get('record') or rule.get('alert')}: [{window[0]}{window[1]}]"


def test_bottleneck_rules_select_their_exporters_by_job():
    """Under kube-prometheus-stack other jobs export node_* and DCGM_* too (kubelet, cadvisor, a
    second node exporter): every host and GPU series the rules read names its job."""
    seen = set()
    for rule in _rules(BOTTLENECK):
        for name, selector in re.findall(r"(?<![\w:])((?:node|DCGM|gpu)_[A-Za-z_]+)(?![\w:])(\{[^}]*\})?", rule["expr"]):
            seen.add(name)
            assert "job=" in selector, f"{rule.get('record') or rule.get('alert')}: {name} without a job selector"
    assert {"node_cpu_seconds_total", "DCGM_FI_DEV_GPU_UTIL", "gpu_gfx_activity"} <= seen


def test_agent_forwards_host_and_gpu_series_with_the_target_label():
    """The central bottleneck rules need node and DCGM series: the agent scrapes the same jobs,
    labelled with the same `target` as prometheus.yml's target files."""
    agent = {j["job_name"]: j for j in _load(os.path.join(PROM_DIR, "agent.yml"))["scrape_configs"]}
    for job in ("node-exporter", "dcgm-exporter", "amd-device-metrics-exporter"):
        (group,) = _load(os.path.join(ROOT, "docker", "scrape", f"{job}.yml"))
        host, port = group["targets"][0].rsplit(":", 1)
        (sd,) = agent[job]["dns_sd_configs"]
        assert sd["names"] == [host] and sd["port"] == int(port), job
        relabel = {r["target_label"]: r["replacement"] for r in agent[job]["relabel_configs"]}
        assert relabel == {"target": group["labels"]["target"]}, job


@pytest.mark.prometheus
def test_promtool_accepts_the_agent_config(tmp_path):
    text = open(os.path.join(PROM_DIR, "agent.yml"), encoding="utf-8").read()
    text = text.replace("@REMOTE_WRITE_URL@", "http://receiver:9090/api/v1/write").replace("@SITE@", "lab-1")
    (tmp_path / "agent.yml").write_text(text)
    out = _run([_tool("promtool"), "check", "config", "--agent", str(tmp_path / "agent.yml")])
    assert "SUCCESS" in out


@pytest.mark.parametrize("compose_file, service, job", [
    ("docker/compose.gpu.yml", "dcgm-exporter", "dcgm-exporter"),
    ("docker/compose.rocm.yml", "amd-device-metrics-exporter", "amd-device-metrics-exporter"),
    ("docker-compose.yml", "node-exporter", "node-exporter"),  # in the base stack, no override needed
])
def test_each_exporter_is_pinned_and_gives_prometheus_its_target(compose_file, service, job):
    compose = _load(os.path.join(ROOT, compose_file))["services"]
    image = compose[service]["image"]
    tag = image.rsplit(":", 1)[1]
    assert tag and tag != "latest" and "/" not in tag, image
    mount = f"./docker/scrape/{job}.yml:/etc/prometheus-targets/{job}.yml:ro"
    assert mount in compose["prometheus"]["volumes"]
    (group,) = _load(os.path.join(ROOT, "docker", "scrape", f"{job}.yml"))
    port = group["targets"][0].rsplit(":", 1)[1]
    assert group["targets"] == [f"{service}:{port}"] and group["labels"]["target"] == "local"


# ---------------------------------------------------------------- two sites in a real Prometheus


def _site_exporter(bad_share):
    """An HTTP server whose /metrics is what an exporter probing target `local` at 5 requests a
    second would show after t seconds, `bad_share` of them failed (and missing the SLO)."""
    import http.server
    import threading
    import time as _time

    start = _time.monotonic()
    labels = 'target="local",scenario="default",model="m",case="short",concurrency="1"'

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            t = _time.monotonic() - start
            n, bad = 5 * t, 5 * t * bad_share
            body = (f"llm_probe_requests_total{{{labels}}} {n}\n"
                    f'llm_probe_request_failures_total{{{labels},reason="timeout"}} {bad}\n'
                    f"llm_probe_slo_requests_total{{{labels}}} {n}\n"
                    f"llm_probe_slo_good_requests_total{{{labels}}} {n - bad}\n"
                    f'llm_probe_slo_objective_ratio{{target="local",scenario="default",model="m",case="short"}} 0.99\n')
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.prometheus
def test_two_sites_stay_apart_in_a_real_prometheus(tmp_path):
    """The promtool tests above, in a real Prometheus: two scrape targets, both probing a server
    named `local`, labelled site a (no failures) and site b (20 %). The recording rules keep
    them apart, and the SLO page (slo.yml with the `without` change) goes pending for site b
    only; the Watchdog fires, LLMExporterAbsent does not."""
    import requests

    from tests.kit.exporters import stop_process, wait_for

    prometheus = _tool("prometheus")
    servers = {"a": _site_exporter(0.0), "b": _site_exporter(0.2)}
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in (RECORDING, ALERTS):
        shutil.copy(path, rules)
    slo = open(SLO_RULES, encoding="utf-8").read()
    for old, new in SLO_BY_TO_WITHOUT.items():
        slo = slo.replace(old, new)
    (rules / "slo.yml").write_text(slo, encoding="utf-8")
    port = free_port()
    cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
           "rule_files": [str(rules / "*.yml")],
           "scrape_configs": [{"job_name": "ollama-perf-exporter", "static_configs": [
               {"targets": [f"127.0.0.1:{s.server_address[1]}"], "labels": {"site": site}} for site, s in servers.items()]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    base = f"http://127.0.0.1:{port}"

    def query(q):
        try:
            body = requests.get(base + "/api/v1/query", params={"query": q}, timeout=5).json()
        except requests.RequestException:
            return None
        assert body["status"] == "success", (q, body)
        return {r["metric"].get("site"): round(float(r["value"][1]), 3) for r in body["data"]["result"]}

    try:
        want = {"a": 0.0, "b": 0.2}
        for record in ("target_model_scenario:llm_probe_request_failures:ratio_rate10m",
                       "target_model_scenario_case:llm_probe_slo_requests:error_ratio_rate1h"):
            wait_for(lambda record=record: query(record) == want, timeout=60, interval=1,
                     what=f"{record} per site: {want}")
        pending = 'ALERTS{alertname="LLMSLOErrorBudgetBurnFast"}'
        wait_for(lambda: query(pending) == {"b": 1.0}, timeout=30, interval=1, what="site b's page, and only b's")
        assert query('ALERTS{alertname="LLMWatchdog", alertstate="firing"}') == {None: 1.0}
        assert query('ALERTS{alertname="LLMExporterAbsent"}') == {}
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- prometheus.log\n" + (tmp_path / "prometheus.log").read_text()[-3000:]) from None
    finally:
        stop_process(proc)
        for s in servers.values():
            s.shutdown()
