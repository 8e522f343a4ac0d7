"""Ollama's wire format, typed: what we send, and what we read back.

Go's `omitempty` leaves zero values out of Ollama's JSON, so every field of a
record here is optional. Durations arrive in nanoseconds and leave in seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Generator, Iterable, Optional, Union

from .errors import OllamaError, stream_failure

NS = 1e-9


def normalize_model_name(name: str) -> str:
    """Ollama lists 'llama3:latest' for a request that said 'llama3'."""
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


def same_model(a: str, b: str) -> bool:
    return normalize_model_name(a) == normalize_model_name(b)


def _seconds(obj: dict[str, Any], key: str) -> Optional[float]:
    value = obj.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return value * NS
    return None


def _count(obj: dict[str, Any], key: str) -> Optional[int]:
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _number(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class FinalStats:
    """The server's own timings and counts from the stream's final (done) line."""

    load_duration_s: Optional[float] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration_s: Optional[float] = None
    eval_count: Optional[int] = None
    eval_duration_s: Optional[float] = None
    total_duration_s: Optional[float] = None
    done_reason: Optional[str] = None
    # Prompt tokens served from the server's prompt (KV) cache, where the server says so
    # (OpenAI-compatible `usage.prompt_tokens_details.cached_tokens`); Ollama 0.11.4 does not.
    cached_prompt_tokens: Optional[int] = None
    # A remote (cloud) model's upstream host (Ollama 0.12.0 and later); None for a local model.
    remote_host: Optional[str] = None

    @classmethod
    def from_line(cls, obj: dict[str, Any]) -> "FinalStats":
        reason = obj.get("done_reason")
        remote = obj.get("remote_host")
        return cls(
            load_duration_s=_seconds(obj, "load_duration"),
            prompt_eval_count=_count(obj, "prompt_eval_count"),
            prompt_eval_duration_s=_seconds(obj, "prompt_eval_duration"),
            eval_count=_count(obj, "eval_count"),
            eval_duration_s=_seconds(obj, "eval_duration"),
            total_duration_s=_seconds(obj, "total_duration"),
            done_reason=reason if isinstance(reason, str) else None,
            remote_host=remote if isinstance(remote, str) and remote else None,
        )


@dataclass
class StreamChunk:
    """One streamed line: when it arrived, how much text it carried, the final stats if done."""

    received: float  # on the time.monotonic() clock; the kernel receive time where available
    text_len: int  # answer and thinking text together: any generated token counts for TTFT
    final: Optional[FinalStats]
    thinking_len: int = 0  # of which `thinking` (a thinking model's reasoning)
    created_at: Optional[str] = None  # the server's own time of the chunk, as sent (RFC 3339)
    # The chunk's read also delivered later bytes, so the read's time was only an upper bound
    # for it (readtimes.py); None where the reader cannot tell (http.client).
    late: Optional[bool] = None
    recovered: bool = False  # late, and `received` counted back from the server's created_at
    answer: str = ""  # the answer text itself (for a conversation's history and a canary's check)

    @property
    def answer_len(self) -> int:
        """Text of the answer itself (`response` or `message.content`)."""
        return self.text_len - self.thinking_len


def chunk_from_line(line: bytes, received: float, chat: bool) -> Optional[StreamChunk]:
    """One NDJSON line -> a StreamChunk (None for a blank line); raises OllamaError for an error line."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        raise OllamaError("malformed_response", "stream line is not JSON") from None
    if not isinstance(obj, dict):
        raise OllamaError("malformed_response", "stream line is not a JSON object")
    err = obj.get("error")
    if err is not None:
        raise stream_failure(str(err))
    if chat:
        msg = obj.get("message") or {}
        if not isinstance(msg, dict):
            raise OllamaError("malformed_response", "chat chunk has no message object")
        text, thinking = msg.get("content"), msg.get("thinking")
    else:
        text, thinking = obj.get("response"), obj.get("thinking")
    thinking_len = len(thinking) if isinstance(thinking, str) else 0
    answer = text if isinstance(text, str) else ""
    final = FinalStats.from_line(obj) if obj.get("done") is True else None
    created = obj.get("created_at")
    return StreamChunk(received, len(answer) + thinking_len, final, thinking_len,
                       created_at=created if isinstance(created, str) else None, answer=answer)


def chunks_from_lines(lines: Iterable[bytes], received: float, chat: bool) -> Generator[StreamChunk, None, bool]:
    """Yield the chunks of complete lines; return True once the final (done) chunk was yielded."""
    for line in lines:
        chunk = chunk_from_line(line, received, chat)
        if chunk is None:
            continue
        yield chunk
        if chunk.final is not None:
            return True
    return False


def chat_messages(system: Optional[str], history: Optional[list[dict[str, str]]], prompt: str) -> list[dict[str, str]]:
    """The messages of one chat request: the system prompt, the conversation so far, this user turn."""
    return (([{"role": "system", "content": system}] if system else []) + list(history or ())
            + [{"role": "user", "content": prompt}])


def stream_request(api: str, model: str, prompt: str, system: Optional[str], options: Optional[dict[str, Any]],
                   keep_alive: Any, think: Optional[bool],
                   history: Optional[list[dict[str, str]]] = None,
                   fmt: Union[str, dict[str, Any], None] = None) -> tuple[str, bytes]:
    """The path and JSON body of one streaming generate or chat request.

    `history`: the earlier messages of a conversation (chat), before this `prompt`. `fmt`:
    structured output, sent as Ollama's `format` ("json" or a JSON schema object)."""
    if api == "chat":
        body: dict[str, Any] = {"model": model, "messages": chat_messages(system, history, prompt), "stream": True}
        path = "/api/chat"
    else:
        body = {"model": model, "prompt": prompt, "stream": True}
        if system:
            body["system"] = system
        path = "/api/generate"
    if options:
        body["options"] = options
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if think is not None:
        body["think"] = think
    if fmt is not None:
        body["format"] = fmt
    return path, json.dumps(body).encode()


def _unix_seconds(value: Any) -> Optional[float]:
    """An aware datetime (the package parses Ollama's RFC 3339 times) -> Unix seconds."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        try:
            return value.timestamp()
        except (OverflowError, OSError, ValueError):
            return None
    return None


@dataclass(frozen=True)
class RunningModel:
    """One entry of /api/ps."""

    name: str  # normalised: 'llama3' is listed as 'llama3:latest'
    size: Optional[int] = None  # bytes of the loaded model
    size_vram: Optional[int] = None  # of which in GPU memory
    expires_at: Optional[float] = None  # Unix seconds; when the server will unload it
    context_length: Optional[int] = None
    digest: Optional[str] = None  # of the model's manifest: tells two pulls of one tag apart

    @classmethod
    def from_ps(cls, m: Any) -> Optional["RunningModel"]:
        """An ollama.ProcessResponse.Model -> RunningModel (None without a name)."""
        name = m.name or m.model
        if not name:
            return None
        return cls(normalize_model_name(str(name)), _number(m.size), _number(m.size_vram),
                   _unix_seconds(m.expires_at), _number(m.context_length),
                   m.digest if isinstance(m.digest, str) and m.digest else None)

    @property
    def vram_ratio(self) -> Optional[float]:
        """size_vram / size, clamped to [0, 1]; None when either is unknown or the size is 0."""
        if not self.size or self.size_vram is None:
            return None
        return min(1.0, max(0.0, self.size_vram / self.size))

    def leaving(self, now: float, margin: float) -> bool:
        """Due to be unloaded within `margin` seconds (keep_alive 0 or an expired timer)."""
        return self.expires_at is not None and self.expires_at <= now + margin

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelFacts:
    """What /api/show says about a model that the report uses; None where the server did not say."""

    family: Optional[str] = None
    parameter_size: Optional[str] = None
    quantization_level: Optional[str] = None
    format: Optional[str] = None
    architecture: Optional[str] = None
    parameter_count: Optional[int] = None
    block_count: Optional[int] = None
    embedding_length: Optional[int] = None
    head_count: Optional[int] = None
    head_count_kv: Optional[int] = None
    context_length: Optional[int] = None
    capabilities: Optional[list[str]] = None

    @classmethod
    def from_show(cls, show: Any) -> "ModelFacts":
        """An ollama.ShowResponse -> ModelFacts (architecture-specific keys of model_info resolved)."""
        details = show.details
        info = show.modelinfo or {}
        arch = info.get("general.architecture")

        def key(name):
            return info.get(f"{arch}.{name}") if arch else None

        return cls(
            family=details.family if details else None,
            parameter_size=details.parameter_size if details else None,
            quantization_level=details.quantization_level if details else None,
            format=details.format if details else None,
            architecture=arch,
            parameter_count=info.get("general.parameter_count"),
            block_count=key("block_count"),
            embedding_length=key("embedding_length"),
            head_count=key("attention.head_count"),
            head_count_kv=key("attention.head_count_kv"),
            context_length=key("context_length"),
            capabilities=list(show.capabilities) if show.capabilities is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """Only the facts the server gave (the report's JSON)."""
        return {k: v for k, v in asdict(self).items() if v is not None}
