"""HTTP framing and NDJSON splitting, fed real Ollama byte streams cut at every position.

The recordings in tests/data are raw responses of Ollama 0.11.4 (SmolLM2-135M):
a chunked generate stream, a chunked chat stream, and a 404 with Content-Length.
"""

import http.client
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.ollama.errors import OllamaError
from exporter.ollama.framing import BodyDecoder, Head, HeadError, HeadReader, LineSplitter, parse_head
from exporter.ollama.transport import ndjson_chunks

DATA = Path(__file__).parent / "data"
GENERATE = (DATA / "ollama-0.11.4-generate.http").read_bytes()
CHAT = (DATA / "ollama-0.11.4-chat.http").read_bytes()
NOT_FOUND = (DATA / "ollama-0.11.4-404.http").read_bytes()
RECORDINGS = {"generate": GENERATE, "chat": CHAT, "404": NOT_FOUND}


def decode(pieces):
    """Feed the pieces as successive reads -> (status, body payload, NDJSON lines, payload reads)."""
    heads = HeadReader()
    decoder = None
    lines = LineSplitter()
    body, out_lines, reads = b"", [], []
    for piece in pieces:
        if decoder is None:
            got = heads.feed(piece)
            if got is None:
                continue
            head, piece = got
            decoder = BodyDecoder(head)
        data = decoder.feed(piece)
        if data:
            reads.append(data)
            body += data
            out_lines += lines.feed(data)
        if decoder.done:
            break
    else:
        decoder.eof()
    return head.status, body, out_lines + ([lines.rest] if lines.rest else []), reads


def cut(data, positions):
    positions = sorted(set(p for p in positions if 0 < p < len(data)))
    edges = [0, *positions, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def http_client_body(raw: bytes) -> bytes:
    """The same bytes decoded by the standard library, as an independent reference."""

    class Sock:
        def makefile(self, *_):
            return io.BytesIO(raw)

    resp = http.client.HTTPResponse(Sock(), method="POST")
    resp.begin()
    return resp.read()


@pytest.mark.parametrize("name", RECORDINGS)
def test_uncut_recordings_decode_as_the_standard_library_does(name):
    raw = RECORDINGS[name]
    status, body, lines, _ = decode([raw])
    assert body == http_client_body(raw)
    if name == "404":
        assert status == 404 and json.loads(body) == {"error": "model 'nope' not found"}
        return
    assert status == 200
    objs = [json.loads(line) for line in lines]
    assert len(objs) >= 6 and [o["done"] for o in objs] == [False] * (len(objs) - 1) + [True]
    assert objs[-1]["eval_count"] > 0 and objs[-1]["done_reason"] == "length"


@pytest.mark.parametrize("name", RECORDINGS)
def test_one_cut_at_every_position_decodes_the_same(name):
    raw = RECORDINGS[name]
    status, body, lines, _ = decode([raw])
    for i in range(1, len(raw)):
        assert decode([raw[:i], raw[i:]])[:3] == (status, body, lines), f"cut at {i}"


@pytest.mark.parametrize("name", ["generate", "chat"])
def test_byte_by_byte_decodes_the_same(name):
    raw = RECORDINGS[name]
    assert decode([raw[i:i + 1] for i in range(len(raw))])[:3] == decode([raw])[:3]


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(RECORDINGS)), cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=40))
def test_random_cuts_decode_the_same(name, cuts):
    raw = RECORDINGS[name]
    assert decode(cut(raw, cuts))[:3] == decode([raw])[:3]


def test_a_read_yields_every_line_it_completes_and_no_more():
    """A line is handed on with the read that completed it, never earlier."""
    raw = GENERATE
    whole = decode([raw])[2]
    first_line_end = raw.index(b"\n", raw.index(b"\r\n\r\n") + 4 + 4)  # the newline inside the first chunk
    head_and_part = raw[:first_line_end]
    heads, lines = HeadReader(), LineSplitter()
    head, rest = heads.feed(head_and_part)
    decoder = BodyDecoder(head)
    assert lines.feed(decoder.feed(rest)) == []
    assert lines.feed(decoder.feed(raw[first_line_end:first_line_end + 1])) == [whole[0]]


def test_chunks_carry_the_final_stats_in_seconds():
    pieces = cut(GENERATE, range(0, len(GENERATE), 97))
    _, _, _, reads = decode(pieces)
    chunks = list(ndjson_chunks(iter((r, float(i)) for i, r in enumerate(reads)), chat=False))
    assert chunks[-1].final is not None and all(c.final is None for c in chunks[:-1])
    final = chunks[-1].final
    assert final.eval_count == 12 and final.prompt_eval_count == 15 and final.done_reason == "length"
    assert final.total_duration_s == pytest.approx(0.517915913) and final.load_duration_s == pytest.approx(0.339903769)
    assert sum(c.text_len for c in chunks) == len("".join(json.loads(x)["response"] for x in decode([GENERATE])[2]))
    assert [c.received for c in chunks] == sorted(c.received for c in chunks)


# ---- errors ----

def test_bad_chunk_size():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(OllamaError) as e:
        decode([head + b"zz\r\nhello\r\n0\r\n\r\n"])
    assert (e.value.reason, e.value.message) == ("stream_error", "stream broke: bad chunk size")
    with pytest.raises(OllamaError, match="bad chunk size"):
        decode([head + b"-5\r\nhello\r\n"])


def test_chunk_size_line_too_long():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(OllamaError) as e:
        decode([head, b"0" * 5000])
    assert e.value.reason == "stream_error" and "chunk size line too long" in e.value.message


@pytest.mark.parametrize("at", [0.3, 0.5, 0.9])
def test_stream_cut_inside_a_chunk(at):
    raw = GENERATE[:int(len(GENERATE) * at)]
    with pytest.raises(OllamaError) as e:
        decode([raw])
    assert e.value.reason == "stream_error" and "closed inside the chunked body" in e.value.message


def test_body_ending_inside_a_line_and_lines_too_long():
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    with pytest.raises(OllamaError) as e:
        splitter.finish()
    assert (e.value.reason, e.value.message) == ("malformed_response", "stream ended inside a line")
    small = LineSplitter(max_line=10)
    assert small.feed(b"0123456789") == []
    with pytest.raises(OllamaError) as e:
        small.feed(b"x")
    assert (e.value.reason, e.value.message) == ("malformed_response", "line too long for NDJSON")


def test_heads():
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5") == Head(200, False, 5)
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked") == Head(200, True, None)
    with pytest.raises(HeadError, match="BadStatusLine"):
        parse_head(b"SSH-2.0-OpenSSH_9.6")
    with pytest.raises(HeadError, match="bad Content-Length"):
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: five")
    with pytest.raises(HeadError, match="too long"):
        HeadReader().feed(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10000)
    # 1xx interim responses are skipped; the bytes after the real head are the body's.
    head, rest = HeadReader().feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi!")
    assert head.status == 200 and BodyDecoder(head).feed(rest) == b"hi"


def test_chunk_extensions_and_trailers_are_ignored():
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nab\n\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert decode([raw])[1:3] == (b"ab\n", [b"ab"])


def test_content_length_body_stops_at_its_length_wherever_it_is_cut():
    raw = NOT_FOUND + b"HTTP/1.1 200 OK\r\n"  # bytes of a next response on the same connection
    for i in range(1, len(raw)):
        assert decode([raw[:i], raw[i:]])[1] == b'{"error":"model \'nope\' not found"}', f"cut at {i}"
