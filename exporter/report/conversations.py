"""The bench report's view of conversations (cases with turns) and correctness canaries.

From the records alone: per conversation case and turn, the median TTFT, prompt tokens and
cached prompt tokens (with where the cached count came from); per canary case, how many answers
matched, and the distinct answers seen (short hash and head), so a report shows what changed.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Iterable, Optional

from ..results import ProbeResult
from .mdtable import table


def _median(values: Iterable[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def conversation_summary(records: Iterable[ProbeResult]) -> dict[str, Any]:
    turns: dict[tuple, list[ProbeResult]] = defaultdict(list)
    canaries: dict[tuple, list[ProbeResult]] = defaultdict(list)
    for r in records:
        key = (r.target, r.scenario, r.model, r.case)
        if r.turn is not None and r.ok:
            turns[key + (r.turn,)].append(r)
        if r.answer_matched is not None:
            canaries[key].append(r)
    out: dict[str, Any] = {"turns": [], "canaries": []}
    for (target, scenario, model, case, turn), rs in sorted(turns.items()):
        cached = [(r.cached_prompt_tokens, r.prompt_size_tokens) for r in rs
                  if r.cached_prompt_tokens is not None and r.prompt_size_tokens]
        out["turns"].append({
            "target": target, "scenario": scenario, "model": model, "case": case, "turn": turn, "n": len(rs),
            "ttft_s": _median(r.ttft_s for r in rs), "prompt_tokens": _median(r.prompt_eval_count for r in rs),
            "cached_tokens": _median(c for c, _ in cached),
            "cache_hit_ratio": sum(c for c, _ in cached) / sum(s for _, s in cached) if cached else None,
            "cache_source": ",".join(sorted({r.cache_source for r in rs if r.cache_source})) or None,
        })
    for (target, scenario, model, case), rs in sorted(canaries.items()):
        answers = sorted({(r.answer_sha256, (r.answer_head or "")[:60]) for r in rs})
        out["canaries"].append({
            "target": target, "scenario": scenario, "model": model, "case": case, "n": len(rs),
            "matched": sum(1 for r in rs if r.answer_matched), "answers": [list(a) for a in answers],
        })
    return out


def _cell(text: str) -> str:
    """An answer's head inside a table cell: one line, no column breaks."""
    return repr(" ".join(text.split())).replace("|", "\\|")


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def conversations_section(summary: Optional[dict[str, Any]]) -> list[str]:
    if not summary or not (summary.get("turns") or summary.get("canaries")):
        return []
    L: list[str] = []
    if summary["turns"]:
        L += ["## Conversations (cases with turns)", "",
              table(["target", "scenario / case", "turn", "n", "median TTFT s", "median prompt tokens",
                     "median cached tokens", "cache hit ratio", "cached count from"],
                    [[t["target"], f"{t['scenario']} / {t['case']}", str(t["turn"]), str(t["n"]),
                      _fmt(t["ttft_s"], ".3f"), _fmt(t["prompt_tokens"], ".0f"), _fmt(t["cached_tokens"], ".0f"),
                      _fmt(t["cache_hit_ratio"], ".0%"), t["cache_source"] or "unknown"] for t in summary["turns"]]),
              "", "Cached counts come from the server (`server`), from a prompt count below the conversation "
              "already held (`count`), or, on Ollama's native API, from each turn's prefill time against the "
              "first turn's prefill rate (`timing`, an estimate); see docs/conversations-and-canaries.md.", ""]
    if summary["canaries"]:
        L += ["## Correctness canaries", "",
              table(["target", "scenario / case", "answers", "matched", "distinct answers (hash: head)"],
                    [[c["target"], f"{c['scenario']} / {c['case']}", str(c["n"]), str(c["matched"]),
                      "; ".join(f"`{h}`: {_cell(head)}" for h, head in c["answers"])] for c in summary["canaries"]]),
              ""]
    return L
