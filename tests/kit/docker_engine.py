"""A private Docker engine for the stack test, and the compose project it runs.

The engine is this machine's Debian `dockerd`, started with its own data root, exec root and
socket, so it shares nothing with any other engine here: no default bridge (`docker0` is
never created), no iptables rules, no IP forwarding. Compose's networks are bridges of this
engine only; published ports are served by Docker's userland proxy on 127.0.0.1, so traffic
never leaves the machine. The image store is kept between runs (in the cache) so images are
built once; containers and volumes are the test's to remove.

dockerd is started with a parent-death signal: if the test process dies, dockerd gets
SIGTERM and stops its containers.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

PR_SET_PDEATHSIG = 1


def cache_dir() -> Path:
    base = os.environ.get("OLLAMA_PERF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ollama-perf-exporter")
    return Path(base) / "stack"


def docker_cli() -> str:
    """Debian's docker client next to its dockerd, else whatever `docker` is on PATH."""
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if not found:
        raise RuntimeError("no docker client: `make system-deps` installs Debian's docker.io")
    return found


def _die_with_parent():  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EngineError(RuntimeError):
    pass


class DockerEngine:
    """dockerd with its own everything; `start()`, then `env` for clients, then `stop()`."""

    # An address pool no other network here uses; compose takes one /24 per network.
    ADDRESS_POOL = "base=10.213.0.0/16,size=24"

    def __init__(self, state_dir: Optional[Path] = None):
        self.state_dir = Path(state_dir or cache_dir() / "engine")
        self.data_root = self.state_dir / "data"
        # Unix socket paths are short (108 bytes): the run-time folder lives in /tmp.
        self.exec_root = Path(tempfile.mkdtemp(prefix="ope-engine-", dir="/tmp"))
        self.socket = self.exec_root / "docker.sock"
        self.log_path = self.state_dir / "dockerd.log"
        self.proc: Optional[subprocess.Popen] = None
        self._lock_file = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = self.host
        return env

    def start(self, timeout: float = 60.0) -> "DockerEngine":
        if os.geteuid() != 0:
            raise EngineError("the stack test starts its own dockerd, which needs root")
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.access(dockerd, os.X_OK):
            raise EngineError("dockerd is not installed: `make system-deps` installs Debian's docker.io")
        self.data_root.mkdir(parents=True, exist_ok=True)
        # One engine per data root: a second test run on this machine waits here.
        self._lock_file = open(self.state_dir / "engine.lock", "w")
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        cmd = [
            dockerd,
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "-H", self.host, "--pidfile", str(self.exec_root / "dockerd.pid"),
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false",
            "--default-address-pool", self.ADDRESS_POOL,
            "--storage-driver", "overlay2", "--log-level", "warn",
        ]
        log = open(self.log_path, "wb")  # this run's log only
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited with {self.proc.returncode}: {self.log_tail()}")
            version_call = ["version", "--format", "{{.Server.Version}}"]
            if self.socket.exists() and self.docker(version_call, check=False).returncode == 0:
                return self
            time.sleep(0.3)
        self.stop()
        raise EngineError(f"dockerd did not answer within {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def docker(self, args: Sequence[str], check: bool = True, timeout: float = 120,
               **kw) -> subprocess.CompletedProcess:
        res = subprocess.run([docker_cli(), *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and res.returncode != 0:
            raise EngineError(f"docker {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker(["inspect", container]).stdout)[0]

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM (dockerd then stops its containers), SIGKILL after `timeout`; always unlocks."""
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            shutil.rmtree(self.exec_root, ignore_errors=True)
            if self._lock_file:
                self._lock_file.close()
                self._lock_file = None


class ComposeProject:
    """docker-compose (Debian's 1.29) on the repository's own compose file, in one engine."""

    def __init__(self, engine: DockerEngine, root: str, name: str, env_file: Path, files: Sequence[str]):
        self.engine, self.root, self.name, self.env_file, self.files = engine, root, name, env_file, list(files)

    def run(self, args: Sequence[str], check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        exe = shutil.which("docker-compose")
        if not exe:
            raise EngineError("docker-compose is not installed: `make system-deps` installs it")
        cmd = [exe, "--project-name", self.name, "--project-directory", self.root, "--env-file", str(self.env_file)]
        for f in self.files:
            cmd += ["-f", f]
        env = self.engine.env
        env = {k: v for k, v in env.items()
               if not k.startswith(("GRAFANA_", "OLLAMA_", "PROMETHEUS_", "ALERTMANAGER_", "EXPORTER_"))}
        res = subprocess.run([*cmd, *args], env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise EngineError(f"docker-compose {' '.join(args)} exited {res.returncode}:\n{res.stderr[-3000:]}")
        return res

    def container(self, service: str) -> str:
        """The container id of a service ('' when it has none)."""
        return self.run(["ps", "-q", service]).stdout.strip()

    def state(self, service: str) -> dict:
        cid = self.container(service)
        return self.engine.inspect(cid)["State"] if cid else {}
