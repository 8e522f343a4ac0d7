"""The short version of `make alert-eval`: the real LiveStats code, the real regression.yml,
promtool's engine, over 4 simulated days of the 1-minute and hourly schedules.

It asserts on what the alerts catch and what they leave alone, not on delays.
"""

import pytest

from tests.kit import alert_eval


@pytest.mark.prometheus
def test_quick_alert_eval_detects_regressions_and_stays_quiet_on_noise(tmp_path, capsys):
    alert_eval.main(["--quick", "--jobs", "2", "--keep", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("alert-eval: ")
    rows = {}
    for schedule in ("1m", "1h"):
        section = out.split(f"schedule {schedule}:", 1)[1].split("schedule ", 1)[0]
        for line in section.splitlines():
            parts = line.split()
            if parts and parts[0] in ("step", "noise", "wobble"):
                rows[(schedule, parts[0], parts[1], parts[2])] = parts
    # Every 25% (CV 5%) and 50% (CV 10%) regression is caught, at both schedules, in both directions.
    for schedule in ("1m", "1h"):
        for direction, effects in (("latency", ("+25%", "+50%")), ("tokens/s", ("-25%", "-50%"))):
            for effect in effects:
                detected, injected = rows[(schedule, "step", direction, effect)][5].split("/")
                assert detected == injected and int(injected) >= 2, (schedule, direction, effect, out)
    # Pure noise and 4% wobbles at CV 10% raise nothing.
    for schedule in ("1m", "1h"):
        for kind in ("noise", "wobble"):
            for direction in ("latency", "tokens/s"):
                parts = rows[(schedule, kind, direction, "0%" if kind == "noise" else "+-4%")]
                assert float(parts[-2]) == 0.0, (schedule, kind, direction, out)
