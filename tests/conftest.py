"""Pytest fixtures, built on the test kit (tests/kit)."""

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import load_text
from tests.kit.exporters import free_port, scenario_yaml
from tests.kit.fake_ollama import Behavior, FakeOllama


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite the golden files in tests/golden/ from the current output")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


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


def _serve(tmp_path_factory, which: str):
    from tests.kit.real_ollama import OllamaServer, ollama_binary

    models = tmp_path_factory.mktemp(f"ollama-models-{which}")
    server = OllamaServer(ollama_binary(which), str(models), free_port(), str(models / "serve.log")).start()
    try:
        server.create_model()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory):
    """The current Ollama with smollm2-135m, on a free loopback port, for the whole session."""
    yield from _serve(tmp_path_factory, "current")


@pytest.fixture(scope="session")
def compat_ollama(tmp_path_factory):
    """Ollama 0.11.4 with smollm2-135m, for the checks that run on both versions."""
    yield from _serve(tmp_path_factory, "compat")


@pytest.fixture(params=["current", "compat"])
def any_ollama(request):
    """Each of the two, in turn: the Ollama-facing behaviour checks run on both."""
    return request.getfixturevalue("real_ollama" if request.param == "current" else "compat_ollama")


@pytest.fixture(scope="session")
def llama_cpp_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on the same SmolLM2 GGUF, on a free loopback port,
    for the whole session; a second alias names a model file that does not exist."""
    from tests.kit.llama_cpp_server import LlamaCppServer, server_python

    log = tmp_path_factory.mktemp("llama-cpp") / "server.log"
    server = LlamaCppServer(server_python(), free_port(), str(log), extra_models={"gone": "/nonexistent/gone.gguf"})
    with server:
        yield server


GOLDEN_METRICS = Path(__file__).parent / "golden" / "metrics.txt"


@pytest.fixture
def golden_metrics() -> Path:
    """The checked-in /metrics text of tests/test_golden.py."""
    return GOLDEN_METRICS


@pytest.fixture
def golden_families() -> list[str]:
    """Every metric family of the golden exposition, by its `# TYPE` line."""
    return [line.split()[2] for line in GOLDEN_METRICS.read_text(encoding="utf-8").splitlines()
            if line.startswith("# TYPE ")]
