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


def test_recorded_traces_replay_their_own_requests_in_blocks():
    """The real-Ollama backgrounds (tests/data/traces/) replay recorded requests, in order within
    a 30-minute block, as deviations from the recorded case's median; a step shifts them all."""
    import math
    import random

    from tests.kit.noise import BACKGROUNDS, TRACE_BLOCK_S, Level, trace

    for name in ("ollama-quiet", "ollama-busy"):
        noise = BACKGROUNDS[name]
        for quantity in ("time_to_first_token_seconds", "output_tokens_per_second"):
            recorded = trace(noise.trace, quantity)
            assert set(recorded) == {"short", "medium", "long"}, name
            times, devs = next(iter(recorded.values()))
            assert len(devs) >= 290 and times[-1] - times[0] >= 70 * 60, (name, len(devs))
            lv = Level(noise, random.Random(1), quantity=quantity)
            lv.segments = [(1000.0, 2000.0, 0.25)]
            allowed = {round(d, 9) for case in recorded.values() for d in case[1]}
            for t in range(0, 3000, 15):
                x = lv.run_level(float(t), 0.0)
                first, second = lv.request(x), lv.request(x)
                shift = math.log1p(0.25) if 1000 <= t < 2000 else 0.0
                # Every request is a recorded one (plus the step), not a draw from a model.
                assert round(first - shift, 9) in allowed and round(second - shift, 9) in allowed
            # Within a block, runs 15 s apart replay requests recorded about 15 s apart.
            a = lv.run_level(TRACE_BLOCK_S * 10, 0.0)
            i = lv._i
            lv.run_level(TRACE_BLOCK_S * 10 + 15, 0.0)
            assert lv._i in (i, i + 1, i + 2) and a == lv._trace[1][i]
