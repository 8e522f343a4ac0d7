"""Sweeps: each listed value multiplies a scenario's cases, and names the case it makes.

A swept case is named `base@key=value,...`. Values are written so that distinct values give
distinct names: a float in its shortest round-trip form (0.1 and 0.1000001 stay apart, where
`%g` would print both as 0.1), without a trailing `.0` (0.0 is written 0, as before).
Duplicate names that remain (a value listed twice, or a literal case spelled like a swept one)
are refused by the loader's one uniqueness check.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Optional

from pydantic import Field

from .config_types import Strict

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]


class Sweep(Strict):
    """Each list multiplies the cases: every case runs at every listed value."""

    temperature: Optional[list[NonNegative]] = None
    num_predict: Optional[list[int]] = None
    num_ctx: Optional[list[Positive]] = None
    top_k: Optional[list[int]] = None
    top_p: Optional[list[float]] = None
    seed: Optional[list[int]] = None
    prompt_repeat: Optional[list[Annotated[int, Field(ge=1, le=10000)]]] = None


def format_value(value: Any) -> str:
    """A sweep value as it appears in a case name; injective per type."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def case_name(base: str, params: dict[str, Any]) -> str:
    if not params:
        return base
    return base + "@" + ",".join(f"{k}={format_value(v)}" for k, v in params.items())


def points(sweep: Optional[Sweep]) -> list[dict[str, Any]]:
    """Every combination of the swept values, keys in the order of the fields above (whatever the
    file's order, a case keeps its name); one empty point without a sweep."""
    lists = sweep.model_dump(exclude_none=True) if sweep else {}
    keys = list(lists)
    return [dict(zip(keys, values)) for values in itertools.product(*(lists[k] for k in keys))]
