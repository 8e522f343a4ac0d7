"""Whether each SLO can be judged at the request rate of its scenario (`--config.check` warnings).

A burn-rate alert of prometheus/rules/slo.yml fires when the share of a case's requests that were
bad, over its long window and its short one, exceeds burn x (1 - objective). Probes send few
requests: at one a minute the hour of the fastest tier holds 60, so one bad request is 1.7% of
it, over 14.4 x 0.1% for a 99.9% objective, and a single slow request pages. Such an objective
cannot be told from chance at that rate.

For each tier this counts the requests a case has in the long window at the fewest (runs at the
longest gap of the schedule) and warns where one bad request is already over the threshold. The
long window decides: the short window lies inside it, so it holds at most as many requests and
one bad request is at least as large a share of them; and the bad request stays in the short
window (between the runs of a rarer schedule, in the latest value of it that the rules read) for
at least the short window's length, longer than any tier's `for:`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from .config import Config, Scenario
from .schedule import longest_gap_s

# Floating-point slack for "exactly at the threshold": the rules compare with a strict `>`.
_EPS = 1e-9


@dataclass(frozen=True)
class Tier:
    alert: str
    burn: float
    long_s: float
    short_s: float
    page: bool  # severity critical (page) or warning (ticket)


# The rows of the SRE workbook's table as prometheus/rules/slo.yml implements them
# (tests/test_slo.py checks that the two agree).
TIERS = (
    Tier("LLMSLOErrorBudgetBurnFast", 14.4, 3600, 300, True),
    Tier("LLMSLOErrorBudgetBurnSlow", 6.0, 6 * 3600, 1800, True),
    Tier("LLMSLOErrorBudgetBurnDaily", 3.0, 86400, 2 * 3600, False),
    Tier("LLMSLOErrorBudgetBurnSteady", 1.0, 3 * 86400, 6 * 3600, False),
)


def requests_per_case_per_run(scenario: Scenario) -> int:
    """Judged requests of one case in one run on one target: every repeat at every concurrency level
    (warm-ups are not judged). The SLO series sum a case over its concurrency levels."""
    return scenario.repeats * sum(scenario.concurrency)


def fewest_runs(window_s: float, gap_s: float) -> int:
    """Runs a window holds at the fewest while it holds any: a window shorter than the schedule's
    gap holds one run, then none."""
    return max(1, math.floor(window_s / gap_s + _EPS))


def _duration(seconds: float) -> str:
    """Its two largest units, rounded down: an upper bound on a schedule stays one ("2h7m")."""
    if seconds < 1:
        return f"{seconds:.2g}s"
    left = math.floor(seconds + _EPS)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or parts:
            parts.append((left // size, unit))
            left %= size
    return "".join(f"{n}{unit}" for n, unit in parts[:2] if n)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.10g}%"


def _cases(names: list[str], total: int) -> str:
    if len(names) == total:
        return "every case" if total > 1 else f"case {names[0]}"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"case{'s' if len(names) > 1 else ''} {shown}"


def _tier_warning(scenario: Scenario, cases: str, objective: float, tier: Tier, gap_s: float) -> Optional[str]:
    per_run = requests_per_case_per_run(scenario)
    runs = fewest_runs(tier.long_s, gap_s)
    requests = runs * per_run
    budget = 1 - objective
    if requests * tier.burn * budget >= 1 - _EPS:
        return None
    long_w = _duration(tier.long_s)
    what = "pages" if tier.page else "opens a ticket"
    # The largest objective at which one bad request stays at or under the threshold.
    # Rounded down to a hundredth of a percent, so the objective suggested is judgeable itself.
    best = math.floor((1 - 1 / (requests * tier.burn)) * 10000 + _EPS) / 10000
    objective_fix = f"an objective of at most {_percent(best)}" if best > 0 else "no objective at this rate"
    needed = math.ceil(1 / (tier.burn * budget) - _EPS)
    runs_needed = math.ceil(needed / per_run)
    rate_fix = (f"at least {_plural(needed, 'request')} of a case per {long_w} "
                f"(a run every {_duration(tier.long_s / runs_needed)} at {per_run} per run, "
                f"or more repeats or concurrency levels)")
    return (
        f"scenario {scenario.name}, {cases}: objective {_percent(objective)} cannot be judged by {tier.alert} "
        f"({'page' if tier.page else 'ticket'}: burn {tier.burn:g} over {long_w} and {_duration(tier.short_s)}): "
        f"its {long_w} window holds as few as {_plural(requests, 'request')} of a case "
        f"({_plural(runs, 'run')} of {per_run}, runs up to {_duration(gap_s)} apart), so one bad request is "
        f"{100 / requests:.3g}% of them, a burn of {1 / requests / budget:.3g} > {tier.burn:g}, and {what} on its own. "
        f"Judgeable with {objective_fix}, or with {rate_fix}."
    )


def slo_warnings(config: Config, now: Optional[datetime] = None) -> list[str]:
    """One warning per scenario, objective and alert tier at which one bad request fires the alert."""
    warnings = []
    for scenario in config.scenarios:
        by_objective: dict[float, list[str]] = {}
        for case in scenario.cases:
            if case.slo is not None:
                by_objective.setdefault(case.slo.objective, []).append(case.name)
        if not by_objective:
            continue
        gap_s = longest_gap_s(scenario, now=now)
        for objective, names in by_objective.items():
            cases = _cases(names, len(scenario.cases))
            for tier in TIERS:
                warning = _tier_warning(scenario, cases, objective, tier, gap_s)
                if warning:
                    warnings.append(warning)
    return warnings
