"""Grafana dashboards, checked without Grafana.

1. Structure: fixed uid and title, the $datasource/$target/$model/$scenario variables, the
   datasource variable on every panel and query, units and descriptions, unique panel ids,
   no overlapping grid positions, no undefined variable in any query.
2. Data (marker `prometheus`): a real Prometheus on a free loopback port, loaded with the
   repository's own rule files and a scrape config derived from prometheus/prometheus.yml,
   scrapes a real exporter process that probes a fake Ollama (a subprocess, so that its
   process tree is measured too). Then every panel query, every variable query and every
   recording rule runs through Prometheus' HTTP API, and each must return data.
"""

import ctypes
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import requests
import yaml

from tests.kit.exporters import ROOT, free_port, stop_process, wait_for
from tests.kit.host_exporters import SampleMetricsServer, node_exporter_binary, node_exporter_command

DASH_DIR = os.path.join(ROOT, "grafana", "dashboards")
PROVISIONING = os.path.join(ROOT, "grafana", "provisioning")
EXPECTED = {
    "overview.json": ("ollama-perf-overview", "Ollama performance: Overview"),
    "experiments.json": ("ollama-perf-experiments", "Ollama performance: Experiments"),
    "bottlenecks.json": ("ollama-perf-bottlenecks", "Ollama performance: Bottlenecks"),
}
DS_UIDS = {"${datasource}", "$datasource"}
QUERYLESS = {"row", "alertlist", "text"}
# Grafana's own variables that a query may use, and what the data test puts in their place.
GLOBALS = {"__rate_interval": "15s", "__interval": "15s", "__range": "5m"}
# A variable starts with a letter or _: `$1` in label_replace is a regex group, not a variable.
VAR_RE = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]")


def _load(name):
    with open(os.path.join(DASH_DIR, name), encoding="utf-8") as f:
        return json.load(f)


def _dashboards():
    return {name: _load(name) for name in sorted(EXPECTED)}


def _panels(dash):
    """Every panel, including those nested in collapsed rows."""
    for p in dash["panels"]:
        yield p
        for inner in p.get("panels", []) or []:
            yield inner


def _variables(dash):
    return {v["name"]: v for v in dash["templating"]["list"]}


# ---------------------------------------------------------------- structure


def test_dashboard_files_are_exactly_the_three():
    assert sorted(os.listdir(DASH_DIR)) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_uid_title_and_variables(name):
    dash = _load(name)
    uid, title = EXPECTED[name]
    assert dash["uid"] == uid and dash["title"] == title
    assert dash.get("id") is None, "a provisioned dashboard must not carry a database id"
    assert dash.get("description")
    assert "ollama-perf" in dash["tags"]
    vars_ = _variables(dash)
    ds = vars_["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert ds["current"]["value"] == "prometheus"  # the provisioned uid
    names = [v["name"] for v in dash["templating"]["list"]]
    # Topology first: a fleet picks its cluster and site, then a target there.
    assert names.index("cluster") < names.index("site") < names.index("target"), names
    for var in ("cluster", "site", "target", "model", "scenario"):
        v = vars_[var]
        assert v["type"] == "query" and v["datasource"]["uid"] in DS_UIDS, var
        assert v["includeAll"] and v["multi"] and v["allValue"] == ".*", var
        assert "label_values(" in v["definition"], var


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_panel_has_datasource_unit_and_description(name):
    dash = _load(name)
    panels = [p for p in _panels(dash) if p["type"] != "row"]
    assert len(panels) >= 8
    for p in panels:
        where = f"{name}: panel {p.get('id')} {p.get('title')!r}"
        assert p.get("title") and p.get("description"), where
        assert p.get("datasource", {}).get("uid") in DS_UIDS, where
        if p["type"] in QUERYLESS:
            continue
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert p["targets"], f"{where}: no query"
        for t in p["targets"]:
            assert t.get("datasource", {}).get("uid") in DS_UIDS, f"{where}: target {t.get('refId')}"
            assert t.get("expr"), where
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), where
        for o in p["fieldConfig"].get("overrides", []):
            if any(prop["id"] == "custom.axisPlacement" for prop in o["properties"]):
                assert any(prop["id"] == "unit" for prop in o["properties"]), f"{where}: second axis without unit"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panel_ids_unique_and_grid_positions_do_not_overlap(name):
    dash = _load(name)
    panels = list(_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {name}"
    boxes = []
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        boxes.append((p["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (ta, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for tb, bx0, by0, bx1, by1 in boxes[i + 1:]:
            overlap = ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1
            assert not overlap, f"{name}: {ta!r} overlaps {tb!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_queries_use_only_defined_variables(name):
    dash = _load(name)
    defined = set(_variables(dash)) | set(GLOBALS)
    for expr in _all_query_strings(dash):
        for m in VAR_RE.finditer(expr):
            var = m.group(1) or m.group(2) or m.group(3)
            assert var in defined, f"{name}: ${var} in {expr!r}"
        assert "[[" not in expr, "deprecated [[var]] syntax"


# Exporter-wide series labelled by scenario only (the regression settings in force).
PER_SCENARIO = ("llm_probe_regression_setting_seconds",)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_probe_queries_filter_on_the_dashboard_variables(name):
    """A probe-metric query that ignores $target/$model/$scenario would show other servers' data."""
    for p in _panels(_load(name)):
        for t in p.get("targets", []):
            for metric in re.findall(r"\b(llm_probe_\w+|\w+:llm_probe_\w+:\w+)\{([^}]*)\}", t["expr"]):
                selector = metric[1]
                if metric[0] in PER_SCENARIO:
                    # Per scenario, no target: only joined on scenario with the selected targets' runs.
                    assert 'scenario=~"$scenario"' in selector and "on (scenario)" in t["expr"], t["expr"]
                    continue
                assert 'target=~"$target"' in selector, f"{p['title']}: {t['expr']}"
                # Optional topology: `.*` (All) also matches a single-site stack without the labels.
                assert 'site=~"$site"' in selector and 'cluster=~"$cluster"' in selector, f"{p['title']}: {t['expr']}"
                if not metric[0].startswith(("llm_probe_success", "llm_probe_last_run", "llm_probe_run_duration",
                                             "llm_probe_skipped_runs")):  # run-level: no model label
                    assert 'model=~"$model"' in selector, f"{p['title']}: {t['expr']}"


def test_percentiles_are_exact_statistics_not_bucket_interpolations():
    for name, dash in _dashboards().items():
        for p in _panels(dash):
            for t in p.get("targets", []):
                assert "histogram_quantile" not in t["expr"], f"{name}: {p['title']}"
                assert not re.search(r":p\d\d_rate10m", t["expr"]), f"{name}: {p['title']} reads a bucket quantile rule"
    overview = " ".join(t["expr"] for p in _panels(_load("overview.json")) for t in p.get("targets", []))
    for q in ("0.5", "0.9", "0.95", "0.99"):
        assert f'quantile="{q}"' in overview
    for metric in ("llm_probe_recent_quantile", "llm_probe_baseline_median", "llm_probe_regression_expected",
                   "llm_probe_regression_threshold_ratio",
                   "llm_probe_slo_good_requests_total", "llm_probe_slo_requests_total"):
        assert metric in overview, metric


def test_comparison_panels_never_merge_scenarios():
    """`short` of one scenario is not `short` of another: every aggregation keeps scenario and case."""
    for p in _panels(_load("experiments.json")):
        for t in p.get("targets", []):
            for grouping in re.findall(r"\bby \(([^)]*)\)", t["expr"]):
                labels = {x.strip() for x in grouping.split(",")}
                assert {"scenario", "case"} <= labels, f"{p['title']}: by ({grouping})"
            assert "{{scenario}}" in t["legendFormat"] and "{{case}}" in t["legendFormat"], p["title"]


def test_bar_charts_count_one_window_per_bar():
    bars = 0
    for name, dash in _dashboards().items():
        for p in _panels(dash):
            if p.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("drawStyle") != "bars":
                continue
            bars += 1
            assert p.get("interval") == "$window", f"{name}: {p['title']}"
            for t in p["targets"]:
                assert "[$__interval]" in t["expr"] and "[$window]" not in t["expr"], f"{name}: {p['title']}"
    assert bars >= 3


def test_numeric_bars_sort_as_numbers():
    titles = {"Time to first token by case (warm, p50)": "prompt_repeat",
              "Prompt tokens per request by case": "prompt_repeat",
              "Aggregate throughput vs concurrency": "concurrency"}
    panels = {p["title"]: p for p in _panels(_load("experiments.json"))}
    for title, field in titles.items():
        steps = {t["id"]: t["options"] for t in panels[title]["transformations"]}
        assert steps["convertFieldType"]["conversions"] == [{"targetField": field, "destinationType": "number"}]
        assert steps["sortBy"]["sort"][0]["field"] == field


def test_phase_stacks_are_per_target_and_one_window_per_panel():
    panels = {p["title"]: p for p in _panels(_load("bottlenecks.json"))}
    for title in ("Mean time per request by phase on $target", "Share of end-to-end latency by phase on $target"):
        assert panels[title]["repeat"] == "target"
    cpu = panels["Server CPU vs decode throughput"]
    assert all("[$window]" in t["expr"] and "$__rate_interval" not in t["expr"] for t in cpu["targets"])


def test_dashboards_are_read_only_like_their_provisioning():
    with open(os.path.join(PROVISIONING, "dashboards", "dashboards.yml"), encoding="utf-8") as f:
        provider = yaml.safe_load(f)["providers"][0]
    for name, dash in _dashboards().items():
        assert dash["editable"] is provider["allowUiUpdates"], f"{name}: editable but cannot be saved, or the reverse"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_aggregations_keep_sites_apart(name):
    """A panel that sums `by (target, ...)` with All sites selected would add two sites' `local`."""
    for p in _panels(_load(name)):
        for t in p.get("targets", []):
            for g in re.findall(r"\bby \(([^)]*)\)", t["expr"]):
                if "target" in g:
                    assert g.startswith("cluster, site, "), f"{p['title']}: by ({g})"


def _alert_scoped(selector):
    return all(m in selector for m in ('alertname=~"(LLM|Ollama).+"', 'alertname!="LLMWatchdog"', 'target=~"$target"',
                                       'site=~"$site"', 'cluster=~"$cluster"'))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_alert_panels_and_annotations_show_only_this_projects_alerts(name):
    """Under kube-prometheus-stack the Watchdog and every other app's alerts share ALERTS: unscoped,
    the stat never reads 0 and the annotations band every graph (review of 2026-12-07, defect 4)."""
    dash = _load(name)
    for a in dash["annotations"]["list"]:
        if "ALERTS" in a.get("expr", ""):
            assert _alert_scoped(a["expr"]), a["expr"]
    for p in _panels(dash):
        for t in p.get("targets", []):
            if "ALERTS" in t["expr"]:
                assert _alert_scoped(t["expr"]), f"{p['title']}: {t['expr']}"
        if p["type"] == "alertlist":
            assert _alert_scoped(p["options"]["alertInstanceLabelFilter"]), p["title"]


def test_every_dashboard_shows_alerts():
    for name, dash in _dashboards().items():
        assert any(p["type"] == "alertlist" for p in _panels(dash)), f"{name}: no alert list"
        annotations = [a for a in dash["annotations"]["list"] if "ALERTS" in a.get("expr", "")]
        assert annotations and annotations[0]["datasource"]["uid"] in DS_UIDS, name


def test_dashboards_cover_the_issue():
    titles = {name: " | ".join(p["title"] for p in _panels(d)).lower() for name, d in _dashboards().items()}
    for word in ("time to first token", "time per output token", "end-to-end", "decode", "prefill",
                 "failures by reason",
                 "probe success", "cold vs warm"):
        assert word in titles["overview.json"], word
    for word in ("by case", "temperature", "concurrency"):
        assert word in titles["experiments.json"], word
    for word in ("share of end-to-end latency", "cpu", "memory", "loaded model", "vram", "cold starts",
                 "bottleneck now", "gpu utilisation", "memory bandwidth", "decode and prefill speed", "gpu power",
                 "gpu temperature", "clock throttling", "tokens per joule", "host cpu busy and pressure"):
        assert word in titles["bottlenecks.json"], word


def test_bottlenecks_dashboard_opens_with_the_verdict():
    panels = [p for p in _load("bottlenecks.json")["panels"] if p["type"] not in ("row", "alertlist")]
    first = panels[0]
    assert first["title"] == "Bottleneck now" and first["gridPos"]["y"] <= 5
    assert first["targets"][0]["expr"].startswith("target_model:llm_bottleneck:active{")
    assert first["targets"][0]["instant"]


# Series that only some setups have, and what a panel reading them must say when they are absent.
OPTIONAL_SOURCES = {
    "GPU exporter": (re.compile(r"target:gpu_|per_joule"), ("docker/compose.gpu.yml", "docker/compose.rocm.yml")),
    "node_exporter": (re.compile(r"target:node_"), ("node_exporter",)),
    "process metrics": (re.compile(r"llm_server_process|llm_server_processes"), ("process_match: null",)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_that_can_be_empty_say_why(name):
    """A panel fed only by series a setup may lack (no GPU exporter, no node_exporter, a remote
    server) shows a reason in place of Grafana's bare "No data", and its description says when."""
    checked = 0
    for panel in _panels(_load(name)):
        exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
        for source, (pattern, words) in OPTIONAL_SOURCES.items():
            if not exprs or not pattern.search(exprs):
                continue
            # Only panels where every query depends on the optional source can be blank for it.
            if not all(pattern.search(t.get("expr", "")) for t in panel["targets"] if t.get("expr")):
                continue
            checked += 1
            no_value = panel.get("fieldConfig", {}).get("defaults", {}).get("noValue", "")
            assert any(w in no_value for w in words), f"{name}: {panel['title']!r}: noValue {no_value!r} ({source})"
            assert "Empty" in panel.get("description", ""), f"{name}: {panel['title']!r}: description says not when"
    if name == "bottlenecks.json":
        assert checked >= 8  # 6 GPU panels, 2 host panels and the process panels


def test_provisioning_points_at_the_dashboards_and_a_fixed_datasource_uid():
    with open(os.path.join(PROVISIONING, "datasources", "datasources.yml"), encoding="utf-8") as f:
        ds = yaml.safe_load(f)["datasources"]
    prom = next(d for d in ds if d["type"] == "prometheus")
    assert prom["uid"] == "prometheus" and prom["url"] == "http://prometheus:9090" and prom["isDefault"]
    am = next(d for d in ds if d["type"] == "alertmanager")
    assert prom["jsonData"]["alertmanagerUid"] == am["uid"]
    with open(os.path.join(PROVISIONING, "dashboards", "dashboards.yml"), encoding="utf-8") as f:
        provider = yaml.safe_load(f)["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml"), encoding="utf-8"))
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in compose["services"]["grafana"]["volumes"]
    # Each alert list shows the alerts of the provisioned Prometheus data source by name.
    for name, dash in _dashboards().items():
        for p in _panels(dash):
            if p["type"] == "alertlist":
                assert p["options"]["datasource"] == prom["name"], name


# ---------------------------------------------------------------- queries


def _all_query_strings(dash):
    for p in _panels(dash):
        for t in p.get("targets", []):
            yield t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            yield v["definition"]
    for a in dash["annotations"]["list"]:
        if a.get("expr"):
            yield a["expr"]


def _substitute(expr, values):
    def repl(m):
        var = m.group(1) or m.group(2) or m.group(3)
        return values[var]

    return VAR_RE.sub(repl, expr)


def _variable_values(dash, concrete=None):
    """`.*` for the query variables (what "All" sends), each interval variable's default."""
    values = dict(GLOBALS)
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            values[v["name"]] = ".*"
        elif v["type"] in ("interval", "custom"):
            values[v["name"]] = v["current"]["value"]
        elif v["type"] == "datasource":
            values[v["name"]] = "prometheus"
    values.update(concrete or {})
    return values


def _panel_queries(concrete=None, only_with=()):
    """(where, promql) for every panel query of every dashboard, variables substituted."""
    out = []
    for name, dash in _dashboards().items():
        values = _variable_values(dash, concrete)
        for p in _panels(dash):
            for t in p.get("targets", []):
                if only_with and not any(f"${v}" in t["expr"] or f"${{{v}" in t["expr"] for v in only_with):
                    continue
                out.append((f"{name} / {p['title']} / {t['refId']}", _substitute(t["expr"], values)))
    return out


def _recording_rules():
    rules = []
    for path in sorted(glob.glob(os.path.join(ROOT, "prometheus", "rules", "*.yml"))):
        with open(path, encoding="utf-8") as f:
            for group in yaml.safe_load(f)["groups"]:
                rules += [r for r in group["rules"] if "record" in r]
    return rules


def _has_data(result):
    """At least one finite sample: NaN (0/0, a quantile of nothing) is not data."""
    for series in result:
        points = series.get("values") or [series.get("value")]
        for _, value in points:
            if math.isfinite(float(value)):
                return True
    return False


# The fake Ollama runs in its own process (named by a unique token that the exporter's
# process_match finds) and drops its loaded models every few seconds, so cold starts keep
# happening and the cold-start panels and rules have data too.
FAKE_LAUNCHER = textwrap.dedent("""\
    import os, sys, threading, time
    from tests.kit.fake_ollama import Behavior, FakeOllama
    srv = FakeOllama(Behavior(tokens=10, token_interval=0.003, first_token_delay=0.01, load_time=0.2),
                     port=int(sys.argv[2])).start()
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    while True:
        time.sleep(float(sys.argv[3]))
        with srv.lock:
            srv.loaded.clear()
    """)


def _die_with_parent():
    # Linux: the child gets SIGTERM if this test process dies, so no server outlives the run.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(args, log_path, **kw):
    log = open(log_path, "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE,
                            preexec_fn=_die_with_parent, cwd=ROOT, **kw)


def _get(url, **params):
    try:
        r = requests.get(url, params=params, timeout=5)
        return r if r.status_code == 200 else None
    except requests.RequestException:
        return None


def _exporter_config(fake_url, marker):
    return textwrap.dedent(f"""\
        targets:
          - name: local
            url: {fake_url}
            process_match: '{marker}'
        server_stats: {{interval: 1s}}
        scenarios:
          - name: default
            model: tiny
            schedule: {{interval: 1s}}
            timeout: 5s
            keep_alive: 10m
            slo: {{ttft: 10s, objective: 99%}}
            options: {{temperature: 0, num_predict: 10}}
            cases:
              short: {{prompt: "What is AI?"}}
              long: {{prompt: "Describe the architecture of a transformer neural network in detail.", prompt_repeat: 8,
                      slo: {{ttft: 1ms, objective: 0.9}}}}
          - name: prompt-length
            model: tiny
            schedule: {{interval: 2s}}
            timeout: 5s
            cases:
              text: {{prompt: "Large language models turn a prompt into tokens."}}
            sweep:
              prompt_repeat: [1, 8]
          - name: temperature
            model: tiny
            schedule: {{interval: 2s}}
            timeout: 5s
            cases:
              medium: {{prompt: "Explain machine learning in simple terms."}}
            sweep:
              temperature: [0, 0.7]
          - name: concurrency
            model: tiny
            schedule: {{interval: 2s}}
            timeout: 5s
            concurrency: [1, 2, 4]
            cases:
              short: {{prompt: "What is AI?"}}
          - name: conversation
            model: tiny
            api: chat
            schedule: {{interval: 2s}}
            timeout: 5s
            unique_prompt: true
            cases:
              chat: {{turns: ["Hello there.", "Tell me more."], expect: {{contains: t1}}}}
        """)


def _seed_results(path, now):
    """Runs of the `default` scenario every 5 minutes over the 17 hours before now, as an earlier
    exporter would have written them: the exact statistics rebuild their history from the results
    file at start-up, long enough for a regression threshold (docs/regression.md)."""
    from exporter.results import ProbeResult

    with open(path, "w", encoding="utf-8") as f:
        for i in range(204):
            ended = now - 61200 + i * 300
            for case, ttft in (("short", 0.012), ("long", 0.015)):
                r = ProbeResult(target="local", scenario="default", model="tiny", case=case, run_id=f"seed-{i}",
                                started_at=ended - 0.05, ended_at=ended, ok=True, ttft_s=ttft * (1 + i % 3 / 50),
                                request_duration_s=0.045, eval_count=10, eval_duration_s=0.03, prompt_eval_count=12,
                                prompt_eval_duration_s=0.002, load_duration_s=0.001, total_duration_s=0.04,
                                inter_token_gaps_s=[0.003] * 9, output_chunks=10)
                f.write(json.dumps(r.to_dict()) + "\n")


HOST_JOBS = ("node-exporter", "dcgm-exporter", "amd-device-metrics-exporter")


def _prometheus_config(exporter_addr, prom_addr, sd_dir):
    """prometheus/prometheus.yml with test addresses, 1s intervals and absolute rule paths;
    the host and GPU exporter jobs read their target files from sd_dir."""
    with open(os.path.join(ROOT, "prometheus", "prometheus.yml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    cfg["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    # The rule files as they are, but a group's own evaluation interval (bottleneck.yml's 5 m
    # history group) shortened to the test's 1 s like the global one, so its series appear in time.
    rules_dir = sd_dir.parent / "rules"
    rules_dir.mkdir(exist_ok=True)
    for path in glob.glob(os.path.join(ROOT, "prometheus", "rules", "*.yml")):
        with open(path, encoding="utf-8") as f:
            rules = yaml.safe_load(f)
        for group in rules["groups"]:
            group.pop("interval", None)
        (rules_dir / os.path.basename(path)).write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    cfg["rule_files"] = [str(rules_dir / os.path.basename(p)) for p in cfg["rule_files"]]
    cfg.pop("alerting", None)  # no Alertmanager here; the rules still evaluate
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] == "ollama-perf-exporter":
            job["static_configs"] = [{"targets": [exporter_addr]}]
        elif job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [prom_addr]}]
        elif job["job_name"] in HOST_JOBS:
            (sd,) = job["file_sd_configs"]
            sd["files"] = [str(sd_dir / os.path.basename(f)) for f in sd["files"]]
        else:
            continue
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    return cfg


@pytest.mark.prometheus
def test_every_panel_query_and_recording_rule_returns_data(tmp_path):
    prometheus_bin = shutil.which("prometheus")
    assert prometheus_bin, "prometheus is not on PATH (make test builds it: scripts/install-prometheus.sh)"
    marker = f"fake-ollama-{uuid.uuid4().hex[:12]}"
    fake_port, exporter_port, prom_port = free_port(), free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    exporter_addr, prom_addr = f"127.0.0.1:{exporter_port}", f"127.0.0.1:{prom_port}"
    base = f"http://{prom_addr}"
    procs = []
    samples = None
    try:
        procs.append(_spawn([sys.executable, "-c", FAKE_LAUNCHER, marker, str(fake_port), "4"],
                            tmp_path / "fake.log"))
        wait_for(lambda: _get(fake_url + "/api/version"), timeout=20, what="fake Ollama")

        cfg = tmp_path / "scenarios.yaml"
        cfg.write_text(_exporter_config(fake_url, marker))
        _seed_results(tmp_path / "results.jsonl", time.time())
        env = {k: v for k, v in os.environ.items() if k != "OLLAMA_HOST"}
        procs.append(_spawn([sys.executable, "-m", "exporter", "--config.file", str(cfg),
                             "--web.listen-address", exporter_addr, "--results.file", str(tmp_path / "results.jsonl")],
                            tmp_path / "exporter.log", env=env))
        def exporter_measures_the_server():
            assert procs[-1].poll() is None, "the exporter exited (its log is below)"
            r = _get(f"http://{exporter_addr}/metrics")
            return r is not None and "llm_server_processes{" in r.text

        wait_for(exporter_measures_the_server, timeout=30, what="the exporter to measure the fake server's process")

        # The host's real node_exporter and the GPU exporters' documented output, joined to the
        # exporter's target `local` by the `target` label of their target files (prometheus.yml).
        node_bin = node_exporter_binary()
        assert node_bin, "node_exporter is not installed: `make test` installs Debian's prometheus-node-exporter"
        node_addr = f"127.0.0.1:{free_port()}"
        procs.append(_spawn(node_exporter_command(node_bin, node_addr), tmp_path / "node-exporter.log"))
        samples = SampleMetricsServer().start()
        sd_dir = tmp_path / "targets"
        sd_dir.mkdir()
        for job, addr, labels in (
            ("node-exporter", node_addr, {"target": "local"}),
            ("dcgm-exporter", samples.address, {"target": "local", "__metrics_path__": "/dcgm-exporter/metrics"}),
            # AMD on a second host, so that both vendors' series reach the rules.
            ("amd-device-metrics-exporter", samples.address,
             {"target": "amd-host", "__metrics_path__": "/amd-device-metrics-exporter/metrics"}),
        ):
            (sd_dir / f"{job}.yml").write_text(yaml.safe_dump([{"targets": [addr], "labels": labels}]))

        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(yaml.safe_dump(_prometheus_config(exporter_addr, prom_addr, sd_dir)))
        procs.append(_spawn([prometheus_bin, f"--config.file={prom_cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address={prom_addr}", "--log.level=warn"], tmp_path / "prometheus.log"))
        def prometheus_ready():
            assert procs[-1].poll() is None, "Prometheus exited (its log is below)"
            return _get(base + "/-/ready")

        wait_for(prometheus_ready, timeout=30, what="Prometheus to be ready")

        def check_rule_files_loaded():
            r = _get(base + "/api/v1/rules")
            groups = r.json()["data"]["groups"] if r else []
            return groups and all(g["rules"] and all(rule["health"] == "ok" for rule in g["rules"]) for g in groups)

        recording = _recording_rules()
        queries = [(f"panel {where}", q) for where, q in _panel_queries()]
        # The same queries with one real target and model picked, as a user would: the filters
        # must match the exporter's label values (loaded models are named model:latest).
        concrete = {"target": "local", "model": "tiny"}
        queries += [(f"panel {where} [{concrete}]", q)
                    for where, q in _panel_queries(concrete, only_with=("target", "model"))]
        queries += [(f"rule expr {r['record']}", r["expr"]) for r in recording]
        queries += [(f"recorded series {r['record']}", r["record"]) for r in recording]
        # The fake drops its models every few seconds: cold starts must be seen as such.
        queries += [
            # prometheus.yml stores each histogram as one native histogram with custom buckets:
            # the native form answers, and no per-bucket series is stored beside it.
            ("histograms stored as native histograms, not buckets",
             'count(llm_probe_time_to_first_token_seconds) > 0 '
             'unless count(llm_probe_time_to_first_token_seconds_bucket)'),
            ("cold TTFT p95 from the native histogram",
             'histogram_quantile(0.95, sum without (instance, job, case, concurrency) '
             '(rate(llm_probe_time_to_first_token_seconds{start="cold"}[10m])))'),
            ("cold starts counted", "target_model:llm_probe_cold_starts:increase1h > 0"),
            ("exact cold TTFT", 'llm_probe_recent_quantile{start="cold",quantity="time_to_first_token_seconds",'
                                'quantile="0.95"} > 0'),
            ("baseline from the seeded results file", 'llm_probe_baseline_runs >= 6'),
            ("every concurrency level", 'count(llm_probe_batch_output_tokens_per_second{scenario="concurrency"}) == 3'),
            # `long` overrides the scenario's SLO with one no request meets; `short` meets its own.
            ("bad SLO requests counted", 'llm_probe_slo_good_requests_total{case="long"} == 0 '
                                         'and llm_probe_slo_requests_total{case="long"} > 0'),
            ("good SLO requests counted", 'llm_probe_slo_good_requests_total{case="short"} > 0'),
            ("load histogram of each case", 'count(llm_probe_load_duration_seconds{scenario="default"}) == 2'),
            # Host and GPU exporters: scraped, joined by target, and judged.
            ("every host and GPU job scraped",
             'count(up{job=~"node-exporter|dcgm-exporter|amd-device-metrics-exporter"} == 1) == 3'),
            ("AMD series reach the evidence", 'target:gpu_utilisation:ratio{target="amd-host"} == 0.88'),
            ("DCGM profiling field preferred",
             'target:gpu_memory_bandwidth_activity:ratio{target="local"} == 0.781002'),
            ("a VRAM share and a context length", 'llm_server_model_vram_ratio{target="local"} == 0 '
                                                  'and on (target, model) llm_server_model_context_length == 4096'),
            # The fake puts the model all in system memory next to a (sampled) GPU: offloaded.
            ("every verdict for the model",
             'count(target_model:llm_bottleneck:active{target="local", model="tiny"}) == 8'),
            ("the offload verdict",
             'target_model:llm_bottleneck:active{target="local", model="tiny", bottleneck="cpu_offload"} == 1'),
        ]

        def missing():
            """Queries without data now; a PromQL error fails at once."""
            out = []
            for where, q in queries:
                r = requests.get(base + "/api/v1/query", params={"query": q}, timeout=10)
                body = r.json()
                assert body.get("status") == "success", f"{where}: {q}\n{body}"
                if not _has_data(body["data"]["result"]):
                    out.append(f"{where}: {q}")
            return out

        # Data accrues from the first scrapes; give it a bounded time, polling.
        deadline = time.monotonic() + 90
        left = None
        while time.monotonic() < deadline:
            left = missing()
            if not left and check_rule_files_loaded():
                break
            time.sleep(3)
        assert check_rule_files_loaded(), _get(base + "/api/v1/rules").text
        assert not left, f"{len(left)} of {len(queries)} queries returned no data:\n" + "\n".join(left)

        # Template variables: label_values(selector, label) must list values.
        for name, dash in _dashboards().items():
            values = _variable_values(dash)
            for v in dash["templating"]["list"]:
                if v["type"] != "query" or v["name"] in ("site", "cluster"):
                    continue  # optional: this single-site Prometheus has no site or cluster label
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", _substitute(v["definition"], values))
                assert m, v["definition"]
                r = requests.get(f"{base}/api/v1/label/{m.group(2)}/values", params={"match[]": m.group(1)}, timeout=10)
                assert r.json()["data"], f"{name}: variable {v['name']} has no values"

        # Annotation queries (firing alerts) must at least be valid PromQL; none fire here.
        for name, dash in _dashboards().items():
            for a in dash["annotations"]["list"]:
                if a.get("expr"):
                    r = requests.get(base + "/api/v1/query", params={"query": a["expr"]}, timeout=10)
                    assert r.json()["status"] == "success", (name, a["expr"])
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        if samples is not None:
            samples.stop()
        for log in ("fake.log", "exporter.log", "prometheus.log", "node-exporter.log"):
            path = tmp_path / log
            if path.exists() and path.stat().st_size:
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                sys.stderr.write(f"--- {log} (last lines)\n" + tail + "\n")
