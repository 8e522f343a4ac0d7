"""Multi-turn probes: a case with `turns` replays a conversation, one measured request per turn.

Each turn sends the system prompt, every earlier user message with the answer the model gave,
and the new user message, so a server that keeps the conversation's prefix in its prompt (KV)
cache only has to prefill the new part. Every turn is a full ProbeResult (TTFT, gaps, counts)
with its `turn` number; a failed turn ends the conversation (the later turns would not be the
same conversation).

Prompt tokens served from the cache, per turn, in order of trust (`cache_source`):
- "server": the server says so (`usage.prompt_tokens_details.cached_tokens` on the OpenAI API);
- "count": the server counted fewer prompt tokens than the conversation it was sent already
  holds (the previous turn's prompt and answer): it counted only what it evaluated, so the
  carried-over prefix came from the cache (servers that report prompt_eval_count this way);
- "timing": Ollama's own API, where the count is the whole prompt (0.11.4 counts every prompt
  token, cached or not) but prompt_eval_duration covers only the tokens it evaluated: the turn's
  evaluated tokens are estimated from the first turn's prefill rate, and the rest of the prompt
  counts as cached (at most the carried-over prefix). The first turn must itself be prefilled
  from scratch for this to hold: give the scenario `unique_prompt: true`. A short tail
  prefills slower per token than a long prompt, so this estimate errs towards fewer cached
  tokens.
Otherwise the cached count stays None (unknown), and the turn does not enter the hit ratio.
"""

from __future__ import annotations

import uuid
from typing import Optional

from .config import Case, Scenario
from .ollama import OllamaClient
from .probe import probe_once
from .results import ProbeResult


def estimate_cache(result: ProbeResult, previous: ProbeResult, first: ProbeResult) -> None:
    """Fill in a later turn's cached prompt tokens where the server did not report them."""
    if result.cache_source is not None or not result.ok or result.prompt_eval_count is None:
        return
    if previous.prompt_size_tokens is None:
        return
    prefix = previous.prompt_size_tokens + (previous.eval_count or 0)
    if result.prompt_eval_count < prefix:
        result.cached_prompt_tokens, result.cache_source = prefix, "count"
        return
    rate = first.prompt_tokens_per_s
    if rate and result.prompt_eval_duration_s is not None:
        evaluated = result.prompt_eval_duration_s * rate
        cached = min(max(result.prompt_eval_count - evaluated, 0.0), float(prefix))
        result.cached_prompt_tokens, result.cache_source = int(round(cached)), "timing"


def run_conversation(client: OllamaClient, scenario: Scenario, case: Case, *, concurrency: int = 1,
                     batch: int = 0, run_id: str = "") -> list[ProbeResult]:
    """Send the case's turns in order, each with the conversation so far -> one record per turn sent."""
    history: list[dict[str, str]] = []
    results: list[ProbeResult] = []
    for i, text in enumerate(case.turns):
        prompt = f"[{uuid.uuid4().hex[:8]}] {text}" if i == 0 and scenario.unique_prompt else text
        result, answer = probe_once(client, scenario, case, concurrency=concurrency, batch=batch, run_id=run_id,
                                    prompt=prompt, history=list(history), turn=i + 1)
        if results:
            estimate_cache(result, results[-1], results[0])
        results.append(result)
        if not result.ok:
            break
        history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return results


def cache_hit_ratio(results: list[ProbeResult]) -> Optional[float]:
    """Cached prompt tokens over the prompt tokens of the turns whose cached count is known."""
    known = [(r.cached_prompt_tokens, r.prompt_size_tokens) for r in results
             if r.cached_prompt_tokens is not None and r.prompt_size_tokens]
    size = sum(s for _, s in known if s)
    return sum(c for c, _ in known if c is not None) / size if size else None
