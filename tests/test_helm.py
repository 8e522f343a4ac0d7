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
import time
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
          "--set-json", 'targets=[{"targets": ["gpu-01.lan:11434"], "labels": {"name": "gpu-01"}}]',
          # instance = the pod's name (stable per shard), a site label on every series, the
          # ServiceMonitor in the monitoring namespace selecting the release's.
          "--set-json", 'serviceMonitor.relabelings=[{"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"}]',
          "--set-json", 'serviceMonitor.metricRelabelings=[{"targetLabel": "site", "replacement": "lab-1"}]',
          "--set", "serviceMonitor.namespace=monitoring"]


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


# Helm built from source assumes Kubernetes v1.20 for `template` and `lint`; the chart needs
# >= 1.27 (kubeVersion), so say which cluster to render for, as a real cluster would.
KUBE_VERSION = ["--kube-version", "1.31.0"]


def helm(tools, *args) -> str:
    if args and args[0] in ("template", "lint"):
        args = (*args, *KUBE_VERSION)
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
        assert sorted(p.name for p in copy.glob(pattern)) == names, \
            f"run `make helm-files`: {copy} differs from {source}"
        match, mismatch, errors = filecmp.cmpfiles(source, copy, names, shallow=False)
        assert not mismatch and not errors, f"run `make helm-files`: {mismatch + errors} differ"


@pytest.mark.helm
def test_helm_lint(tools):
    helm(tools, "lint", "--strict", str(CHART))
    helm(tools, "lint", "--strict", str(CHART), *ALL_ON)


def test_default_values_give_the_prober_a_cpu_request_and_no_cpu_limit():
    """A CPU limit is a CFS quota: past it within a period every thread of the exporter waits for
    the next one, and the stream reader's wait is reported as TTFT. Checked on the values file so
    that it runs without Helm too; the render test checks the manifest."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    resources = values["resources"]
    assert resources["requests"]["cpu"], resources
    assert "cpu" not in resources.get("limits", {}), resources
    assert resources["limits"]["memory"], "memory keeps a limit: a leak must not take the node"


def hardened(container):
    sc = container["securityContext"]
    return sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"] and not sc["allowPrivilegeEscalation"]


@pytest.mark.helm
def test_default_render_is_one_hardened_deployment_that_keeps_its_results(tools):
    docs = render(tools)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "PersistentVolumeClaim",
                                               "PodDisruptionBudget", "Service", "ServiceAccount"]
    (deploy,) = of_kind(docs, "Deployment")
    # Never two probers at once, never two pods on one ReadWriteOnce claim.
    # rollingUpdate: null, so that `helm upgrade` from a RollingUpdate Deployment clears its defaults.
    assert deploy["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    pod = deploy["spec"]["template"]["spec"]
    exporter, watcher = pod["containers"]
    assert (exporter["name"], watcher["name"]) == ("exporter", "config-watcher")
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert hardened(exporter) and hardened(watcher)
    assert exporter["resources"]["limits"]["memory"] and watcher["resources"]["limits"]["memory"]
    # The prober gets a CPU request and no CPU quota: CFS throttling would show up as latency.
    assert exporter["resources"]["requests"]["cpu"] and "cpu" not in exporter["resources"]["limits"]
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert not any(a.startswith("--shard") for a in exporter["args"])
    # The results file is on the chart's claim, which outlives the pod.
    (claim,) = of_kind(docs, "PersistentVolumeClaim")
    (results,) = [v for v in pod["volumes"] if v["name"] == "results"]
    assert results["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "--results.file=/var/lib/ollama-perf-exporter/results.jsonl" in exporter["args"]
    assert {"name": "results", "mountPath": "/var/lib/ollama-perf-exporter"} in exporter["volumeMounts"]
    # Its own ServiceAccount, without an API token (the exporter never calls the API).
    (account,) = of_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"] and pod["automountServiceAccountToken"] is False
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    # The scenario file the chart ships is one the exporter accepts.
    (scenarios,) = of_kind(docs, "ConfigMap")
    config = load_text(scenarios["data"]["scenarios.yaml"], "chart values")
    assert [t.process_match for t in config.targets] == [None]


@pytest.mark.helm
def test_a_scenario_change_is_reloaded_in_place_not_rolled_out(tools):
    """The config watcher POSTs /-/reload when the mounted ConfigMap changes: the pod template
    (and so the pod, its state and its baseline) stays the same. Without the watcher a change rolls."""
    edit = ("--set", "scenarios.scenarios[0].model=qwen3:0.6b", "--set", "scenarios.scenarios[0].name=d",
            "--set", "scenarios.scenarios[0].cases.short.prompt=hi")

    def workload(*args):
        (w,) = [d for d in render(tools, *args) if d["kind"] in ("Deployment", "StatefulSet")]
        return w

    base = workload()
    assert workload(*edit)["spec"]["template"] == base["spec"]["template"]
    assert "checksum/scenarios" not in base["spec"]["template"]["metadata"].get("annotations", {})
    watcher = base["spec"]["template"]["spec"]["containers"][1]
    assert "--reload-url=http://127.0.0.1:9877/-/reload" in watcher["args"]
    assert "--watched-dir=/etc/ollama-perf-exporter/config" in watcher["args"]
    assert {"name": "scenarios", "mountPath": "/etc/ollama-perf-exporter/config", "readOnly": True} in watcher["volumeMounts"]
    # The same file the exporter reads.
    exporter = base["spec"]["template"]["spec"]["containers"][0]
    assert "--config.file=/etc/ollama-perf-exporter/config/scenarios.yaml" in exporter["args"]

    def checksum(*args):
        return workload("--set", "configWatcher.enabled=false", *args)["spec"]["template"]["metadata"]["annotations"]["checksum/scenarios"]

    assert checksum(*edit) != checksum()
    assert checksum("--set-json", 'targets=[{"targets": ["a:1"]}]') == checksum()


@pytest.mark.helm
def test_sharded_render_is_a_statefulset_with_a_claim_per_pod_and_a_headless_service(tools):
    docs = render(tools, *ALL_ON)
    (sts,) = of_kind(docs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--shard.count=3" in args and "--shard.index=auto" in args
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/etc/ollama-perf-exporter/targets", "/var/run/secrets/ollama-perf-exporter/gateway-token",
            "/var/lib/ollama-perf-exporter"} <= mounts
    # Each pod its own claim: from volumeClaimTemplates, not a shared volume of the pod template.
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "results"
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"] and template["spec"]["resources"]["requests"]["storage"]
    assert "results" not in {v["name"] for v in pod["volumes"]}
    assert not of_kind(docs, "PersistentVolumeClaim")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    # The governing Service is headless and exists; the ServiceMonitor scrapes the other one only.
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    (monitor,) = of_kind(docs, "ServiceMonitor")
    selector = monitor["spec"]["selector"]
    selected = [s for s in services.values()
                if all(s["metadata"]["labels"].get(k) == v for k, v in selector["matchLabels"].items())
                and all(e["operator"] != "DoesNotExist" or e["key"] not in s["metadata"]["labels"]
                        for e in selector["matchExpressions"])]
    assert [s["metadata"]["name"] for s in selected] == ["t-ollama-perf-exporter"]
    (targets,) = [d for d in of_kind(docs, "ConfigMap") if "targets.json" in d["data"]]
    assert json.loads(targets["data"]["targets.json"]) == [
        {"targets": ["gpu-01.lan:11434"], "labels": {"name": "gpu-01"}}]
    # The exporter reads the rendered file as it is.
    (target,) = parse_file_sd(targets["data"]["targets.json"], TargetFile(group="g", path="targets.json"))
    assert (target.name, target.url) == ("gpu-01", "http://gpu-01.lan:11434")


@pytest.mark.helm
def test_a_shared_existing_claim_is_refused_for_shards(tools):
    res = subprocess.run([tools[0], "template", "t", str(CHART), *KUBE_VERSION, "--set", "replicas=2",
                          "--set", "results.persistence.existingClaim=shared"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "volumeClaimTemplates" in res.stderr
    (deploy,) = of_kind(render(tools, "--set", "results.persistence.existingClaim=mine"), "Deployment")
    (results,) = [v for v in deploy["spec"]["template"]["spec"]["volumes"] if v["name"] == "results"]
    assert results == {"name": "results", "persistentVolumeClaim": {"claimName": "mine"}}


@pytest.mark.helm
def test_name_overrides_rename_every_object_and_the_rules_follow_the_job(tools):
    docs = render(tools, "--set", "nameOverride=llmperf,prometheusRule.enabled=true,serviceMonitor.enabled=true")
    for d in docs:
        assert d["metadata"]["name"].startswith("t-llmperf"), d["metadata"]["name"]
    # job = app.kubernetes.io/name = llmperf: the exporter alerts must select that job.
    (service,) = of_kind(docs, "Service")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "llmperf"
    alerts = {r["alert"]: r for pr in of_kind(docs, "PrometheusRule") for g in pr["spec"]["groups"] for r in g["rules"]
              if "alert" in r}
    assert alerts["LLMExporterDown"]["expr"].startswith('up{job="llmperf"}')
    assert 'up{job="llmperf"}' in alerts["LLMExporterAbsent"]["expr"]
    docs = render(tools, "--set", "fullnameOverride=perf")
    assert {d["metadata"]["name"] for d in docs} >= {"perf", "perf-scenarios", "perf-results"}


@pytest.mark.helm
def test_network_policy_admits_prometheus_and_reaches_dns_and_ollama(tools):
    docs = render(tools, "--set", "networkPolicy.enabled=true")
    (policy,) = of_kind(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    ports = [p["port"] for rule in spec["egress"] for p in rule["ports"]]
    assert 53 in ports and 11434 in ports
    assert not of_kind(render(tools), "NetworkPolicy")


@pytest.mark.helm
def test_values_schema_refuses_typos_and_wrong_types(tools):
    for bad in (["--set", "replica=3"], ["--set", "replicas=0"], ["--set", "results.persistence.size=lots"],
                ["--set", "serviceMonitor.interval=fifteen"], ["--set", "prometheusRule.selectors.nodeExporter=node"],
                ["--set", "image.pullPolicy=Sometimes"]):
        res = subprocess.run([tools[0], "template", "t", str(CHART), *KUBE_VERSION, *bad], capture_output=True, text=True, timeout=120)
        assert res.returncode != 0 and "schema" in res.stderr, (bad, res.stderr)


# Value sets rendered and validated against the Kubernetes API schemas: the defaults, the
# sharded StatefulSet with everything on, and the NetworkPolicy.
VALUE_SETS = {
    "default": [],
    "sharded": ALL_ON + ["--set", "serviceMonitor.relabelings[0].targetLabel=instance",
                         "--set", "serviceMonitor.relabelings[0].sourceLabels[0]=__meta_kubernetes_pod_name"],
    "networkPolicy": ["--set", "networkPolicy.enabled=true,podDisruptionBudget.minAvailable=1"],
    "emptyDir": ["--set", "results.persistence.enabled=false,configWatcher.enabled=false,serviceAccount.create=false"],
}
# The chart's kubeVersion floor and the newest the validator knows.
KUBE_VERSIONS = ("1.27.0", "latest")


@pytest.mark.helm
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_manifests_validate_against_kubernetes_schemas(tools, values):
    """kubernetes-validate (offline, the API's OpenAPI schemas), strict: an unknown field fails
    too. The operator's objects are checked against its CRDs above. No cluster here: these are
    the schemas the API server would apply, not an apply."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate.utils import latest_version

    docs = render(tools, *VALUE_SETS[values])
    native = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert native
    for version in KUBE_VERSIONS:
        version = latest_version() if version == "latest" else version
        for d in native:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{values}: {d['kind']} {d['metadata']['name']} invalid for Kubernetes {version}: {e.message}")
    # The validator catches a mistake: an unknown field in the pod template.
    (workload,) = [d for d in native if d["kind"] in ("Deployment", "StatefulSet")]
    broken = json.loads(json.dumps(workload))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


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
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["relabelings"][0]["targetLabel"] == "instance" and endpoint["metricRelabelings"][0]["targetLabel"] == "site"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["default"]}
    # Histograms stored as native histograms with custom buckets, as prometheus/prometheus.yml does.
    assert monitor["spec"]["convertClassicHistogramsToNHCB"] is True
    # The job label comes from the Service's label named by jobLabel: the name the rules use.
    (service,) = [s for s in of_kind(docs, "Service") if s["spec"].get("clusterIP") != "None"]
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


def _rendered_rule_file(tools, name, *args) -> str:
    (rule,) = [r for r in of_kind(render(tools, "--set", "prometheusRule.enabled=true", *args), "PrometheusRule")
               if r["metadata"]["annotations"]["ollama-perf-exporter/rule-file"] == name]
    return yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=1 << 20)


@pytest.mark.helm
def test_selectors_and_topology_labels_are_configurable(tools):
    text = _rendered_rule_file(tools, "bottleneck.yml",
                               "--set", 'prometheusRule.selectors.nodeExporter=job="kps-node-exporter"\\, namespace="monitoring"',
                               "--set", 'prometheusRule.selectors.dcgmExporter=job="nvidia-dcgm-exporter"',
                               "--set", 'prometheusRule.selectors.amdExporter=job="amd-gpu-metrics"',
                               "--set-json", 'prometheusRule.topologyLabels=["cluster", "region"]')
    text = "\n".join(r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"])
    assert 'node-exporter"' not in text.replace('kps-node-exporter"', "") and "(nvidia-)?" not in text
    assert text.count('job="kps-node-exporter", namespace="monitoring"') == 7 and 'job="amd-gpu-metrics"' in text
    assert "target, site, cluster" not in text and "by (target, cluster, region)" in text
    assert "on (target, cluster, region)" in text


@pytest.mark.helm
@pytest.mark.prometheus
@pytest.mark.parametrize("node_selector, passes", [(None, True), ('job="not-the-node-exporter"', False)])
def test_bottleneck_rules_judge_kube_prometheus_stack_series(tools, tmp_path, node_selector, passes):
    """The rendered bottleneck rules on series labelled as kube-prometheus-stack scrapes them (30 s,
    Operator labels, the GPU operator's DCGM job, `target` from docs/kubernetes.md's relabelling),
    a kubelet job's node_* series beside them. promtool, no cluster. A selector that misses the
    node exporter must make the host evidence fail: the selectors are applied."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (make test builds it: scripts/install-prometheus.sh)"
    args = ["--set", f"prometheusRule.selectors.nodeExporter={node_selector}"] if node_selector else []
    (tmp_path / "bottleneck.yml").write_text(_rendered_rule_file(tools, "bottleneck.yml", *args))
    shutil.copy(Path(ROOT) / "tests" / "data" / "kps_bottleneck_test.yml", tmp_path / "t.yml")
    res = subprocess.run([promtool, "test", "rules", "t.yml"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if passes:
        assert res.returncode == 0, res.stdout + res.stderr
    else:
        out = res.stdout + res.stderr
        assert res.returncode != 0 and "target:node_cpu_busy:ratio_rate2m" in out, out


@pytest.mark.helm
@pytest.mark.prometheus
def test_rendered_rules_pass_promtool_check_and_the_rule_unit_tests(tools, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (make test builds it: scripts/install-prometheus.sh)"
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


# ---------------------------------------------------------------- the config watcher, for real


@pytest.fixture(scope="module")
def config_reloader():
    """The program the config-watcher sidecar runs, built from the Prometheus Operator's module
    (scripts/install-config-reloader.sh), at the version the chart pins."""
    path = os.environ.get("CONFIG_RELOADER_BIN")
    if not path:
        res = subprocess.run([os.path.join(ROOT, "scripts", "install-config-reloader.sh")], capture_output=True,
                             text=True, timeout=1800)
        assert res.returncode == 0, f"scripts/install-config-reloader.sh failed:\n{res.stderr[-3000:]}"
        path = res.stdout.split()[-1]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f"prometheus-config-reloader-{values['configWatcher']['image']['tag'].lstrip('v')}" in path
    return path


class ConfigMapVolume:
    """A directory laid out as the kubelet lays out a ConfigMap volume, updated as it does it
    (AtomicWriter): files in a timestamped directory, `..data` a symlink to it, each key a
    symlink through `..data`; an update writes a new directory and renames a new `..data`
    symlink over the old one."""

    def __init__(self, path: Path, files: dict):
        self.path = path
        path.mkdir()
        self.n = 0
        self.update(files)
        for name in files:
            (path / name).symlink_to(Path("..data") / name)

    def update(self, files: dict):
        self.n += 1
        stamp = self.path / f"..2026_12_07_06_00_00.{self.n:09d}"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text)
        tmp = self.path / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.replace(tmp, self.path / "..data")


@pytest.mark.helm
def test_the_config_watcher_reloads_a_scenario_edit_in_place(tools, tmp_path, config_reloader):
    """The chart's sidecar command line against a real exporter: a ConfigMap update (as the kubelet
    makes it) becomes one POST /-/reload; the exporter keeps its process, its results file and
    runs the new scenario; an invalid edit is refused and the old scenarios keep running."""
    from tests.kit.exporters import ExporterProcess, scenario_yaml, stop_process, wait_for
    from tests.kit.fake_ollama import FakeOllama

    docs = render(tools)
    (deploy,) = of_kind(docs, "Deployment")
    exporter_c, watcher_c = deploy["spec"]["template"]["spec"]["containers"]
    with FakeOllama() as fake:
        volume = ConfigMapVolume(tmp_path / "config", {"scenarios.yaml": scenario_yaml(fake.url, name="before")})
        results = tmp_path / "results.jsonl"
        exporter = ExporterProcess(["--config.file", str(tmp_path / "config" / "scenarios.yaml"),
                                    "--results.file", str(results)])
        watcher = None
        try:
            wait_for(lambda: 'scenario="before"' in exporter.scrape(), timeout=30, what="the first scenario's series")
            wait_for(lambda: results.exists() and results.stat().st_size > 0, timeout=30, what="a result record")
            # The sidecar's own arguments, with this test's directory and port.
            args = []
            for a in watcher_c["args"]:
                a = a.replace("/etc/ollama-perf-exporter/config", str(tmp_path / "config"))
                a = a.replace("http://127.0.0.1:9877/", f"http://127.0.0.1:{exporter.port}/")
                args.append(a)
            assert f"--reload-url=http://127.0.0.1:{exporter.port}/-/reload" in args
            log = open(tmp_path / "watcher.log", "wb")
            watcher = subprocess.Popen([config_reloader, *args, "--log-level=debug"], stdout=log, stderr=subprocess.STDOUT)
            # In a pod the watcher runs long before any edit: let it take the volume's first state.
            wait_for(lambda: "started watching" in (tmp_path / "watcher.log").read_text(), timeout=30,
                     what="the watcher to start")
            time.sleep(3)
            assert "llm_exporter_config_last_reload_successful 1" in exporter.scrape()
            pid, before = exporter.proc.pid, results.read_bytes()

            volume.update({"scenarios.yaml": scenario_yaml(fake.url, name="after")})
            try:
                wait_for(lambda: 'scenario="after"' in exporter.scrape(), timeout=60, interval=0.5,
                         what="the edited scenario's series after the watcher's reload")
            except AssertionError:
                raise AssertionError("watcher log:\n" + (tmp_path / "watcher.log").read_text()[-3000:]
                                     + "\nexporter log:\n" + exporter.output[-3000:]) from None
            text = exporter.scrape()
            assert 'scenario="before"' not in text
            assert "llm_exporter_config_last_reload_successful 1" in text
            assert exporter.proc.pid == pid and exporter.proc.poll() is None
            assert results.read_bytes().startswith(before), "the results file must only grow"

            # An invalid edit: refused, and the scenarios that ran keep running.
            volume.update({"scenarios.yaml": "scenarios: [{name: broken}]\n"})
            wait_for(lambda: "llm_exporter_config_last_reload_successful 0" in exporter.scrape(), timeout=60,
                     interval=0.5, what="the refused reload")
            assert 'scenario="after"' in exporter.scrape() and exporter.proc.poll() is None
        finally:
            stop_process(watcher)
            exporter.stop()

