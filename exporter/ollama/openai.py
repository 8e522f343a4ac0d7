"""The OpenAI-compatible chat API (`api: openai`): the request, the streamed chunks, the errors.

`POST /v1/chat/completions` with `stream: true` and `stream_options: {include_usage: true}`,
read as server-sent events (sse.py) off the same timed readers as the native API, so every
chunk keeps its kernel receive stamp. Written to the API as OpenAI documents it, not to one
server, so it accepts every shape seen in the wild:

- a first chunk with the `role` and empty content (not a token: TTFT waits for text);
- `finish_reason` in a chunk before the usage chunk, or in the same one;
- `usage` in a last chunk whose `choices` is empty, or on the chunk with the finish reason,
  or not at all (token counts are then absent, not zero);
- reasoning text as `delta.reasoning_content` (vLLM, llama.cpp) or `delta.reasoning` (Ollama);
- `data: [DONE]` at the end; a body that ends cleanly after a finish reason but without
  `[DONE]` is accepted, one that ends before any finish reason is a broken stream.

The API gives no server-side timings (load, prefill, decode durations): those stay None.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator, Optional, Union

from ..config_types import OPENAI_OPTION_NAMES
from .errors import STATUS_REASONS, OllamaError, says_context_exceeded
from .sse import EventSplitter
from .wire import FinalStats, StreamChunk

PATH = "/v1/chat/completions"
ACCEPT = "text/event-stream"
OPTION_NAMES = OPENAI_OPTION_NAMES  # scenario option -> OpenAI name; the config refuses the rest
SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def chat_completions_path(base_path: str) -> str:
    """`/v1/chat/completions`, or `/chat/completions` when the target's URL already ends in /v1."""
    return PATH[len("/v1"):] if base_path.rstrip("/").endswith("/v1") else PATH


def response_format(fmt: Union[str, dict[str, Any]]) -> dict[str, Any]:
    """A case's `format` as OpenAI's `response_format`: JSON mode for "json", else the schema.

    The schema's name is required by the API (letters, digits, _ and -, up to 64): the schema's
    own `title` where it is such a name, else "response". `strict` is not sent: strict mode
    accepts only schemas that list every property as required and forbid others, which an
    ordinary schema need not do."""
    if fmt == "json":
        return {"type": "json_object"}
    title = fmt.get("title") if isinstance(fmt, dict) else None
    name = title if isinstance(title, str) and SCHEMA_NAME.match(title) else "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": fmt}}


def chat_completions_request(model: str, messages: list[dict[str, str]], options: Optional[dict[str, Any]],
                             base_path: str = "", fmt: Union[str, dict[str, Any], None] = None) -> tuple[str, bytes]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    for name, value in (options or {}).items():
        if name in OPTION_NAMES:
            body[OPTION_NAMES[name]] = value
    if fmt is not None:
        body["response_format"] = response_format(fmt)
    return chat_completions_path(base_path), json.dumps(body).encode()


# ---- errors ----

def _error_object(body: Any) -> Optional[dict[str, Any]]:
    """The error of an OpenAI-style error body: {"error": {"message", "type", "code"}}; also a bare
    {"error": "text"} (Ollama's native form) and {"message": ...} (some servers' 4xx bodies)."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        return err
    if isinstance(err, str):
        return {"message": err}
    if isinstance(body.get("message"), str) and ("type" in body or "code" in body):
        return body
    return None


def error_text(err: dict[str, Any]) -> str:
    message = err.get("message")
    text = message if isinstance(message, str) and message else "(no message)"
    kind = [str(err[k]) for k in ("type", "code") if isinstance(err.get(k), (str, int)) and err.get(k) != ""]
    return f"{text} ({', '.join(kind)})" if kind else text


def _says_model_missing(err: dict[str, Any]) -> bool:
    code = str(err.get("code") or "").lower()
    message = str(err.get("message") or "").lower()
    return code == "model_not_found" or ("model" in message and any(
        w in message for w in ("not found", "does not exist", "not exist", "no such", "unknown")))


def _says_busy(err: dict[str, Any]) -> bool:
    text = " ".join(str(err.get(k) or "") for k in ("type", "code", "message")).lower()
    return any(w in text for w in ("overloaded", "server busy", "rate limit", "rate_limit", "too many requests",
                                   "unavailable", "loading model", "maximum pending"))


def http_failure(status: int, body: bytes) -> OllamaError:
    """A non-2xx answer with an OpenAI-style error body (or none) -> OllamaError.

    404 is `model_not_found` only when the body says a model is missing: a 404 without such a
    body means the server has no such route (not OpenAI-compatible there). 429 and 503 are the
    server refusing work for now (`server_busy`); 401/403 and the rest are `http_error`."""
    try:
        err = _error_object(json.loads(body))
    except ValueError:
        err = None
    message = error_text(err) if err else (body.decode("utf-8", "replace").strip()[:500] or "(empty body)")
    if status == 404:
        reason = "model_not_found" if err and _says_model_missing(err) else "http_error"
    elif status in (429, 503):
        reason = "server_busy"
    elif err and _says_model_missing(err) and status == 400:
        reason = "model_not_found"
    elif status == 400 and says_context_exceeded(message):
        reason = "context_exceeded"
    else:
        reason = STATUS_REASONS.get(status, "http_error")
        if reason == "model_not_found":
            reason = "http_error"
    return OllamaError(reason, f"HTTP {status}: {message[:500]}", status)


def stream_failure(err: dict[str, Any]) -> OllamaError:
    """An error object inside a 200 stream."""
    if _says_model_missing(err):
        reason = "model_not_found"
    elif _says_busy(err):
        reason = "server_busy"
    elif says_context_exceeded(error_text(err)):
        reason = "context_exceeded"
    else:
        reason = "stream_error"
    return OllamaError(reason, f"error in stream: {error_text(err)[:500]}")


# ---- the stream ----

def _count(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class ChunkReader:
    """Chat-completion chunk objects -> StreamChunks; keeps the finish reason and usage for the end."""

    def __init__(self) -> None:
        self.finish_reason: Optional[str] = None
        self.usage: Optional[dict[str, Any]] = None

    def chunk(self, data: str, received: float) -> Optional[StreamChunk]:
        try:
            obj = json.loads(data)
        except ValueError:
            raise OllamaError("malformed_response", "event data is not JSON") from None
        if not isinstance(obj, dict):
            raise OllamaError("malformed_response", "event data is not a JSON object")
        err = _error_object(obj) if "error" in obj else None
        if err is not None:
            raise stream_failure(err)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = obj.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise OllamaError("malformed_response", "chunk has no choices list")
        answer, thinking = "", 0
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n=1 is asked for; other choices are not this probe's
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise OllamaError("malformed_response", "chunk choice has no delta object")
            content = delta.get("content")
            if isinstance(content, str):
                answer += content
            for key in ("reasoning_content", "reasoning"):
                if isinstance(delta.get(key), str):
                    thinking += len(delta[key])
                    break
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        if not answer and not thinking:
            return None
        return StreamChunk(received, len(answer) + thinking, None, thinking, answer=answer)

    def final(self, received: float) -> StreamChunk:
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        stats = FinalStats(prompt_eval_count=_count(usage.get("prompt_tokens")),
                           eval_count=_count(usage.get("completion_tokens")),
                           done_reason=self.finish_reason, cached_prompt_tokens=cached)
        return StreamChunk(received, 0, stats)


def sse_chunks(body: Iterator[tuple[bytes, float]]) -> Iterator[StreamChunk]:
    """The chunks of a streamed chat completion, the last one carrying the final stats."""
    events = EventSplitter()
    reader = ChunkReader()
    received = 0.0
    for data, received in body:
        for event in events.feed(data):
            if event.event == "error":
                try:
                    err = _error_object(json.loads(event.data)) or {"message": event.data}
                except ValueError:
                    err = {"message": event.data}
                raise stream_failure(err)
            if event.data.strip() == "[DONE]":
                yield reader.final(received)
                return
            chunk = reader.chunk(event.data, received)
            if chunk is not None:
                yield chunk
    if reader.finish_reason is not None:
        yield reader.final(received)  # ended cleanly after its finish reason, without [DONE]
        return
    if events.stray is not None:  # an error written as a bare JSON line, not as an event
        try:
            stray = _error_object(json.loads(events.stray))
        except ValueError:
            stray = None
        if stray is not None:
            raise stream_failure(stray)
    raise OllamaError("stream_error", "stream ended before data: [DONE]")
