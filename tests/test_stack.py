"""docker-compose.yml: valid, pinned, loopback-only, healthy, non-root; and the model-pull script.

These run without an engine: `docker-compose config` (Debian's docker-compose 1.29, which
`make test` installs) parses, interpolates and validates the file. Those tests carry the
`prometheus` marker with the other system-tool tests, so that `make test-fast` leaves them
out; the checks on the raw YAML run everywhere. The stack itself runs in a real engine in
tests/test_stack_engine.py (`make test-stack`).
"""

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tests.kit.exporters import ROOT

COMPOSE = os.path.join(ROOT, "docker-compose.yml")
OVERRIDES = [os.path.join(ROOT, "docker", "compose.gpu.yml"), os.path.join(ROOT, "docker", "compose.rocm.yml")]
# Every override file, GPU or not: each must resolve with the base file and publish on loopback only.
# compose.node.yml is empty now (node_exporter is in the base file), kept for old command lines.
NODE_OVERRIDE = os.path.join(ROOT, "docker", "compose.node.yml")
ALL_OVERRIDES = OVERRIDES + [NODE_OVERRIDE]
STACK_TEST_OVERRIDE = os.path.join(ROOT, "docker", "compose.stack-test.yml")
ENV_EXAMPLE = os.path.join(ROOT, ".env.example")
PULL_SCRIPT = os.path.join(ROOT, "docker", "pull-models.py")
SERVICES = {"pidns", "ollama", "model-pull", "exporter", "prometheus", "alertmanager", "grafana-init", "grafana",
            "node-exporter"}
LONG_RUNNING = SERVICES - {"model-pull", "grafana-init"}
# pidns only holds a PID namespace and has nothing to check (it has no network at all).
HEALTHCHECKED = LONG_RUNNING - {"pidns"}
# An image reference pinned to a version: name:tag where the tag has a digit and is not
# latest/main/..., or a digest.
PINNED = re.compile(r"^[a-z0-9./_-]+(:[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*)?(@sha256:[0-9a-f]{64})?$")
FLOATING_TAGS = {"latest", "main", "master", "stable", "edge", "nightly"}


def _raw():
    with open(COMPOSE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _env_file(tmp_path, password="s3cret-for-tests"):
    """The user's .env as .env.example tells them to write it."""
    text = open(ENV_EXAMPLE, encoding="utf-8").read()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=\s*$", text, re.M), ".env.example must not carry a password"
    path = tmp_path / ".env"
    path.write_text(re.sub(r"^GRAFANA_ADMIN_PASSWORD=.*$", f"GRAFANA_ADMIN_PASSWORD={password}", text, flags=re.M))
    return path


def _compose(args, env_file=None, timeout=120):
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed: `make test` installs Debian's docker-compose package"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GRAFANA_", "OLLAMA_", "PROMETHEUS_", "ALERTMANAGER_", "EXPORTER_", "COMPOSE_",
                                "DOCKER_"))}
    cmd = [exe, "--project-directory", ROOT]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    cmd += ["-f", COMPOSE, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture
def resolved(tmp_path):
    res = _compose(["config"], _env_file(tmp_path))
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


# ---------------------------------------------------------------- docker-compose config


@pytest.mark.prometheus
def test_compose_config_is_valid_with_the_example_env(resolved):
    assert set(resolved["services"]) == SERVICES
    assert resolved["services"]["grafana-init"]["environment"]["GRAFANA_ADMIN_PASSWORD"] == "s3cret-for-tests"
    grafana_env = resolved["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/var/lib/grafana/admin_password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in resolved["services"]["grafana"]["environment"]
    assert resolved["services"]["exporter"]["environment"]["OLLAMA_PERF_MODEL"] == "llama3.2:1b"


@pytest.mark.prometheus
def test_compose_works_without_any_env_file_and_bakes_in_no_password():
    res = _compose(["config"])
    assert res.returncode == 0, res.stderr
    services = yaml.safe_load(res.stdout)["services"]
    assert services["grafana-init"]["environment"]["GRAFANA_ADMIN_PASSWORD"] == ""
    assert services["grafana"]["depends_on"]["grafana-init"]["condition"] == "service_completed_successfully"


def _run_grafana_init(tmp_path, password):
    """The init service's own shell script, run here with its file in a temp folder."""
    script = _raw()["services"]["grafana-init"]["command"][0].replace("$$", "$")
    env = {"PATH": os.environ["PATH"], "GRAFANA_ADMIN_PASSWORD": password, "PASSWORD_FILE": str(tmp_path / "pw")}
    res = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_grafana_password_is_random_when_unset_and_kept_across_restarts(tmp_path):
    out = _run_grafana_init(tmp_path, "")
    first = (tmp_path / "pw").read_text()
    assert len(first) == 24 and first.isalnum()
    assert first not in out and "docker compose exec grafana cat" in out  # never printed
    assert oct((tmp_path / "pw").stat().st_mode & 0o777) == "0o600"
    _run_grafana_init(tmp_path, "")
    assert (tmp_path / "pw").read_text() == first
    other = tmp_path / "other"
    other.mkdir()
    _run_grafana_init(other, "")
    assert (other / "pw").read_text() != first


def test_grafana_password_from_env_is_used_on_the_first_start(tmp_path):
    _run_grafana_init(tmp_path, "chosen-by-user")
    assert (tmp_path / "pw").read_text() == "chosen-by-user"
    assert _run_grafana_init(tmp_path, "chosen-by-user") == ""


def test_grafana_password_changed_later_is_reported_not_written(tmp_path):
    # Grafana reads the file only when it creates its database: rewriting it later would
    # leave a password in the file that Grafana does not use.
    _run_grafana_init(tmp_path, "")
    first = (tmp_path / "pw").read_text()
    out = _run_grafana_init(tmp_path, "changed-later")
    assert (tmp_path / "pw").read_text() == first
    assert "differs from the password Grafana was created with" in out and "changed-later" not in out


@pytest.mark.prometheus
def test_gpu_overrides_are_valid(tmp_path):
    env_file = _env_file(tmp_path)
    for override in OVERRIDES:
        res = _compose(["-f", override, "config"], env_file)
        assert res.returncode == 0, f"{override}: {res.stderr}"
        ollama = yaml.safe_load(res.stdout)["services"]["ollama"]
        assert ollama.get("deploy") or ollama.get("devices"), override


@pytest.mark.prometheus
def test_published_ports_are_on_loopback_only(resolved):
    published = 0
    for name, svc in resolved["services"].items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                host_ip = port.split(":")[0] if port.count(":") == 2 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published += 1
    assert published == 5  # Grafana, Prometheus, Alertmanager, exporter, Ollama


@pytest.mark.prometheus
def test_ollama_and_the_exporter_share_a_pid_namespace_neither_of_them_holds(resolved):
    services = resolved["services"]
    # Had the exporter joined Ollama's namespace, Ollama's exit would kill it for good.
    assert services["exporter"]["pid"] == "service:pidns"
    assert services["ollama"]["pid"] == "service:pidns"
    assert "pid" not in services["pidns"]
    assert services["pidns"]["network_mode"] == "none"
    assert services["pidns"]["entrypoint"] == ["python", "/opt/ollama-perf-exporter/pid-namespace.py"]
    # The exporter's base image: no extra download, and a rebuilt exporter leaves it alone.
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        base = [line.split()[1] for line in f if line.startswith("FROM ")][-1]
    assert services["pidns"]["image"] == base and "build" not in services["pidns"]


@pytest.mark.prometheus
def test_the_exporter_does_not_wait_for_the_pull_and_bounds_its_results(resolved):
    exporter = resolved["services"]["exporter"]
    # Up and scraped while a first start downloads the model (no LLMExporterDown meanwhile).
    assert "model-pull" not in exporter["depends_on"]
    assert exporter["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert "--results.max-size=100MB" in exporter["command"]
    assert "--local-url=http://ollama:11434" in resolved["services"]["model-pull"]["command"]


@pytest.mark.prometheus
def test_the_default_stack_runs_node_exporter_for_the_host_verdicts(resolved):
    """Without node_exporter bottleneck.yml has no host series: no host verdict and empty host
    panels. It is part of `docker compose up -d` with no override file."""
    node = resolved["services"]["node-exporter"]
    assert node["pid"] == "host"  # the host's processes, as node_exporter's Docker instructions say
    assert "--path.rootfs=/host" in node["command"]
    rootfs = [v for v in node["volumes"] if (v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/host"]
    assert rootfs, node["volumes"]
    vol = rootfs[0]
    assert (vol.get("read_only") if isinstance(vol, dict) else vol.split(":")[2].startswith("ro")), vol
    assert not node.get("ports"), "node_exporter is scraped on the stack's network, never published"
    assert "network_mode" not in node  # host networking would publish :9100 on every interface
    # Prometheus gets its target file where the node-exporter job's file_sd glob looks.
    with open(os.path.join(ROOT, "prometheus", "prometheus.yml"), encoding="utf-8") as f:
        jobs = {j["job_name"]: j for j in yaml.safe_load(f)["scrape_configs"]}
    globs = [g for c in jobs["node-exporter"]["file_sd_configs"] for g in c["files"]]
    volumes = resolved["services"]["prometheus"]["volumes"]
    mounts = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in volumes]
    node_files = [m for m in mounts if any(fnmatch.fnmatch(m, g) for g in globs)]
    assert len(node_files) == 1, mounts
    # The target file names the host's node_exporter and joins it to the stack's Ollama target.
    with open(os.path.join(ROOT, "docker", "scrape", "node-exporter.yml"), encoding="utf-8") as f:
        groups = yaml.safe_load(f)
    assert groups[0]["targets"] == ["node-exporter:9100"]
    with open(os.path.join(ROOT, "scenarios", "default.yaml"), encoding="utf-8") as f:
        scenario = yaml.safe_load(f)
    names = {t["name"] for t in scenario.get("targets", [])} or {"local"}
    assert groups[0]["labels"]["target"] in names


@pytest.mark.prometheus
def test_the_monitoring_has_cpu_limits_and_the_measured_path_has_none(resolved):
    """Prometheus (compaction, rule evaluation) and Grafana (dashboard bursts) must not take the
    cores Ollama decodes on; the exporter and Ollama must not be throttled, or the throttling
    would be measured as latency."""
    services = resolved["services"]
    cores = os.cpu_count() or 1
    for name, default in (("prometheus", 1.0), ("grafana", 0.5)):
        assert float(services[name]["cpus"]) == default, name
        assert 0 < float(services[name]["cpus"]) <= max(1.0, cores / 2), name
    for name in ("exporter", "ollama"):
        assert "cpus" not in services[name] and "cpu_quota" not in services[name], name
        limits = services[name].get("deploy", {}).get("resources", {}).get("limits", {})
        assert "cpus" not in limits, name


@pytest.mark.prometheus
def test_the_old_node_override_still_resolves_and_changes_nothing(tmp_path, resolved):
    env_file = _env_file(tmp_path)
    res = _compose(["-f", NODE_OVERRIDE, "config"], env_file)
    assert res.returncode == 0, res.stderr
    def normal(services):
        # docker-compose 1.x reorders the volumes of a service when it merges two files.
        return {name: {**svc, "volumes": sorted(map(str, svc.get("volumes", [])))} for name, svc in services.items()}

    assert normal(yaml.safe_load(res.stdout)["services"]) == normal(resolved["services"])


def test_the_stack_test_leaves_out_only_the_services_it_has_no_image_for():
    # The private engine of tests/test_stack_engine.py has stand-in images only (docker/standins/):
    # none for Grafana or node_exporter. Everything else must run as users run it.
    with open(STACK_TEST_OVERRIDE, encoding="utf-8") as f:
        services = yaml.safe_load(f)["services"]
    assert set(services) == {"grafana-init", "grafana", "node-exporter"}
    for name, svc in services.items():
        assert set(svc) == {"profiles"}, name


# ---------------------------------------------------------------- the file itself


def test_every_image_is_pinned():
    services = _raw()["services"]
    for name, svc in services.items():
        if "build" in svc:
            continue  # built from this repository (its Dockerfile pins the base image)
        image = svc.get("image")
        assert image, f"{name}: no image"
        assert PINNED.match(image) and (":" in image or "@" in image), f"{name}: {image} is not pinned"
        tag = image.split("@")[0].rsplit(":", 1)[-1]
        assert tag not in FLOATING_TAGS, f"{name}: {image}"
    for override in OVERRIDES:
        with open(override, encoding="utf-8") as f:
            for svc in yaml.safe_load(f)["services"].values():
                if "image" in svc:
                    assert PINNED.match(svc["image"]) and ":" in svc["image"], f"{override}: {svc['image']}"
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("FROM "):
                base = line.split()[1]
                assert ":" in base and base.split(":")[1] not in FLOATING_TAGS, line


def test_ports_in_the_file_name_the_loopback_address():
    for name, svc in _raw()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_long_running_services_have_healthchecks_and_restart():
    services = _raw()["services"]
    for name in HEALTHCHECKED:
        svc = services[name]
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    # Anchors: `<<: *hardening` sets restart and no-new-privileges on each long-running service.
    resolved_raw = _raw()
    for name in LONG_RUNNING:
        svc = resolved_raw["services"][name]
        assert svc.get("restart") == "unless-stopped", name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
    assert services["model-pull"]["restart"] == "no"


def test_state_lives_in_named_volumes():
    data = _raw()
    named = set(data["volumes"])
    expected = {"ollama": "/root/.ollama", "exporter": "/var/lib/ollama-perf-exporter", "prometheus": "/prometheus",
                "alertmanager": "/alertmanager", "grafana": "/var/lib/grafana"}
    for name, path in expected.items():
        mounts = [v for v in data["services"][name]["volumes"] if v.split(":")[1] == path]
        assert mounts and mounts[0].split(":")[0] in named, f"{name}: {path} is not a named volume"


def test_containers_run_as_non_root_where_the_image_allows():
    services = _raw()["services"]
    for name, svc in services.items():
        if name == "ollama":
            continue  # the official image keeps models under /root and needs root for GPU runtimes
        user = str(svc.get("user", ""))
        assert user and not user.startswith(("0", "root")), f"{name}: user {user!r}"
        assert user.split(":")[0] != "0"


def test_config_files_mounted_into_the_stack_exist():
    for name, svc in _raw()["services"].items():
        for vol in svc.get("volumes", []):
            # ${VAR:-./default}:/path mounts the default unless .env says otherwise.
            vol = re.sub(r"^\$\{[A-Z_]+:-([^}]*)\}", r"\1", vol)
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert os.path.exists(os.path.join(ROOT, src)), f"{name}: {src} does not exist"


def test_env_example_documents_every_variable_the_compose_file_reads():
    text = "\n".join(line for line in open(COMPOSE, encoding="utf-8") if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = open(ENV_EXAMPLE, encoding="utf-8").read()
    documented = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"
    gitignore = open(os.path.join(ROOT, ".gitignore"), encoding="utf-8").read().split()
    assert ".env" in gitignore


# ---------------------------------------------------------------- the model-pull script


class _PullStub:
    """Just enough of Ollama's API for pull-models.py: version, tags, a streamed pull."""

    def __init__(self, present=("already:latest",), fail=()):
        self.present = set(present)
        self.fail = set(fail)
        self.pulled = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/api/version":
                    self._json(200, {"version": "0.33.1"})
                elif self.path == "/api/tags":
                    self._json(200, {"models": [{"name": m, "model": m} for m in sorted(stub.present)]})
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model = body["model"]
                stub.pulled.append(model)
                if model in stub.fail:
                    self._json(500, {"error": f"pull model manifest: file does not exist: {model}"})
                    return
                lines = [{"status": "pulling manifest"}]
                lines += [{"status": "pulling abc", "total": 1000, "completed": c} for c in (0, 300, 700, 1000)]
                lines += [{"status": "verifying sha256 digest"}, {"status": "success"}]
                data = "".join(json.dumps(x) + "\n" for x in lines).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _run_pull(config_path, env_extra=None, args=("--wait", "5")):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update(env_extra or {})
    env["PYTHONPATH"] = ROOT
    return subprocess.run([sys.executable, PULL_SCRIPT, str(config_path), "--timeout", "10", *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_pull_script_pulls_missing_models_from_the_scenario_file(tmp_path):
    with _PullStub() as stub:
        cfg = tmp_path / "s.yaml"
        cfg.write_text(
            "scenarios:\n"
            "  - {name: a, model: '${OLLAMA_PERF_MODEL:-fallback:1b}', cases: {c: {prompt: hi}}}\n"
            "  - {name: b, model: already, cases: {c: {prompt: hi}}}\n"
            "  - {name: c, model: 'qwen:0.5b', cases: {c: {prompt: hi}}}\n"
        )
        res = _run_pull(cfg, {"OLLAMA_HOST": stub.url, "OLLAMA_PERF_MODEL": "llama3.2:1b"})
        assert res.returncode == 0, res.stdout + res.stderr
        assert sorted(stub.pulled) == ["llama3.2:1b", "qwen:0.5b"]  # `already` is present as already:latest
        assert "already: already present" in res.stdout
        assert "llama3.2:1b: pulling abc 30%" in res.stdout and "llama3.2:1b: ready" in res.stdout


def test_pull_script_fails_when_a_pull_fails(tmp_path):
    with _PullStub(fail={"nope:1b"}) as stub:
        cfg = tmp_path / "s.yaml"
        cfg.write_text(f"targets: [{{name: t, url: '{stub.url}'}}]\n"
                       "scenarios: [{name: a, model: 'nope:1b', cases: {c: {prompt: hi}}}]\n")
        res = _run_pull(cfg, args=("--wait", "5", "--local-url", stub.url))
        assert res.returncode == 1
        assert "nope:1b: pull failed: HTTP 500: pull model manifest" in res.stdout


def _closed_port_url():
    from tests.kit.exporters import free_port
    return f"http://127.0.0.1:{free_port()}"


def test_pull_script_pulls_only_onto_the_local_server(tmp_path):
    with _PullStub() as stub, _PullStub() as remote:
        cfg = tmp_path / "s.yaml"
        cfg.write_text(f"targets: [{{name: here, url: '{stub.url}'}}, {{name: there, url: '{remote.url}'}},"
                       f" {{name: down, url: '{_closed_port_url()}'}}]\n"
                       "scenarios: [{name: a, model: 'qwen:0.5b', cases: {c: {prompt: hi}}}]\n")
        started = time.monotonic()
        res = _run_pull(cfg, args=("--wait", "30", "--local-url", stub.url))
        assert res.returncode == 0, res.stdout + res.stderr
        assert stub.pulled == ["qwen:0.5b"] and remote.pulled == []
        assert "there: not the local server" in res.stdout and "down: not the local server" in res.stdout
        assert time.monotonic() - started < 20  # the down server is never waited for


def test_pull_script_gives_up_on_a_local_server_that_never_answers(tmp_path):
    url = _closed_port_url()
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"targets: [{{name: here, url: '{url}'}}]\n"
                   "scenarios: [{name: a, model: 'qwen:0.5b', cases: {c: {prompt: hi}}}]\n")
    res = _run_pull(cfg, args=("--wait", "1", "--local-url", url))
    assert res.returncode == 3 and "here: no answer after 1s" in res.stdout


def test_pull_script_local_url_matches_the_exporters_default_port():
    import importlib.util
    spec = importlib.util.spec_from_file_location("pull_models", PULL_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod._address("http://ollama") == mod._address("ollama:11434") == ("http", "ollama", 11434)
    assert mod._address("http://Ollama:11434/") == ("http", "ollama", 11434)
    assert mod._address("https://ollama") != mod._address("http://ollama")


def test_pull_script_rejects_a_bad_scenario_file(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("scenarios: [{name: a, model: m, cases: {c: {prompt: hi}}, bogus: 1}]\n")
    res = _run_pull(cfg)
    assert res.returncode == 2 and "bogus: unknown key" in res.stderr


def test_every_override_resolves_with_loopback_ports(tmp_path):
    env_file = _env_file(tmp_path)
    for override in ALL_OVERRIDES:
        res = _compose(["-f", override, "config"], env_file)
        assert res.returncode == 0, f"{override}: {res.stderr}"
        for name, svc in yaml.safe_load(res.stdout)["services"].items():
            for port in svc.get("ports", []):
                host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
                assert host_ip == "127.0.0.1", (override, name, port)
