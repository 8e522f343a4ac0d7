"""Every way a call to Ollama can fail, classified into the fixed failure reasons.

One table for HTTP statuses, one for error lines inside a 200 stream, and one
function for the exceptions of the `ollama` package and httpx; the timed stream
reader and the control calls both go through them.
"""

from __future__ import annotations

import json
import socket
from typing import Optional

import httpx
import ollama

# Non-2xx status -> reason; every other status is "http_error".
STATUS_REASONS = {404: "model_not_found", 503: "server_busy", 408: "timeout", 504: "timeout"}
# Words of an error line inside a 200 stream (all must appear) -> reason; else "stream_error".
STREAM_ERROR_REASONS = (
    (("not found", "model"), "model_not_found"),
    (("server busy",), "server_busy"),
    (("maximum pending requests",), "server_busy"),
)
# Ollama 0.30.9 and later refuse a prompt longer than the loaded context instead of cutting it
# ("the prompt is longer than the context length currently available to the model; ..."), and
# 0.11.4 cut it in silence; "exceeds the context length" is its embedding and /v1 wording.
CONTEXT_EXCEEDED_WORDS = (("longer than the context",), ("exceeds the context",), ("exceeds the available context",),
                          ("context_length_exceeded",), ("maximum context length",))


def says_context_exceeded(message: str) -> bool:
    lowered = message.lower()
    return any(all(w in lowered for w in words) for words in CONTEXT_EXCEEDED_WORDS)


class OllamaError(Exception):
    """A failed request, already classified into one of the fixed failure reasons."""

    def __init__(self, reason: str, message: str, http_status: Optional[int] = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status


def error_message(body: bytes) -> str:
    """The `error` field of a JSON error body, else the body's text (shortened)."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return data["error"]
    except ValueError:
        pass
    return body.decode("utf-8", "replace").strip()[:500] or "(empty body)"


def http_failure(status: int, message: str) -> OllamaError:
    reason = STATUS_REASONS.get(status, "http_error")
    if status == 400 and says_context_exceeded(message):
        reason = "context_exceeded"
    return OllamaError(reason, f"HTTP {status}: {message}", status)


def stream_failure(message: str) -> OllamaError:
    """An {"error": ...} line inside a 200 stream."""
    lowered = message.lower()
    reason = next((r for words, r in STREAM_ERROR_REASONS if all(w in lowered for w in words)), "stream_error")
    if reason == "stream_error" and says_context_exceeded(message):
        reason = "context_exceeded"
    return OllamaError(reason, f"error in stream: {message}")


def from_exception(exc: BaseException, where: str) -> OllamaError:
    """An exception of a control call (ollama package, httpx, bad JSON) -> OllamaError."""
    if isinstance(exc, OllamaError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        # The package gives status -1 for an {"error": ...} line inside a 200 stream.
        if exc.status_code == -1:
            return stream_failure(str(exc.error))
        return http_failure(exc.status_code, str(exc.error).strip()[:500] or "(empty body)")
    if isinstance(exc, (httpx.TimeoutException, socket.timeout)):
        return OllamaError("timeout", f"no response from {where} within the timeout")
    if isinstance(exc, ConnectionError):
        # The package turns httpx's connect failure into a bare ConnectionError whose text is
        # advice to install Ollama, which says nothing about this target; a socket's failure is
        # a subclass (refused, reset) and keeps its text.
        detail = "" if type(exc) is ConnectionError else f": {exc}"
        return OllamaError("connection", f"cannot connect to {where}{detail}")
    if isinstance(exc, httpx.ConnectError):
        return OllamaError("connection", f"cannot connect to {where}: {exc}")
    if isinstance(exc, (httpx.TransportError, httpx.StreamError, OSError)):
        return OllamaError("connection", f"request to {where} failed: {exc!r}")
    if isinstance(exc, (ValueError, TypeError, AttributeError, KeyError)):
        # Not JSON, or JSON of the wrong shape for the package's typed response.
        return OllamaError("malformed_response", f"{where}: unexpected response: {str(exc)[:200]}")
    raise exc
