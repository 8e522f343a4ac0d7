"""A fast Ollama-compatible streaming server whose token timing is known exactly.

Runs as its own process (so its CPU never competes for the client's GIL), on one
thread with a selector and a timer heap: it can keep thousands of streams at
thousands of tokens per second each on time, which a thread-per-connection
http.server cannot.

Every token write is logged with time.monotonic() taken immediately before the
send() system call that hands the bytes to the kernel. On Linux that clock is
shared by every process, so the client can subtract it from its own timestamps.

What a request asks for is written in its prompt, so that any client (the probe
engine, the `ollama` package) can drive it unchanged:

    "bench id=<id> n=<tokens> rate=<tokens/s> ttft=<seconds>"

Like Ollama (Go net/http), the response headers go out in the same write as the
first token, each token is one chunk of the chunked body, TCP_NODELAY is set,
and the final `done` line carries the server's own timings in nanoseconds. Like
Ollama, every line's `created_at` is the wall clock when the line was made
(RFC 3339, nanoseconds, trailing zeros dropped): taken just before the line is
encoded and sent, as Ollama takes it in its completion callback before the line
goes through a channel to the writer.

Endpoints: POST /api/generate, POST /api/chat (streaming), POST /v1/chat/completions
(the same tokens as server-sent events, usage in a last chunk, `data: [DONE]`), GET /api/version,
GET /api/ps, and GET /_bench/drain, which returns and forgets the write logs:
    {"logs": {id: [arrival, [write, write, ...], wire]}, "deferred": n, "max_late_s": x}
where `arrival` is when this loop had parsed the request and `wire` the kernel's
receive time of its last bytes (= arrival where kernel stamps are unavailable).
`deferred` counts token writes that found the socket buffer full and had to wait
(their logged time is then earlier than when the bytes really left); it should be 0.

Run: python -m tests.kit.stream_server [--port 0]   (prints "PORT <n>" when ready)
"""

from __future__ import annotations

import argparse
import heapq
import json
import selectors
import socket
import struct
import sys
import time

# Kernel receive timestamps (Linux): when the request's last bytes reached this host,
# i.e. when the client's send() ran, free of this loop's delays. The same option number
# and clock conversion as the exporter's stream reader.
from exporter.ollama.stamps_linux import SO_TIMESTAMPNS, measure_wall_to_monotonic_offset

MODEL = "bench"
# A realistic chunk: Ollama's line for one token is about this long.
TOKEN_TEXT = " the"
EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _line(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


# A token's line around its created_at: prefix + time + suffix.
GEN_TOKEN = (b'{"model":"%s","created_at":"' % MODEL.encode(), b'","response":%s,"done":false}\n'
             % json.dumps(TOKEN_TEXT).encode())
CHAT_TOKEN = (GEN_TOKEN[0], b'","message":{"role":"assistant","content":%s},"done":false}\n'
              % json.dumps(TOKEN_TEXT).encode())
_second = [-1, b""]  # the last whole second formatted, and its text


def created_at(ns: int) -> bytes:
    """Unix ns -> RFC 3339 UTC as Go's time.RFC3339Nano writes it (trailing zeros of the fraction dropped)."""
    sec, frac = divmod(ns, 1_000_000_000)
    if _second[0] != sec:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
    return _second[1] + ((b".%09d" % frac).rstrip(b"0") if frac else b"") + b"Z"


def _token_chunk(template: tuple, ns: int) -> bytes:
    return _chunk(template[0] + created_at(ns) + template[1])


SSE_TOKEN = _chunk(b"data: " + json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1735689600, "model": MODEL,
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": TOKEN_TEXT}, "finish_reason": None}]},
    separators=(",", ":")).encode() + b"\n\n")
SSE_HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Date: Wed, 01 Jan 2025 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)
STREAM_HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    b"Date: Wed, 01 Jan 2025 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
)


def _response(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def parse_prompt(prompt: str) -> dict:
    spec = {"id": None, "n": 10, "rate": 100.0, "ttft": 0.0}
    for word in prompt.split():
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if key == "id":
            spec["id"] = value
        elif key == "n":
            spec["n"] = max(1, int(value))
        elif key in ("rate", "ttft"):
            spec[key] = float(value)
    return spec


class Conn:
    __slots__ = ("sock", "inbuf", "out", "closing", "id", "n", "i", "interval", "due", "writes", "arrival",
                 "token", "chat", "first_at", "prompt_tokens", "wire", "openai")

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = b""
        self.out = b""  # bytes the kernel would not take yet
        self.closing = False
        self.id = None


class Server:
    def __init__(self, host: str, port: int):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if SO_TIMESTAMPNS is not None:
            # On the listener: accepted sockets inherit it from their first byte on, and the
            # kernel's (deferred, host-wide) switch for receive stamps stays on all run long.
            self.listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.listener.bind((host, port))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, EVENT_READ, None)
        self.heap: list = []
        self.seq = 0
        self.logs: dict = {}
        self.deferred = 0
        self.max_late = 0.0
        self.offset_ns = measure_wall_to_monotonic_offset(5)  # wall clock steps during a benchmark run are not expected

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    # ---- I/O ----
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, EVENT_READ, Conn(sock))

    def _close(self, c: Conn) -> None:
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _send(self, c: Conn, data: bytes) -> bool:
        """Hand bytes to the kernel now if it takes them; returns False if some had to wait."""
        if c.out:
            c.out += data
            return False
        try:
            n = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:  # the client went away
            c.closing = True
            c.out = b""
            return True
        if n < len(data):
            c.out = data[n:]
            self.sel.modify(c.sock, EVENT_READ | EVENT_WRITE, c)
            return False
        return True

    def _flush(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(c)
            return
        c.out = c.out[n:]
        if not c.out:
            if c.closing:
                self._close(c)
            else:
                self.sel.modify(c.sock, EVENT_READ, c)

    def _finish(self, c: Conn) -> None:
        c.closing = True
        if not c.out:
            self._close(c)

    def _read(self, c: Conn) -> None:
        wire = None
        try:
            if SO_TIMESTAMPNS is not None:
                data, anc, _, _ = c.sock.recvmsg(65536, 64)
                for level, kind, raw in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                        sec, nsec = struct.unpack_from("qq", raw)
                        wire = (sec * 1_000_000_000 + nsec - self.offset_ns) * 1e-9
            else:
                data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(c)
            return
        if c.closing or c.id is not None:
            return  # request already complete; ignore anything else
        c.inbuf += data
        head_end = c.inbuf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = c.inbuf[:head_end].decode("latin-1")
        lines = head.split("\r\n")
        method, path, _ = (lines[0].split(" ") + ["", "", ""])[:3]
        length = 0
        for h in lines[1:]:
            k, _, v = h.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        body = c.inbuf[head_end + 4:]
        if len(body) < length:
            return
        arrival = time.monotonic()
        c.wire = wire if wire is not None else arrival
        self._dispatch(c, method, path.split("?", 1)[0], body[:length], arrival)

    # ---- requests ----
    def _dispatch(self, c: Conn, method: str, path: str, body: bytes, arrival: float) -> None:
        if method == "POST" and path in ("/api/generate", "/api/chat", "/v1/chat/completions"):
            try:
                req = json.loads(body or b"{}")
                openai = path == "/v1/chat/completions"
                chat = path == "/api/chat" or openai
                prompt = req["messages"][-1]["content"] if chat else req["prompt"]
            except (ValueError, KeyError, IndexError, TypeError):
                self._send(c, _response("400 Bad Request", b'{"error":"bad request"}'))
                self._finish(c)
                return
            spec = parse_prompt(prompt)
            n = spec["n"]
            num_predict = req.get("max_tokens") if openai else (req.get("options") or {}).get("num_predict")
            if isinstance(num_predict, int) and num_predict > 0:
                n = min(n, num_predict)
            self.seq += 1
            c.id = spec["id"] or f"anon-{self.seq}"
            c.n = n
            c.i = 0
            c.interval = 1.0 / spec["rate"] if spec["rate"] > 0 else 0.0
            c.arrival = arrival
            c.writes = []
            c.chat = chat
            c.openai = openai
            c.token = SSE_TOKEN if openai else CHAT_TOKEN if chat else GEN_TOKEN
            c.prompt_tokens = len(prompt.split())
            c.due = arrival + spec["ttft"]
            self.logs[c.id] = [arrival, c.writes, c.wire]
            heapq.heappush(self.heap, (c.due, self.seq, c))
            return
        if path == "/api/version":
            out = _response("200 OK", b'{"version":"0.11.4"}')
        elif path == "/api/ps":
            out = _response("200 OK", json.dumps({"models": [{
                "name": MODEL + ":latest", "model": MODEL + ":latest", "size": 100_000_000, "size_vram": 0,
                "digest": "0" * 64, "details": {"family": "llama"}, "expires_at": "2099-01-01T00:00:00Z",
                "context_length": 4096}]}).encode())
        elif path == "/_bench/drain":
            payload = {"logs": self.logs, "deferred": self.deferred, "max_late_s": self.max_late}
            out = _response("200 OK", json.dumps(payload, separators=(",", ":")).encode())
            self.logs = {}
            self.deferred = 0
            self.max_late = 0.0
        elif path == "/":
            out = _response("200 OK", b"Ollama is running", "text/plain")
        else:
            out = _response("404 Not Found", b'{"error":"not found"}')
        self._send(c, out)
        self._finish(c)

    def _token(self, c: Conn, due: float) -> None:
        if c.closing:
            return
        # NDJSON lines carry their own created_at; an SSE event is a fixed chunk (`created` is whole seconds).
        data = c.token if isinstance(c.token, bytes) else _token_chunk(c.token, time.time_ns())
        if c.i == 0:
            data = (SSE_HEADERS if c.openai else STREAM_HEADERS) + data
            c.first_at = due
        t = time.monotonic()
        late = t - due
        if late > self.max_late:
            self.max_late = late
        c.writes.append(t)
        if not self._send(c, data):
            self.deferred += 1
        c.i += 1
        if c.i < c.n:
            c.due = due + c.interval
            self.seq += 1
            heapq.heappush(self.heap, (c.due, self.seq, c))
            return
        end = time.monotonic()
        if c.openai:
            base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1735689600, "model": MODEL}
            events = [dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "length"}]),
                      dict(base, choices=[], usage={"prompt_tokens": c.prompt_tokens, "completion_tokens": c.n,
                                                    "total_tokens": c.prompt_tokens + c.n})]
            text = b"".join(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events)
            self._send(c, _chunk(text + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            self._finish(c)
            return
        final = {"model": MODEL, "created_at": created_at(time.time_ns()).decode(), "done": True,
                 "done_reason": "length",
                 "total_duration": int((end - c.arrival) * 1e9), "load_duration": 1_000_000,
                 "prompt_eval_count": c.prompt_tokens,
                 "prompt_eval_duration": max(int((c.writes[0] - c.arrival) * 1e9), 1000),
                 "eval_count": c.n, "eval_duration": max(int((end - c.writes[0]) * 1e9), 1000)}
        if c.chat:
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
        self._send(c, _chunk(_line(final)) + b"0\r\n\r\n")
        self._finish(c)

    # ---- the loop ----
    def serve(self) -> None:
        mono = time.monotonic
        heap = self.heap
        sel = self.sel
        while True:
            if heap:
                wait = heap[0][0] - mono()
                if wait > 0.0015:
                    # epoll sleeps in whole milliseconds; wake a millisecond early and sleep the rest.
                    events = sel.select(wait - 0.001)
                elif wait > 0:
                    time.sleep(wait)
                    events = sel.select(0)
                else:
                    events = sel.select(0)
            else:
                events = sel.select(1.0)
            for key, mask in events:
                c = key.data
                if c is None:
                    self._accept()
                    continue
                if mask & EVENT_WRITE and c.out:
                    self._flush(c)
                if mask & EVENT_READ:
                    self._read(c)
            while heap and heap[0][0] <= mono():
                due, _, c = heapq.heappop(heap)
                self._token(c, due)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = Server(args.host, args.port)
    print(f"PORT {server.port}", flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
