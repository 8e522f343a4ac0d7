"""Cells and tables of the Markdown report."""

from __future__ import annotations

from typing import Optional


def num(v: Optional[float], digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}"


def pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:+.1f}%"


def mib(v: Optional[float]) -> str:
    return "-" if v is None else f"{v / 2**20:.0f} MiB"


def noise(flag: Optional[bool]) -> str:
    return {True: "yes", False: "no (within noise)", None: "n/a"}[flag]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
