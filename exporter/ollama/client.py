"""OllamaClient: one target's control calls and its timed streaming requests."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator, Optional, Union

from ..config import Target
from . import openai
from . import transport as _transport
from .control import CONTROL_TIMEOUT_S, ControlClient
from .endpoint import Endpoint
from .httpclient import HttpClientTransport
from .rawsocket import RawSocketTransport
from .wire import ModelFacts, RunningModel, StreamChunk, chat_messages, stream_request

RAW = RawSocketTransport()
HTTP_CLIENT = HttpClientTransport()
TRANSPORTS = {t.name: t for t in (RAW, HTTP_CLIENT)}
# The framing of each API's stream: NDJSON for Ollama's native API, server-sent events for the
# OpenAI-compatible one. The readers (and their kernel receive stamps) are the same for all.
FRAMINGS = {
    "generate": _transport.NDJSON_GENERATE,
    "chat": _transport.NDJSON_CHAT,
    # OpenAI's `created` is whole seconds: late lines cannot be re-timed, so the extra arguments go unused.
    "openai": _transport.Framing(openai.ACCEPT, lambda body, whole, recover, sent: openai.sse_chunks(body),
                                 openai.http_failure),
}


def default_transport(endpoint: Endpoint) -> _transport.Transport:
    """The raw-socket reader for plain HTTP; http.client for HTTPS, which the raw reader does not speak."""
    return HTTP_CLIENT if endpoint.https else RAW


class OllamaClient:
    """`transport` picks the reader of timed streams ("raw" or "http.client"); by default the best one."""

    def __init__(self, target: Target, transport: Optional[str] = None):
        self.target = target
        self.endpoint = Endpoint(target.url, target.auth)
        if transport is not None and transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {sorted(TRANSPORTS)}")
        chosen = TRANSPORTS[transport] if transport else default_transport(self.endpoint)
        self.transport = HTTP_CLIENT if self.endpoint.https else chosen
        self.control = ControlClient(self.endpoint)
        self._bodies: dict[tuple, tuple[str, bytes]] = {}

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int:
        return self.endpoint.port

    # ---- control calls ----
    def version(self) -> str:
        return self.control.version()

    def running_models(self) -> list[RunningModel]:
        return self.control.running_models()

    def show(self, model: str) -> ModelFacts:
        return self.control.show(model)

    def unload(self, model: str) -> None:
        self.control.unload(model)

    # ---- the timed stream ----
    def _request_body(self, api, model, prompt, system, options, keep_alive, think, history,
                      fmt=None) -> tuple[str, bytes]:
        """The request path and JSON body, encoded once per distinct request and reused.

        A scenario sends the same case many times, and a long prompt takes milliseconds
        to encode: work that would otherwise sit inside every measured TTFT. A conversation's
        later turns carry the answers so far, which differ each time: those are not kept.
        """
        if history:
            return self._encode(api, model, prompt, system, options, keep_alive, think, history, fmt)
        key = (api, model, prompt, system, json.dumps(options, sort_keys=True) if options else None,
               repr(keep_alive), think, json.dumps(fmt, sort_keys=True) if fmt is not None else None)
        cached = self._bodies.get(key)
        if cached is not None:
            return cached
        if len(self._bodies) >= 64:
            self._bodies.clear()
        result = self._bodies[key] = self._encode(api, model, prompt, system, options, keep_alive, think, None, fmt)
        return result

    def _encode(self, api, model, prompt, system, options, keep_alive, think, history, fmt) -> tuple[str, bytes]:
        if api == "openai":
            # keep_alive and think are not part of the OpenAI API (the config refuses them there).
            return openai.chat_completions_request(model, chat_messages(system, history, prompt), options,
                                                   self.endpoint.base_path, fmt)
        return stream_request(api, model, prompt, system, options, keep_alive, think, history, fmt)

    def stream(
        self,
        api: str,
        model: str,
        prompt: str,
        *,
        system: Optional[str] = None,
        options: Optional[dict[str, Any]] = None,
        keep_alive: Any = None,
        think: Optional[bool] = None,
        timeout: float = 120.0,
        on_sent: Optional[Callable[[float], None]] = None,
        history: Optional[list[dict[str, str]]] = None,
        format: Union[str, dict[str, Any], None] = None,
    ) -> Iterator[StreamChunk]:
        """Send one streaming request and yield its chunks as they arrive.

        Raises OllamaError with a failure reason for every way the request can go
        wrong, including an error line inside a 200 stream and a stream that ends
        without its final `done` chunk. The whole request is bounded by `timeout`.
        Each chunk's `received` is on the time.monotonic() clock: the kernel's receive
        time of the bytes that completed its line where available (rawsocket.py).
        `on_sent` is called with the time the request starts to go out. `history`: the
        conversation so far (chat APIs), as {"role", "content"} messages before `prompt`.
        `api` is "generate", "chat" (Ollama's native API) or "openai" (/v1/chat/completions).
        `format`: structured output, "json" or a JSON schema (Ollama's `format`; OpenAI's
        `response_format`).
        """
        deadline = time.monotonic() + timeout
        path, data = self._request_body(api, model, prompt, system, options, keep_alive, think, history, format)
        yield from _transport.stream(self.transport, self.endpoint, path, data, deadline=deadline,
                                     connect_timeout=min(timeout, CONTROL_TIMEOUT_S * 3), framing=FRAMINGS[api],
                                     on_sent=on_sent)
