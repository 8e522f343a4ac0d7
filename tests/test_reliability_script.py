"""scripts/reliability.py (`make reliability`) in its quick mode, fake server only.

Nothing else runs the script, and it rotted once: a step relied on scheduler behaviour that had
since changed, and only a full `make reliability` would have shown it. This runs every step the
script has without a real Ollama and checks that each one completes and prints its table.
"""

import importlib.util
import re

from tests.kit.exporters import ROOT

MS = r"\d+\.\d\d ms"


def _script():
    spec = importlib.util.spec_from_file_location("reliability", f"{ROOT}/scripts/reliability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_without_real_ollama_prints_every_table_and_passes(capsys):
    assert _script().main(["--no-real", "--quick", "--soak", "0"]) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    verdicts = {row[0]: row[-1] for row in cells if len(row) == 9 and row[0] != "fault"}
    assert verdicts == {"stall after response headers": "ok", "burst of 503 (queue full)": "ok",
                        "host name does not resolve": "ok", "accepts connections, never answers": "ok"}, out
    stall = out[out.index("| /metrics while"):].splitlines()
    assert stall[:2] == ["| /metrics while | p50 | p99 |", "|---|---|---|"], out
    assert re.fullmatch(rf"\| idle exporter \| {MS} \| {MS} \|", stall[2]), out
    assert re.fullmatch(rf"\| 8 probes stalled \| {MS} \| {MS} \|", stall[3]), out
