"""Late stamps: a read that delivered a token together with later data, detected and re-timed.

No timing assertions: the queued chunks are written in one send before the reader reads, so
one read takes them all, whatever the machine's load; what is checked is which lines are
flagged and which source their time comes from.
"""

import json
import socket
import threading
import time

import pytest

from exporter.config import Case, Scenario, Target
from exporter.ollama import OllamaClient
from exporter.ollama.rawsocket import RawResponse
from exporter.ollama.readtimes import rfc3339_ns, settle
from exporter.ollama.transport import ndjson_chunks
from exporter.ollama.wire import StreamChunk
from exporter.probe import run_probe
from exporter.results import ProbeResult
from tests.test_framing import GENERATE, cut, decode

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
BASE_NS = rfc3339_ns("2026-11-29T02:32:56Z")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def line(created: str, text: str = "x", done: bool = False) -> bytes:
    obj = {"model": "m", "created_at": created, "response": text, "done": done}
    if done:
        obj.update(eval_count=3, done_reason="stop")
    return (json.dumps(obj) + "\n").encode()


def tok(created: str, received: float = 9.0) -> StreamChunk:
    return StreamChunk(received, 1, None, 0, created)


# ---- the server's clock ----

@pytest.mark.parametrize("text, ns", [
    ("2026-11-29T02:32:56.936731857Z", BASE_NS + 936731857),
    ("2026-11-29T02:32:56.9367Z", BASE_NS + 936700000),  # Go drops trailing zeros
    ("2026-11-29T02:32:56Z", BASE_NS),
    ("2026-11-29T03:32:56.5+01:00", BASE_NS + 500000000),
    ("2026-11-29T02:32:56.1234567891Z", BASE_NS + 123456789),  # beyond ns: cut
])
def test_created_at_is_read_to_the_nanosecond(text, ns):
    assert rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", [None, 5, "", "yesterday", "2026-11-29T02:32:56.Z", "2026-11-29T02:32:56.5",
                                  "2026-11-29T02:32:56.5+xx"])
def test_not_a_time_is_none(text):
    assert rfc3339_ns(text) is None


# ---- settle: one read's lines ----

def test_a_read_of_one_line_is_exact():
    c = tok("2026-11-29T02:32:56.1Z")
    settle([c], 9.0, 8.0, ends_on_line=True)
    assert c.late is False and not c.recovered and c.received == 9.0


def test_earlier_lines_of_a_read_are_late_and_counted_back_from_the_last():
    cs = [tok("2026-11-29T02:32:56.100Z"), tok("2026-11-29T02:32:56.104Z"), tok("2026-11-29T02:32:56.108Z")]
    settle(cs, 9.0, 8.0, ends_on_line=True)
    assert [c.late for c in cs] == [True, True, False]
    assert [c.recovered for c in cs] == [True, True, False]
    assert [c.received for c in cs] == pytest.approx([8.992, 8.996, 9.0], abs=1e-9)


def test_a_recovered_time_is_never_before_the_previous_read():
    cs = [tok("2026-11-29T02:32:56.100Z"), tok("2026-11-29T02:32:56.200Z")]
    settle(cs, 9.0, 8.95, ends_on_line=True)
    assert cs[0].late and cs[0].recovered and cs[0].received == 8.95


def test_a_read_that_ends_inside_a_line_has_no_exact_line():
    """Its time belongs to the partial line's bytes: every complete line is late, none can be counted back."""
    cs = [tok("2026-11-29T02:32:56.100Z"), tok("2026-11-29T02:32:56.104Z")]
    settle(cs, 9.0, None, ends_on_line=False)
    assert [c.late for c in cs] == [True, True] and not any(c.recovered for c in cs)
    assert [c.received for c in cs] == [9.0, 9.0]


@pytest.mark.parametrize("first, last", [(None, "2026-11-29T02:32:56.104Z"), ("2026-11-29T02:32:56.100Z", None),
                                         ("2026-11-29T02:32:56.200Z", "2026-11-29T02:32:56.104Z")])
def test_without_a_usable_created_at_a_late_line_keeps_its_upper_bound(first, last):
    cs = [tok(first), tok(last)]
    settle(cs, 9.0, None, ends_on_line=True)
    assert cs[0].late and not cs[0].recovered and cs[0].received == 9.0


# ---- the NDJSON layer: reads of a real Ollama recording ----

def recorded_body() -> bytes:
    """The generate recording's body payload (NDJSON, framing removed)."""
    return b"".join(ln + b"\n" for ln in decode([GENERATE])[2])


def test_a_recording_read_line_by_line_has_no_late_line():
    body = recorded_body()
    reads = [ln + b"\n" for ln in body.split(b"\n") if ln]
    chunks = list(ndjson_chunks(iter((r, float(i)) for i, r in enumerate(reads)), chat=False))
    assert [c.received for c in chunks] == [float(i) for i in range(len(chunks))]
    assert not any(c.late for c in chunks)


def test_three_queued_tokens_in_one_read_get_the_servers_spacing():
    body = recorded_body()
    lines = [ln + b"\n" for ln in body.split(b"\n") if ln]
    reads = [b"".join(lines[:3])] + lines[3:]
    chunks = list(ndjson_chunks(iter((r, 10.0 + i) for i, r in enumerate(reads)), chat=False))
    created = [rfc3339_ns(json.loads(ln)["created_at"]) for ln in lines[:3]]
    assert [c.late for c in chunks[:4]] == [True, True, False, False]
    assert chunks[0].recovered and chunks[1].recovered
    assert chunks[0].received == pytest.approx(10.0 - (created[2] - created[0]) * 1e-9, abs=1e-9)
    assert chunks[1].received == pytest.approx(10.0 - (created[2] - created[1]) * 1e-9, abs=1e-9)
    assert chunks[2].received == 10.0


def test_no_line_is_re_timed_before_the_request_went_out():
    """The first read has no read before it: the request's send bounds it (a server clock that jumped)."""
    body = line("2026-11-29T02:32:56.100Z") + line("2026-11-29T02:32:57.100Z")
    chunks = list(ndjson_chunks(iter([(body, 10.0), (FINAL, 11.0)]), chat=False, sent=9.99))
    assert chunks[0].late and chunks[0].recovered and chunks[0].received == 9.99
    assert chunks[1].received == 10.0


def test_byte_split_reads_flag_only_lines_with_later_bytes_in_their_read():
    """Cut anywhere: a line is late exactly when its read went on past its end."""
    body = recorded_body()
    for step in (7, 41, 97, 150):
        reads = cut(body, range(0, len(body), step))
        chunks = list(ndjson_chunks(iter((r, float(i)) for i, r in enumerate(reads)), chat=False))
        ends = [i for i, b in enumerate(body) if b == 0x0A]  # each line's newline offset
        starts = [0]
        for r in reads:
            starts.append(starts[-1] + len(r))
        for c, end in zip(chunks, ends):
            read_end = next(s for s in starts[1:] if s > end)
            assert c.late is (read_end > end + 1)
        received = [c.received for c in chunks]
        assert received == sorted(received)


def test_http_client_reads_are_not_judged():
    body = recorded_body()
    chunks = list(ndjson_chunks(iter([(body, 1.0)]), chat=False, whole_reads=False))
    assert all(c.late is None and not c.recovered for c in chunks)


# ---- the raw reader on a socket where the chunks waited before the first read ----

LINES = [line("2026-11-29T02:32:56.100Z"), line("2026-11-29T02:32:56.104Z"), line("2026-11-29T02:32:56.1085Z")]
FINAL = line("2026-11-29T02:32:56.112Z", "", done=True)


def tcp_pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    return server, client


def test_the_raw_reader_flags_and_recovers_chunks_queued_before_its_first_read():
    server, client = tcp_pair()
    with server, client:
        from exporter.ollama import stamps_linux

        stamps_linux.ask_for_stamps(client)
        response = RawResponse(client, deadline=1e12, where="t")
        # Everything is in the socket before the reader looks: one read takes it all.
        server.sendall(HEAD + b"".join(chunk(ln) for ln in LINES) + chunk(FINAL) + b"0\r\n\r\n")
        assert response.read_head() == 200
        chunks = list(ndjson_chunks(response.body("timeout"), chat=False, whole_reads=response.whole_reads))
    assert [c.late for c in chunks] == [True, True, True, False]
    assert all(c.recovered for c in chunks[:3])
    final_at = chunks[-1].received
    assert [final_at - c.received for c in chunks] == pytest.approx([0.012, 0.008, 0.0035, 0.0], abs=1e-9)


class OneShot:
    """Answers one request: head and three tokens in one send, then the final line in another."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            # The lines say they were made 8.5 ms apart: answer later than that after the request,
            # or counting back would reach before it was sent (and stop there).
            time.sleep(0.02)
            conn.sendall(HEAD + b"".join(chunk(ln) for ln in LINES))
            conn.sendall(chunk(FINAL) + b"0\r\n\r\n")
            conn.recv(1)  # until the client hangs up
        self.listener.close()


def probe(transport: str) -> ProbeResult:
    server = OneShot()
    target = Target(name="t", url=server.url)
    scenario = Scenario(name="s", model="m", api="generate", targets=(target,), interval=60.0, cron=None, repeats=1,
                        warmup=0, concurrency=(1,), keep_alive=None, timeout=10.0, think=None, cases=())
    r = run_probe(OllamaClient(target, transport=transport), scenario, Case(name="c", prompt="hi", system=None,
                                                                             options={}))
    server.thread.join(5)
    return r


def test_the_probe_records_a_late_first_token_and_the_servers_gaps():
    r = probe("raw")
    assert r.ok and r.output_chunks == 3
    assert r.first_token_stamp_late is True and r.first_token_recovered is True
    assert r.inter_token_gaps_s == pytest.approx([0.004, 0.0045], abs=1e-9)
    back = ProbeResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.first_token_stamp_late is True and back.first_token_recovered is True


def test_the_http_client_reader_cannot_tell():
    r = probe("http.client")
    assert r.ok and r.first_token_stamp_late is None and r.first_token_recovered is None


def test_an_old_results_line_without_the_fields_reads_as_unknown():
    d = ProbeResult(target="t", scenario="s", model="m", case="c").to_dict()
    del d["first_token_stamp_late"], d["first_token_recovered"]
    r = ProbeResult.from_dict(d)
    assert r.first_token_stamp_late is None and r.first_token_recovered is None
