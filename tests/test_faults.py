"""The fault matrix (tests/kit/faults.py): each fault gives its reason, success 0, a log line, no leaked thread."""

import pytest

from tests.kit import faults
from tests.kit.exporters import free_port
from tests.kit.real_ollama import OllamaServer


def check(outcome):
    assert outcome.reasons and set(outcome.reasons) <= set(outcome.expected), outcome
    assert outcome.success_gauge == 0, outcome
    assert outcome.logged, outcome
    assert outcome.threads_after <= outcome.threads_before, outcome


@pytest.mark.parametrize("fault", [faults.stall_after_headers, faults.burst_of_503, faults.unresolvable_host,
                                   faults.black_hole])
def test_fake_server_faults(fault):
    outcome = fault()
    check(outcome)
    if fault is not faults.unresolvable_host and fault is not faults.black_hole:
        assert outcome.recover_s is not None and outcome.recover_s < 5
    if fault is faults.burst_of_503:
        assert outcome.lost == 5


@pytest.fixture
def make_server(real_ollama, tmp_path):
    def make():
        return OllamaServer(real_ollama.binary, real_ollama.models_dir, free_port(),
                            str(tmp_path / "serve.log")).start()
    return make


@pytest.mark.ollama
@pytest.mark.parametrize("fault", [faults.server_killed_mid_stream, faults.server_restarted, faults.runner_killed,
                                   faults.load_longer_than_timeout])
def test_real_server_faults(fault, make_server):
    outcome = fault(make_server)
    check(outcome)
    assert outcome.recover_s is not None and outcome.recover_s < 60, outcome
    if fault is faults.server_restarted:
        assert outcome.notes == "server_up 0 while down, 1 after restart"
