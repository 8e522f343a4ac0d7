"""The Helm chart: lint, render, every object parsed, the Prometheus Operator objects valid against
the operator's CRD schemas, and the rules inside the PrometheusRule the same as prometheus/rules/
and passing the same promtool checks and unit tests.

Helm and the CRDs come from scripts/install-helm.sh (Helm built from the Go module proxy into a
cache, the operator's Go module in the module cache); `make test` runs it and passes
$HELM_BIN and $PROMETHEUS_OPERATOR_CRDS.
"""

import filecmp
import json
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from exporter.config import TargetFile, load_text
from exporter.discovery import parse_file_sd
from tests.kit.exporters import ROOT

CHART = Path(ROOT) / "deploy" / "helm" / "ollama-perf-exporter"
RULES = Path(ROOT) / "prometheus" / "rules"
RULE_TESTS = Path(ROOT) / "prometheus" / "tests"
DASHBOARDS = Path(ROOT) / "grafana" / "dashboards"
# Everything on, three shards, a targets file and a credentials Secret.
ALL_ON = ["--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true,dashboards.enabled=true",
          "--set", "replicas=3,credentialSecrets[0]=gateway-token,serviceMonitor.labels.release=kps",
          "--set-json", 'targets=[{"targets": ["gpu-01.lan:11434"], "labels": {"name": "gpu-01"}}]']


@pytest.fixture(scope="module")
def tools():
    """(helm binary, CRD directory)."""
    helm, crds = os.environ.get("HELM_BIN"), os.environ.get("PROMETHEUS_OPERATOR_CRDS")
    if not (helm and crds):
        res = subprocess.run([os.path.join(ROOT, "scripts", "install-helm.sh")], capture_output=True,
                             text=True, timeout=1800)
        assert res.returncode == 0, f"scripts/install-helm.sh failed:\n{res.stderr[-3000:]}"
        helm, crds = res.stdout.split()[-2:]
    return helm, Path(crds)


def helm(tools, *args) -> str:
    res = subprocess.run([tools[0], *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def render(tools, *args) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(helm(tools, "template", "t", str(CHART), *args)) if d]
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
    return docs


def of_kind(docs, kind) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def crd_schema(tools, plural: str) -> dict:
    crd = yaml.safe_load((tools[1] / f"monitoring.coreos.com_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_chart_copies_of_rules_and_dashboards_are_the_sources():
    """The chart can only read files inside itself; `make helm-files` copies them in."""
    for source, copy, pattern in ((RULES, CHART / "files" / "rules", "*.yml"),
                                  (DASHBOARDS, CHART / "files" / "dashboards", "*.json")):
        names = sorted(p.name for p in source.glob(pattern))
        assert sorted(p.name for p in copy.glob(pattern)) == names, f"run `make helm-files`: {copy} differs from {source}"
        match, mismatch, errors = filecmp.cmpfiles(source, copy, names, shallow=False)
        assert not mismatch and not errors, f"run `make helm-files`: {mismatch + errors} differ"


@pytest.mark.helm
def test_helm_lint(tools):
    helm(tools, "lint", "--strict", str(CHART))
    helm(tools, "lint", "--strict", str(CHART), *ALL_ON)


@pytest.mark.helm
def test_default_render_is_one_hardened_deployment(tools):
    docs = render(tools)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service"]
    (deploy,) = of_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert not any(a.startswith("--shard") for a in container["args"])
    # The scenario file the chart ships is one the exporter accepts.
    (scenarios,) = of_kind(docs, "ConfigMap")
    config = load_text(scenarios["data"]["scenarios.yaml"], "chart values")
    assert [t.process_match for t in config.targets] == [None]


@pytest.mark.helm
def test_scenario_change_rolls_the_pods_and_a_targets_change_does_not(tools):
    def checksum(*args):
        (workload,) = [d for d in render(tools, *args) if d["kind"] in ("Deployment", "StatefulSet")]
        return workload["spec"]["template"]["metadata"]["annotations"]["checksum/scenarios"]

    base = checksum()
    assert checksum("--set", "scenarios.scenarios[0].model=qwen3:0.6b", "--set", "scenarios.scenarios[0].name=d",
                    "--set", "scenarios.scenarios[0].cases.short.prompt=hi") != base
    assert checksum("--set-json", 'targets=[{"targets": ["a:1"]}]') == base


@pytest.mark.helm
def test_sharded_render_is_a_statefulset_with_auto_shard_index(tools):
    docs = render(tools, *ALL_ON)
    (sts,) = of_kind(docs, "StatefulSet")
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--shard.count=3" in args and "--shard.index=auto" in args
    mounts = {m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert {"/etc/ollama-perf-exporter/targets", "/var/run/secrets/ollama-perf-exporter/gateway-token"} <= mounts
    (targets,) = [d for d in of_kind(docs, "ConfigMap") if "targets.json" in d["data"]]
    assert json.loads(targets["data"]["targets.json"]) == [{"targets": ["gpu-01.lan:11434"], "labels": {"name": "gpu-01"}}]
    # The exporter reads the rendered file as it is.
    (target,) = parse_file_sd(targets["data"]["targets.json"], TargetFile(group="g", path="targets.json"))
    assert (target.name, target.url) == ("gpu-01", "http://gpu-01.lan:11434")


@pytest.mark.helm
def test_operator_objects_validate_against_the_crds(tools):
    docs = render(tools, *ALL_ON)
    kinds = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}
    for kind, plural in kinds.items():
        objects = of_kind(docs, kind)
        assert objects, kind
        validator = jsonschema.Draft7Validator(crd_schema(tools, plural))
        for obj in objects:
            errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
            assert not errors, f"{kind} {obj['metadata']['name']}: {errors}"
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    # The job label comes from the Service's label named by jobLabel: the name the rules use.
    (service,) = of_kind(docs, "Service")
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "ollama-perf-exporter"
    assert 'up{job="ollama-perf-exporter"}' in (RULES / "alerts.yml").read_text()
    # The schemas are strict enough to catch a mistake: a wrong duration and an unknown field.
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["interval"] = "fifteen seconds"
    assert list(jsonschema.Draft7Validator(crd_schema(tools, "servicemonitors")).iter_errors(broken))


@pytest.mark.helm
def test_prometheus_rules_are_the_rule_files(tools):
    rules = of_kind(render(tools, *ALL_ON), "PrometheusRule")
    by_file = {r["metadata"]["annotations"]["ollama-perf-exporter/rule-file"]: r for r in rules}
    assert sorted(by_file) == sorted(p.name for p in RULES.glob("*.yml"))
    for name, rule in by_file.items():
        source = yaml.safe_load((RULES / name).read_text())
        assert rule["spec"]["groups"] == source["groups"], name


@pytest.mark.helm
def test_dashboards_are_configmaps_for_the_grafana_sidecar(tools):
    maps = [d for d in of_kind(render(tools, *ALL_ON), "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    assert len(maps) == len(list(DASHBOARDS.glob("*.json")))
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, body),) = cm["data"].items()
        assert json.loads(body) == json.loads((DASHBOARDS / name).read_text())


@pytest.mark.helm
def test_alerts_can_be_disabled_labelled_and_linked_elsewhere(tools):
    """kube-prometheus-stack's defaultRules controls: per-alert disable, extra labels, runbook links."""
    docs = render(tools, "--set", "prometheusRule.enabled=true",
                  "--set", "prometheusRule.disabled.LLMWatchdog=true,prometheusRule.disabled.OllamaModelOffloaded=true",
                  "--set", "prometheusRule.additionalRuleLabels.team=ml-platform",
                  "--set", "prometheusRule.additionalRuleAnnotations.dashboard=https://grafana.example/d/ollama-perf-overview",
                  "--set", "prometheusRule.runbookUrlPattern=https://docs.example/runbooks/%s/")
    rules = [r for pr in of_kind(docs, "PrometheusRule") for g in pr["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    source = {r["alert"] for p in RULES.glob("*.yml") for g in yaml.safe_load(p.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    assert set(alerts) == source - {"LLMWatchdog", "OllamaModelOffloaded"}
    # Recording rules are untouched: the bottleneck verdicts stay even with its alert gone.
    assert any(r.get("record") == "target_model:llm_bottleneck:active" for r in rules)
    for name, a in alerts.items():
        assert a["labels"]["team"] == "ml-platform" and a["labels"]["severity"], name
        assert a["annotations"]["runbook_url"] == f"https://docs.example/runbooks/{name}/", name
        assert a["annotations"]["dashboard"].startswith("https://grafana.example/"), name
        assert a["annotations"]["summary"], name
    for r in rules:
        if "record" in r:
            assert "team" not in r.get("labels", {}), r["record"]
    # A group whose only alert is disabled disappears rather than rendering empty.
    for pr in of_kind(docs, "PrometheusRule"):
        assert all(g["rules"] for g in pr["spec"]["groups"]), pr["metadata"]["name"]


@pytest.mark.helm
@pytest.mark.prometheus
def test_rendered_rules_pass_promtool_check_and_the_rule_unit_tests(tools, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `make test` installs Debian's prometheus package"
    (tmp_path / "rules").mkdir()
    for rule in of_kind(render(tools, *ALL_ON), "PrometheusRule"):
        name = rule["metadata"]["annotations"]["ollama-perf-exporter/rule-file"]
        (tmp_path / "rules" / name).write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    files = sorted(str(p) for p in (tmp_path / "rules").glob("*.yml"))
    res = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    # The unit tests name ../rules/<file>: the same layout, so they run unchanged on the extracted rules.
    shutil.copytree(RULE_TESTS, tmp_path / "tests")
    tests = sorted(str(p) for p in (tmp_path / "tests").glob("*_test.yml"))
    assert tests
    res = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path / "tests")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.helm
def test_the_readme_fleet_example_renders_and_its_scenario_file_loads(tools, tmp_path):
    readme = (CHART / "README.md").read_text()
    example = readme.split("## A fleet of Ollama servers", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    values = tmp_path / "fleet.yaml"
    values.write_text(example)
    docs = render(tools, "-f", str(values))
    (sts,) = of_kind(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    (scenarios,) = [d for d in of_kind(docs, "ConfigMap") if "scenarios.yaml" in d["data"]]
    config = load_text(scenarios["data"]["scenarios.yaml"], "README fleet example")
    (files,) = config.target_files
    # The scenario file points at the targets ConfigMap's mount.
    assert files.path == "/etc/ollama-perf-exporter/targets/targets.json"
    mounts = {m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert "/etc/ollama-perf-exporter/targets" in mounts
    assert files.auth.bearer_token_file.startswith("/var/run/secrets/ollama-perf-exporter/ollama-gateway/")
    assert "/var/run/secrets/ollama-perf-exporter/ollama-gateway" in mounts
