"""The short version of `make alert-eval`: the real LiveStats code and the real regression.yml over
4 simulated days of the 1-minute and hourly schedules, on independent, drifting and daily-cycling
noise. promtool evaluates the rule file on the gauges, and must agree with the Python replay of the
rule that the long evaluation uses.

It asserts on what the alerts catch and what they leave alone, not on delays.
"""

import pytest

from tests.kit import alert_eval


@pytest.mark.prometheus
def test_quick_alert_eval_detects_regressions_and_stays_quiet_on_noise(tmp_path, capsys):
    alert_eval.main(["--quick", "--jobs", "2", "--keep", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("alert-eval: ")
    # promtool on the real rule file fires exactly where the replay does.
    for schedule in ("1m", "1h"):
        assert f"promtool {schedule}: " in out and "DISAGREES" not in out, out
    rows = {}
    for schedule in ("1m", "1h"):
        section = out.split(f"schedule {schedule}:", 1)[1].split("schedule ", 1)[0]
        for line in section.splitlines():
            parts = line.split()
            if parts and parts[0] in ("step", "noise"):
                rows[(schedule, parts[0], parts[1], parts[2], parts[3])] = parts
    # Every +25 % and +50 % step (latency up, tokens/s down) is caught at both schedules.
    steps = [k for k in rows if k[1] == "step"]
    assert len(steps) == 4, out
    for key in steps:
        detected, injected = rows[key][5].split("/")
        assert detected == injected and int(injected) >= 2, (key, out)
    # Independent, drifting (30 min) and daily-cycling (+-10 %) noise raise nothing.
    noise = [k for k in rows if k[1] == "noise"]
    assert len(noise) == 12, out
    for key in noise:
        assert float(rows[key][-2]) == 0.0, (key, out)
