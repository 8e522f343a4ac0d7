"""How the problems of a scenario file are found and worded, every one at once.

Pydantic's errors become `path: message` lines. Names given twice, and names that name nothing,
are read from the raw document, so they are reported together with the problems of entries
that failed validation rather than only after those are fixed.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from .config_types import OPENAI_OPTION_NAMES, unique

M = TypeVar("M", bound=BaseModel)


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for a problem with a mapping's key
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_pydantic(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{format_loc(err['loc'])}: {msg}")
    return problems


def _named(raw: Mapping, key: str, field: str, default: Optional[str] = None) -> tuple[list[tuple[str, str]], bool]:
    """The names of a raw list's entries with where each is given, and whether every entry had one."""
    items = raw.get(key)
    if items is None:
        return [], True
    if not isinstance(items, list):
        return [], False
    named = []
    for i, item in enumerate(items):
        name = item.get(field, default) if isinstance(item, dict) else None
        if isinstance(name, str):
            named.append((name, f"{key}[{i}].{field}"))
    return named, len(named) == len(items)


def cross_problems(raw: Mapping) -> list[str]:
    """Names given twice and names that name nothing. Read from the raw document, so that they
    are found together with the problems of entries that failed validation."""
    targets, targets_complete = _named(raw, "targets", "name", "local")
    groups, groups_complete = _named(raw, "target_files", "group")
    # Targets and groups share one namespace: a scenario's `targets:` names either.
    problems = unique(targets + groups, "target or group name")
    problems += unique(_named(raw, "scenarios", "name")[0], "scenario name")
    if not (targets_complete and groups_complete):
        return problems  # an unreadable name could be the one a scenario refers to
    # With target files and no static list, there is no implicit local target.
    known = list(dict.fromkeys(name for name, _ in targets + groups))
    if not known and not raw.get("target_files"):
        known = ["local"]
    scenarios = raw.get("scenarios")
    for i, scenario in enumerate(scenarios if isinstance(scenarios, list) else []):
        selector = scenario.get("targets") if isinstance(scenario, dict) else None
        for j, name in enumerate(selector if isinstance(selector, list) else []):
            if isinstance(name, str) and name not in known:
                problems.append(f"scenarios[{i}].targets[{j}]: no target named {name!r} (nor target_files group) "
                                f"(known: {', '.join(known)})")
    return problems


def valid_entries(raw: Mapping, key: str, model: type[M]) -> list[tuple[int, M]]:
    """The entries of a raw list that validate on their own, with their index: when the file as a
    whole did not validate, the checks that need a valid entry still run on these."""
    items = raw.get(key)
    valid = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        try:
            valid.append((i, model.model_validate(item)))
        except ValidationError:
            pass  # already reported with the whole file's problems
    return valid


def api_problems(spec: Any, where: str, cases: list[tuple[Any, str]]) -> list[str]:
    """What a case asks of the scenario's API, and what a canary needs."""
    problems = []
    if spec.api == "openai":
        if spec.keep_alive is not None or spec.think is not None:
            problems.append(f"{where}: keep_alive and think are Ollama options; api openai has neither")
    for case, source in cases:
        if case.turns and spec.api == "generate":
            problems.append(f"{where}.{source}: turns need a chat API (api: chat or openai)")
        if spec.api == "openai":
            extra = sorted(set(case.options) - set(OPENAI_OPTION_NAMES))
            if extra:
                problems.append(f"{where}.{source}: api openai has no option {', '.join(extra)} "
                                f"(it takes {', '.join(OPENAI_OPTION_NAMES)})")
        if case.expect is not None and case.options.get("temperature") != 0:
            problems.append(f"{where}.{source}: a case with expect runs at temperature 0")
    return problems
