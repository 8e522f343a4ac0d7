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
