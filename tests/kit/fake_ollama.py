"""A programmable Ollama-compatible server for tests and benchmarks.

Streams NDJSON like Ollama does (chunked, one line per token, TCP_NODELAY) with a
chosen first-token delay, token rate, model load time and failure mode. Every
token write is logged with time.monotonic(), which is the same clock in every
process on Linux, so a test can compare what the client measured with when the
server actually wrote.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

MODES = (
    "ok",            # a normal stream
    "http_404",      # model not found
    "http_503",      # server busy
    "http_500",      # other HTTP error
    "http_429",      # rate limited (an OpenAI-style server refusing work for now)
    "stream_error",  # 200, some tokens, then an {"error": ...} line
    "malformed",     # 200, then a line that is not JSON
    "no_done",       # 200, tokens, then the connection closes without done
    "empty",         # 200, done at once with no tokens
    "stall",         # 200, headers, then nothing until the client gives up
    "close_early",   # accept and close before any response
)


@dataclass
class Behavior:
    mode: str = "ok"
    tokens: int = 8
    first_token_delay: float = 0.0
    token_interval: float = 0.0
    load_time: float = 0.5  # reported (and slept) when the model is not loaded
    prompt_eval_per_token: float = 0.0001
    version: str = "0.11.4"
    models: tuple = ("tiny:latest",)  # models that exist
    stall_seconds: float = 30.0
    # What /api/ps reports per loaded model: bytes, of which in VRAM (0 on a CPU host), and the
    # loaded context length (None: omitted, as older servers do, unless a request set num_ctx).
    model_size: int = 100_000_000
    size_vram: int = 0
    context_length: Optional[int] = 4096
    digest: str = "x"  # of every model, in /api/ps
    quantization: str = "Q4_1"
    # Thinking tokens streamed before the answer (as `thinking` beside `response`/`message.content`).
    thinking_tokens: int = 0
    # Generations served at once (like OLLAMA_NUM_PARALLEL); 0: no limit. The rest wait their turn.
    parallel: int = 0
    vram_share: float = 0.0  # of the loaded model's size in GPU memory, when size_vram is 0
    # Loaded size in /api/ps grows by this per token of the context the model was loaded with.
    kv_bytes_per_token: int = 0
    # /v1/chat/completions (server-sent events): where `usage` goes ("last": a chunk of its own
    # with empty choices after the finish reason, as OpenAI does; "finish": on the chunk with
    # the finish reason; "none": never), whether lines end in CRLF, and whether the server
    # reports cached prompt tokens (all but the last message's).
    openai_usage: str = "last"
    openai_crlf: bool = False
    openai_cached: bool = False
    # Ollama's control endpoints (/api/version, /api/ps) exist; False: 404, like other OpenAI-compatible servers.
    has_ps: bool = True
    # Fields a newer server adds, merged into every streamed line and /api/ps entry.
    extra_fields: dict = field(default_factory=dict)
    # A remote (cloud) model, as Ollama 0.12.0 and later stream it: `remote_model` and
    # `remote_host` on every line.
    remote_host: Optional[str] = None
    # Structured output (`format`, `response_format`): each token of a constrained answer costs this
    # much more, as a grammar does; the answer is then a JSON object.
    grammar_delay: float = 0.0


def structured_problem(body: dict, openai: bool) -> Optional[str]:
    """Why a real server would refuse the request's structured-output field, else None: Ollama takes
    `format` "json" or a schema object; OpenAI takes `response_format` {"type": "json_object"} or
    {"type": "json_schema", "json_schema": {"name", "schema"}} (name: letters, digits, _ and -)."""
    if not openai:
        fmt = body.get("format")
        if "format" in body and fmt != "json" and not isinstance(fmt, dict):
            return f'invalid format: {fmt!r}; expected "json" or a valid JSON Schema'
        return None
    if "format" in body:
        return "Unrecognized request argument supplied: format"
    rf = body.get("response_format")
    if rf is None or rf == {"type": "json_object"}:
        return None
    schema = rf.get("json_schema") if isinstance(rf, dict) and rf.get("type") == "json_schema" else None
    if not isinstance(schema, dict) or not isinstance(schema.get("schema"), dict):
        return f"Invalid value for 'response_format': {rf!r}"
    if not re.match(r"^[A-Za-z0-9_-]{1,64}$", str(schema.get("name"))):
        return "Invalid 'response_format.json_schema.name'"
    return None


def json_token(i: int, n: int) -> str:
    """Token i of n of a constrained answer: together they are a JSON object."""
    if n == 1:
        return '{"a": 0}'
    return '{"a": "' if i == 0 else ('"}' if i == n - 1 else f"t{i} ")


@dataclass
class RequestLog:
    path: str
    body: dict
    received: float
    headers: dict = field(default_factory=dict)
    token_writes: list[float] = field(default_factory=list)


class FakeOllama:
    def __init__(self, behavior: Optional[Behavior] = None, host: str = "127.0.0.1", port: int = 0):
        self.behavior = behavior or Behavior()
        self.loaded: set[str] = set()
        self.contexts: dict[str, int] = {}  # num_ctx each model was loaded with
        self.requests: list[RequestLog] = []
        self.require_auth: Optional[str] = None  # an exact Authorization header for POSTs
        self.lock = threading.Lock()
        self.slots = threading.Condition()
        self.active = 0  # generations running now
        self.stop_event = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _json(self, status: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                b = fake.behavior
                if self.path == "/api/version" and b.has_ps:
                    self._json(200, {"version": b.version})
                elif self.path == "/api/ps" and b.has_ps:
                    with fake.lock:
                        loaded = sorted(fake.loaded)
                    models = []
                    for m in loaded:
                        ctx = fake.contexts.get(m, b.context_length)
                        size = b.model_size + b.kv_bytes_per_token * (ctx or 4096)
                        entry = {"name": m, "model": m, "size": size,
                                 "size_vram": b.size_vram or int(size * b.vram_share), "digest": b.digest,
                                 "details": {"family": "llama", "parameter_size": "135M",
                                             "quantization_level": b.quantization}}
                        if ctx is not None:
                            entry["context_length"] = ctx
                        models.append({**entry, **b.extra_fields})
                    self._json(200, {"models": models})
                elif self.path == "/api/tags":
                    self._json(200, {"models": [{"name": m} for m in b.models]})
                elif self.path == "/":
                    self._json(200, "Ollama is running")
                else:
                    self._json(404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._json(400, {"error": "bad json"})
                    return
                entry = RequestLog(self.path, body, time.monotonic(), dict(self.headers))
                if fake.require_auth and self.headers.get("Authorization") != fake.require_auth:
                    self._json(401, {"error": "unauthorized"})
                    return
                with fake.lock:
                    fake.requests.append(entry)
                if self.path == "/api/show":
                    self._json(200, {
                        "details": {"family": "llama", "parameter_size": "135M",
                                    "quantization_level": fake.behavior.quantization},
                        "model_info": {"general.architecture": "llama", "llama.block_count": 30,
                                       "llama.embedding_length": 576, "llama.attention.head_count": 9,
                                       "llama.attention.head_count_kv": 3, "llama.context_length": 8192},
                        "capabilities": ["completion"],
                    })
                    return
                if self.path in ("/api/generate", "/api/chat", "/v1/chat/completions"):
                    self._generate(body, entry)
                    return
                self._json(404, {"error": "not found"})

            def _line(self, obj) -> float:
                b = fake.behavior
                if "error" not in obj:
                    obj = {**obj, **b.extra_fields}
                    if b.remote_host:
                        obj.update(remote_model=obj.get("model", ""), remote_host=b.remote_host)
                data = (json.dumps(obj) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                return time.monotonic()

            def _generate(self, body: dict, entry: RequestLog):
                b = fake.behavior
                model = body.get("model", "")
                name = model if ":" in model else model + ":latest"
                chat = self.path == "/api/chat"
                if b.mode == "close_early":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                openai = self.path.startswith("/v1/")

                def error(status: int, message: str, kind: str, code=None) -> None:
                    if openai:
                        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})
                    else:
                        self._json(status, {"error": message})

                if b.mode == "http_404" or name not in b.models:
                    error(404, f"model '{model}' not found", "not_found_error", "model_not_found")
                    return
                if b.mode == "http_503":
                    error(503, "server busy, please try again.  maximum pending requests exceeded", "api_error")
                    return
                if b.mode == "http_429":
                    error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
                    return
                if b.mode == "http_500":
                    error(500, "llama runner process has terminated", "api_error")
                    return
                bad_format = structured_problem(body, openai)
                if bad_format:
                    error(400, bad_format, "invalid_request_error")
                    return
                if body.get("keep_alive") == 0 and not body.get("prompt") and not body.get("messages"):
                    with fake.lock:
                        fake.loaded.discard(name)
                    self._json(200, {"model": model, "response": "", "done": True, "done_reason": "unload"})
                    return
                with fake.slots:
                    fake.slots.wait_for(lambda: not b.parallel or fake.active < b.parallel)
                    fake.active += 1
                try:
                    if openai:
                        self._openai(body, entry, b, model, name)
                    else:
                        self._stream(body, entry, b, model, name, chat)
                finally:
                    with fake.slots:
                        fake.active -= 1
                        fake.slots.notify_all()

            def _event(self, obj, b: Behavior) -> float:
                end = "\r\n" if b.openai_crlf else "\n"
                text = obj if isinstance(obj, str) else json.dumps(obj)
                data = f"data: {text}{end}{end}".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                return time.monotonic()

            def _openai(self, body: dict, entry: RequestLog, b: Behavior, model: str, name: str):
                """/v1/chat/completions, streamed as server-sent events, in the shape OpenAI documents."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": model, "system_fingerprint": "fp_fake"}

                def chunk(delta, finish=None, usage=None, choices=True):
                    c = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [])
                    if usage is not None:
                        c["usage"] = usage
                    return c

                try:
                    with fake.lock:
                        cold = name not in fake.loaded
                    if cold:
                        time.sleep(b.load_time)
                        with fake.lock:
                            fake.loaded.add(name)
                            fake.contexts[name] = 4096
                    if b.mode == "stall":
                        fake.stop_event.wait(b.stall_seconds)
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(b": keep-alive\n\n"), b": keep-alive\n\n"))
                    self._event(chunk({"role": "assistant", "content": ""}), b)
                    if b.mode == "malformed":
                        self._event("this is not json", b)
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    tokens = 0 if b.mode == "empty" else b.tokens
                    limit = body.get("max_tokens")
                    cut = isinstance(limit, int) and limit >= 0 and tokens >= limit
                    if cut:
                        tokens = limit
                    messages = body.get("messages") or []
                    prompt_tokens = len(" ".join(str(m.get("content")) for m in messages).split())
                    structured = "response_format" in body
                    if b.first_token_delay:
                        time.sleep(b.first_token_delay)
                    next_at = time.monotonic()
                    for i in range(tokens):
                        if i and b.token_interval:
                            next_at += b.token_interval
                            delay = next_at - time.monotonic()
                            if delay > 0:
                                time.sleep(delay)
                        if structured:
                            time.sleep(b.grammar_delay)
                        text = json_token(i, tokens) if structured else f"t{i} "
                        entry.token_writes.append(self._event(chunk({"content": text}), b))
                        if b.mode == "stream_error" and i == 1:
                            self._event({"error": {"message": "an error was encountered while running the model",
                                                   "type": "api_error", "code": None}}, b)
                            self.wfile.write(b"0\r\n\r\n")
                            return
                    if b.mode == "no_done":
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                             "total_tokens": prompt_tokens + tokens}
                    if b.openai_cached:
                        earlier = " ".join(str(m.get("content")) for m in messages[:-1]).split()
                        usage["prompt_tokens_details"] = {"cached_tokens": len(earlier)}
                    finish = "length" if cut and tokens else "stop"
                    self._event(chunk({}, finish, usage if b.openai_usage == "finish" else None), b)
                    if b.openai_usage == "last" and (body.get("stream_options") or {}).get("include_usage"):
                        self._event(chunk({}, usage=usage, choices=False), b)
                    self._event("[DONE]", b)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, body: dict, entry: RequestLog, b: Behavior, model: str, name: str, chat: bool):
                t_start = time.monotonic()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    with fake.lock:
                        cold = name not in fake.loaded
                    load = b.load_time if cold else 0.002
                    if cold:
                        time.sleep(load)
                        ctx = (body.get("options") or {}).get("num_ctx")
                        with fake.lock:
                            fake.loaded.add(name)
                            fake.contexts[name] = ctx if isinstance(ctx, int) and ctx > 0 else 4096
                    if b.mode == "stall":
                        fake.stop_event.wait(b.stall_seconds)
                        return
                    if b.mode == "malformed":
                        self._line({"model": model, "response": "a", "done": False})
                        data = b"this is not json\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    tokens = 0 if b.mode == "empty" else b.tokens
                    # Like Ollama: num_predict cuts the answer ("length"); a shorter answer ends on its own ("stop").
                    limit = (body.get("options") or {}).get("num_predict")
                    cut = isinstance(limit, int) and limit >= 0 and tokens >= limit
                    if cut:
                        tokens = limit
                    thinking = min(b.thinking_tokens, tokens)
                    prompt_tokens = len(str(body.get("prompt") or body.get("messages")).split())
                    if b.first_token_delay:
                        time.sleep(b.first_token_delay)
                    t_first = time.monotonic()
                    next_at = t_first
                    for i in range(tokens):
                        if i and b.token_interval:
                            next_at += b.token_interval
                            delay = next_at - time.monotonic()
                            if delay > 0:
                                time.sleep(delay)
                        field_name = "thinking" if i < thinking else ("content" if chat else "response")
                        text = f"t{i} "
                        if "format" in body and i >= thinking:
                            time.sleep(b.grammar_delay)
                            text = json_token(i - thinking, tokens - thinking)
                        chunk = ({"model": model, "message": {"role": "assistant", field_name: text}, "done": False}
                                 if chat else {"model": model, field_name: text, "done": False})
                        entry.token_writes.append(self._line(chunk))
                        if b.mode == "stream_error" and i == 1:
                            self._line({"error": "an error was encountered while running the model"})
                            self.wfile.write(b"0\r\n\r\n")
                            return
                    if body.get("keep_alive") == 0:  # like Ollama: unload once this request is done
                        with fake.lock:
                            fake.loaded.discard(name)
                    if b.mode == "no_done":
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    t_end = time.monotonic()
                    final = {
                        "model": model, "done": True, "done_reason": "length" if cut and tokens else "stop",
                        "total_duration": int((t_end - t_start) * 1e9),
                        "load_duration": int(load * 1e9),
                        "prompt_eval_count": prompt_tokens,
                        "prompt_eval_duration": int(max(t_first - t_start - load, 1e-6) * 1e9),
                    }
                    if tokens:
                        final["eval_count"] = tokens
                        final["eval_duration"] = int(max(t_end - t_first, 1e-6) * 1e9)
                    if chat:
                        final["message"] = {"role": "assistant", "content": ""}
                    else:
                        final["response"] = ""
                    self._line(final)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-ollama", daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeOllama":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
