import os
import socket
import sys
import textwrap
import time

import pytest
from prometheus_client import CollectorRegistry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from exporter.config import load_text  # noqa: E402
from tests.fake_ollama import Behavior, FakeOllama  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scenario_yaml(url: str, *, model="tiny", extra="", cases=None, name="s", target_extra="", top_extra="") -> str:
    cases = cases or {"short": "hello there"}
    case_lines = "\n".join(f"      {k}: {{prompt: {v!r}}}" for k, v in cases.items())
    return textwrap.dedent(f"""\
        targets:
          - name: t1
            url: {url}
            process_match: null
        {target_extra}
        """) + top_extra + textwrap.dedent(f"""\
        scenarios:
          - name: {name}
            model: {model}
            schedule: {{interval: 1h}}
            timeout: 5s
        """) + (textwrap.indent(textwrap.dedent(extra), "    ") if extra else "") + "    cases:\n" + case_lines + "\n"


@pytest.fixture
def registry():
    return CollectorRegistry()


@pytest.fixture
def fake():
    server = FakeOllama(Behavior()).start()
    yield server
    server.stop()


@pytest.fixture
def make_config():
    def make(url, **kw):
        return load_text(scenario_yaml(url, **kw), "test")
    return make


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory):
    """A real Ollama with smollm2-135m, on a free loopback port, for the whole session."""
    from tests.real_ollama import OllamaServer, ollama_binary

    models = tmp_path_factory.mktemp("ollama-models")
    server = OllamaServer(ollama_binary(), str(models), free_port(), str(models / "serve.log")).start()
    try:
        server.create_model()
        yield server
    finally:
        server.stop()


class ExporterProcess:
    """`python -m exporter` on port 0; the real port is read from its start-up log line
    (logged at info, so the log level must stay info or debug)."""

    def __init__(self, args, env=None, timeout=60.0):
        if any(level in args for level in ("warning", "error")):
            raise ValueError("ExporterProcess reads the port from an info log line: keep --log.level info")
        import collections
        import re
        import subprocess
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)  # long soaks log a lot
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        pattern = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        found = wait_for(lambda: next((m for m in map(pattern.search, list(self.lines)) if m), None)
                         or (self.proc.poll() is not None and "exited"), timeout=timeout, what="exporter start")
        if found == "exited":
            raise AssertionError("exporter exited at start:\n" + "".join(self.lines))
        self.port = int(found.group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def scrape(self) -> str:
        import requests

        try:
            return requests.get(self.base + "/metrics", timeout=5).text
        except requests.RequestException:
            return ""

    def stop(self, sig=None, timeout=30) -> int:
        import signal as _signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or _signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except Exception:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode
