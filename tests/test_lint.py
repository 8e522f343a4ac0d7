"""Lint and types run with the tests, so `make test` (and CI) fails on a finding.

What is checked is configured in pyproject.toml: ruff over the repository, mypy over the
modules listed in [tool.mypy] files.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("tool", [["ruff", "check", "--no-cache", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_clean(tool):
    res = subprocess.run([sys.executable, "-m", *tool], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(tool)} exited {res.returncode}:\n{res.stdout}{res.stderr}"
