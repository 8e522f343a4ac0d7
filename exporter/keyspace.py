"""Which label sets may exist: the keys of one configuration, and what each key needs to know.

The state store (state.py) holds numbers only for these keys and renders only these keys,
so a target, case, concurrency level or model that leaves the configuration leaves
/metrics with everything it had, whatever was still in flight when it left.

Three kinds of key:
- case: (target, scenario, model, case, concurrency), the probe series of one case;
- run: (target, scenario), a scenario's runs on one target;
- server: target name, the server's own series.
Each key carries a context: what its series depend on in the configuration besides the key
itself (the case's SLO, the scenario's schedule gap). A key whose context changes is
re-rendered; one whose context is unchanged keeps its cached text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .config import Config, Slo
from .schedule import longest_gap_s

CaseKey = tuple[str, str, str, str, str]
RunKey = tuple[str, str]

CASE, RUN, SERVER = "case", "run", "server"
KINDS = (CASE, RUN, SERVER)


@dataclass(frozen=True)
class CaseContext:
    slo: Optional[Slo] = None
    # The SLO objective is per case, not per concurrency level: the first level's key exports it.
    first_level: bool = True
    turns: int = 0  # a conversation's turns (case `turns`); 0 for a single prompt
    canary: bool = False  # the case has `expect`


@dataclass(frozen=True)
class RunContext:
    gap_s: float = 0.0


@dataclass(frozen=True)
class Keyspace:
    """The keys of one configuration, in a fixed order (config order), with their contexts."""

    keys: dict[str, dict] = field(default_factory=lambda: {kind: {} for kind in KINDS})

    @classmethod
    def of(cls, config: Config) -> "Keyspace":
        cases: dict[CaseKey, CaseContext] = {}
        runs: dict[RunKey, RunContext] = {}
        servers: dict[str, None] = {t.name: None for t in config.targets}
        for scenario in config.scenarios:
            # Per scenario, not per target: a cron schedule's gap is found by walking a week of
            # fire times (~0.1 s for a per-minute cron), and a fleet has many targets.
            gap = longest_gap_s(scenario)
            for target in scenario.targets:
                runs[(target.name, scenario.name)] = RunContext(gap)
                for case in scenario.cases:
                    for i, level in enumerate(scenario.concurrency):
                        key = (target.name, scenario.name, scenario.model, case.name, str(level))
                        cases[key] = CaseContext(case.slo, i == 0, len(case.turns), case.expect is not None)
        return cls({CASE: cases, RUN: runs, SERVER: servers})

    def has(self, kind: str, key) -> bool:
        return key in self.keys[kind]

    def context(self, kind: str, key):
        return self.keys[kind].get(key)
