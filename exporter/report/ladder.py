"""What fits: a context-length ladder.

Per step the model is unloaded and run with `num_ctx` set to the step and a prompt filling
part of it, so the server allocates a KV cache of that size. Recorded per step: the
server's loaded size (/api/ps), the process tree's resident memory, VRAM, and prefill speed.
A straight line through memory against context gives the KV-cache bytes per token, set
against the estimate from the model's dimensions: 2 (K and V) x layers x KV heads x head
dimension x 2 bytes (f16, Ollama's default cache type).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..config import Config
from ..ollama import OllamaClient, OllamaError, same_model
from ..probe import run_probe
from ..server_stats import ProcessTree

TOKENS_PER_WORD = 1.3  # English text in a BPE vocabulary, roughly: sizes the prompt, not a measurement


@dataclass(frozen=True)
class ContextLadder:
    contexts: tuple[int, ...]
    fill: float = 0.5  # prompt length as a share of the step's context

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _prompt(base: str, tokens: int) -> str:
    words = base.split() or ["token"]
    n = max(1, int(tokens / TOKENS_PER_WORD))
    return " ".join(words[i % len(words)] for i in range(n))


def run_context_ladder(config: Config, ladder: ContextLadder, sinks: list) -> list[dict[str, Any]]:
    """For each scenario and target: its first case at every context size. Returns the memory facts per step."""
    steps = []
    for scenario in config.scenarios:
        for target in scenario.targets:
            client = OllamaClient(target)
            tree = ProcessTree(target.process_match, target.port) if target.process_match else None
            case = scenario.cases[0]
            for ctx in ladder.contexts:
                try:
                    client.unload(scenario.model)  # a new context size means a new KV cache: load afresh
                except OllamaError:
                    pass
                step_case = dataclasses.replace(case, name=f"{case.name}@num_ctx={ctx}",
                                                prompt=_prompt(case.prompt, int(ctx * ladder.fill)),
                                                options={**case.options, "num_ctx": ctx})
                r = run_probe(client, scenario, step_case)
                r.start = "cold"  # unloaded just before: every step loads the model
                for sink in sinks:
                    sink.on_result(r)
                sample = tree.sample() if tree else None
                try:
                    running = next((m for m in client.running_models() if same_model(m.name, scenario.model)), None)
                except OllamaError:
                    running = None
                steps.append({
                    "target": target.name, "model": scenario.model, "scenario": scenario.name, "case": case.name,
                    "num_ctx": ctx, "ok": r.ok, "reason": r.reason,
                    "prompt_tokens": r.prompt_eval_count, "prefill_tps": r.prompt_tokens_per_s,
                    "ttft_s": r.ttft_s, "load_s": r.load_duration_s,
                    "rss_bytes": sample.resident_bytes if sample else None,
                    "loaded_size_bytes": running.size if running else None,
                    "size_vram_bytes": running.size_vram if running else None,
                    "server_context_length": running.context_length if running else None,
                })
    return steps


def kv_bytes_per_token(facts: dict[str, Any], cache_bytes: float = 2.0) -> Optional[float]:
    layers, heads, emb = facts.get("block_count"), facts.get("head_count"), facts.get("embedding_length")
    kv_heads = facts.get("head_count_kv") or heads
    if not (layers and heads and emb and kv_heads):
        return None
    return 2 * layers * kv_heads * (emb / heads) * cache_bytes


def _slope(x: list[float], y: list[float]) -> Optional[dict[str, float]]:
    pts = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len({a for a, _ in pts}) < 2:
        return None
    xs, ys = np.array([a for a, _ in pts], float), np.array([b for _, b in pts], float)
    slope, intercept = np.polyfit(xs, ys, 1)
    pred = slope * xs + intercept
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1 - float(((ys - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"bytes_per_token": float(slope), "intercept_bytes": float(intercept), "r2": r2, "points": len(pts)}


def ladder_fit(steps: list[dict[str, Any]], system: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (target, model, scenario): the steps, the fitted KV bytes per token, and theory."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in steps:
        groups.setdefault((s["target"], s["model"], s["scenario"], s["case"]), []).append(s)
    out = []
    for (target, model, scenario, case), rows in groups.items():
        ok = [r for r in rows if r["ok"]]
        ctx = [r["server_context_length"] or r["num_ctx"] for r in ok]
        facts = (system.get("targets", {}).get(target, {}).get("models", {}) or {}).get(model, {})
        theory = kv_bytes_per_token(facts)
        fits = {"loaded_size": _slope(ctx, [r["loaded_size_bytes"] for r in ok]),
                "rss": _slope(ctx, [r["rss_bytes"] for r in ok])}
        for fit in fits.values():
            if fit and theory:
                fit["ratio_to_theory"] = fit["bytes_per_token"] / theory
        out.append({"target": target, "model": model, "scenario": scenario, "case": case, "steps": rows,
                    "theory_bytes_per_token": theory,
                    "theory_formula": (f"2 x {facts['block_count']} layers x {facts.get('head_count_kv') or facts['head_count']}"
                                       f" KV heads x {facts['embedding_length'] / facts['head_count']:g} dims x 2 bytes")
                    if theory else None,
                    "fits": fits})
    return out
