"""One request -> one result record. The client clock lives here."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from typing import Optional

from .config import Case, Scenario
from .ollama import FinalStats, OllamaClient, OllamaError
from .results import ANSWER_HASH_CHARS, ANSWER_HEAD_CHARS, ProbeResult

log = logging.getLogger(__name__)
ERROR_TEXT_MAX = 300


def run_probe(
    client: OllamaClient,
    scenario: Scenario,
    case: Case,
    *,
    concurrency: int = 1,
    batch: int = 0,
    run_id: str = "",
) -> ProbeResult:
    """Stream one generation and measure it. Never raises for anything the server does."""
    return probe_once(client, scenario, case, concurrency=concurrency, batch=batch, run_id=run_id)[0]


def check_answer(result: ProbeResult, case: Case, answer: str) -> None:
    """A canary's verdict on a successful answer; the answer is kept only as a hash and its head."""
    if case.expect is None or not result.ok:
        return
    result.answer_matched = case.expect.matches(answer)
    result.answer_sha256 = hashlib.sha256(answer.encode()).hexdigest()[:ANSWER_HASH_CHARS]
    result.answer_head = answer[:ANSWER_HEAD_CHARS]


def probe_once(
    client: OllamaClient,
    scenario: Scenario,
    case: Case,
    *,
    concurrency: int = 1,
    batch: int = 0,
    run_id: str = "",
    prompt: Optional[str] = None,
    history: Optional[list[dict[str, str]]] = None,
    turn: Optional[int] = None,
) -> tuple[ProbeResult, str]:
    """One request -> (its record, the answer text). `prompt` and `history` are a conversation's
    turn (conversation.py); by default the case's prompt alone. A canary's answer is checked here
    on a single prompt and on a conversation's last turn."""
    # The prompt's own length, without the unique tag (a conversation's turn: that turn's message).
    prompt_chars = len(case.turns[turn - 1]) if turn is not None and turn <= len(case.turns) else len(case.prompt)
    if prompt is None:
        prompt = f"[{uuid.uuid4().hex[:8]}] {case.prompt}" if scenario.unique_prompt else case.prompt
    result = ProbeResult(
        target=client.target.name,
        scenario=scenario.name,
        model=scenario.model,
        case=case.name,
        concurrency=concurrency,
        api=scenario.api,
        batch=batch,
        run_id=run_id,
        options=dict(case.options),
        prompt_chars=prompt_chars,
        turn=turn,
        structured_output=case.structured_output,
    )
    answer: list[str] = []
    wall_start = time.time()
    t_start = time.monotonic()
    # The client clock starts when the request is sent (DESIGN: "request sent to first
    # token"): connecting, and waiting for the GIL to do it when a batch is released at
    # once, are the client's own overhead. They are kept apart as connect_duration_s.
    sent: list[float] = []
    first: Optional[float] = None
    last: Optional[float] = None
    gaps = result.inter_token_gaps_s
    chunks = 0
    chars = 0
    first_thinking: Optional[float] = None
    first_answer: Optional[float] = None
    thinking_chunks = 0
    final: Optional[FinalStats] = None
    final_received = 0.0
    try:
        for chunk in client.stream(
            scenario.api,
            scenario.model,
            prompt,
            system=case.system,
            options=case.options,
            keep_alive=scenario.keep_alive,
            think=scenario.think,
            timeout=scenario.timeout,
            on_sent=sent.append,
            history=history,
            format=case.format,
        ):
            if chunk.answer:
                answer.append(chunk.answer)
            if chunk.text_len:
                # Only non-empty chunks are tokens; the final chunk usually carries none.
                if first is None:
                    first = chunk.received
                    if chunk.late is not None:
                        result.first_token_stamp_late = chunk.late
                        result.first_token_recovered = chunk.recovered if chunk.late else None
                else:
                    gaps.append(chunk.received - last)
                last = chunk.received
                chunks += 1
                chars += chunk.text_len
                if chunk.thinking_len:
                    thinking_chunks += 1
                    if first_thinking is None:
                        first_thinking = chunk.received
                if chunk.answer_len and first_answer is None:
                    first_answer = chunk.received
            if chunk.final is not None:
                final = chunk.final
                final_received = chunk.received
        # End-to-end ends when the done line arrived, on the same clock as the tokens
        # (kernel receive time where available), not when this thread finished with it.
        # The client's stream ends with the final chunk or raises, so `final` is set here.
        end = final_received
        t0 = sent[0] if sent else t_start
        if chunks == 0:
            raise OllamaError("empty_response", f"model produced no tokens (done_reason={final.done_reason!r})")
        result.ok = True
        result.ttft_s = first - t0
        result.request_duration_s = end - t0
        for f in dataclasses.fields(FinalStats):  # the record keeps the server's figures under the same names
            setattr(result, f.name, getattr(final, f.name))
        if result.cached_prompt_tokens is not None:
            result.cache_source = "server"
    except OllamaError as exc:
        end = time.monotonic()
        t0 = sent[0] if sent else t_start
        result.ok = False
        result.reason = exc.reason
        result.error = exc.message[:ERROR_TEXT_MAX]
        result.http_status = exc.http_status
        result.request_duration_s = end - t0
        if first is not None:
            result.ttft_s = first - t0
    except Exception as exc:  # a bug of ours must not take the scheduler thread down
        end = time.monotonic()
        t0 = sent[0] if sent else t_start
        log.exception("unexpected error while probing %s", client.target.name)
        result.ok = False
        result.reason = "stream_error"
        result.error = f"internal error: {exc!r}"[:ERROR_TEXT_MAX]
        result.request_duration_s = end - t0
    result.output_chunks = chunks
    result.response_chars = chars
    result.thinking_tokens = thinking_chunks
    t0 = sent[0] if sent else t_start
    if first_thinking is not None:
        result.first_thinking_s = first_thinking - t0
    if first_answer is not None:
        result.first_answer_s = first_answer - t0
    result.started_at = wall_start + (t0 - t_start)
    result.ended_at = result.started_at + (end - t0)
    if sent:
        result.sent_at_monotonic = sent[0]
        result.connect_duration_s = sent[0] - t_start
    text = "".join(answer)
    if turn is None or turn == len(case.turns):
        check_answer(result, case, text)
    return result, text
