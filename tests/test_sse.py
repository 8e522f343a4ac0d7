"""Server-sent events framing and the OpenAI-compatible chunk reader, fed byte streams cut at every position.

The recordings in tests/data are raw responses of Ollama 0.11.4's `/v1/chat/completions`
(SmolLM2-135M): a streamed answer (role in every delta, finish reason with empty content, usage in
a last chunk with empty choices, `data: [DONE]`) and a 404 with an OpenAI-style error body. The
synthetic streams cover what other servers do that Ollama does not.
"""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.ollama.errors import OllamaError
from exporter.ollama.framing import BodyDecoder, HeadReader
from exporter.ollama.openai import chat_completions_path, chat_completions_request, http_failure, sse_chunks
from exporter.ollama.sse import Event, EventSplitter

DATA = Path(__file__).parent / "data"
V1_CHAT = (DATA / "ollama-0.11.4-v1-chat.http").read_bytes()
V1_404 = (DATA / "ollama-0.11.4-v1-404.http").read_bytes()


def cut(data, positions):
    positions = sorted(set(p for p in positions if 0 < p < len(data)))
    edges = [0, *positions, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def body_reads(pieces):
    """HTTP framing removed: (payload, read number) per read that carried payload."""
    heads, decoder, out = HeadReader(), None, []
    for i, piece in enumerate(pieces):
        if decoder is None:
            got = heads.feed(piece)
            if got is None:
                continue
            head, piece = got
            decoder = BodyDecoder(head)
        data = decoder.feed(piece)
        if data:
            out.append((data, float(i)))
        if decoder.done:
            break
    return out


def events_of(pieces):
    splitter = EventSplitter()
    return [e for piece in pieces for e in splitter.feed(piece)]


def summary(chunks):
    """What a probe takes from the chunks: the answer, the token chunks, the final stats."""
    return ("".join(c.answer for c in chunks), sum(1 for c in chunks if c.text_len), chunks[-1].final)


# ---- the event framing ----

SYNTHETIC = (
    b"\xef\xbb\xbf: a comment, then an event in two data lines\r\n"
    b"data: first\r\ndata:second\r\n\r\n"
    b"event: ping\rdata\r\r"  # lone CRs, a bare field name: one empty data line
    b"id: 7\nretry: 1000\nunknown: x\ndata:  two spaces keep one\n\n"
    b"data: only an event type resets\nevent: message\n\n"
    b"data: caf\xc3\xa9 \xe2\x9c\x93\n\n"
    b"event: nothing\n\n"  # no data: not dispatched
    b"data: [DONE]\n\n"
)
SYNTHETIC_EVENTS = [
    Event("first\nsecond"), Event("", "ping"), Event(" two spaces keep one"),
    Event("only an event type resets"), Event("café ✓"), Event("[DONE]"),
]


def test_the_event_rules():
    assert events_of([SYNTHETIC]) == SYNTHETIC_EVENTS


def test_synthetic_stream_cut_at_every_position_and_byte_by_byte():
    for i in range(1, len(SYNTHETIC)):
        assert events_of([SYNTHETIC[:i], SYNTHETIC[i:]]) == SYNTHETIC_EVENTS, f"cut at {i}"
    assert events_of([SYNTHETIC[i:i + 1] for i in range(len(SYNTHETIC))]) == SYNTHETIC_EVENTS


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(SYNTHETIC) - 1), max_size=30))
def test_synthetic_stream_random_cuts(cuts):
    assert events_of(cut(SYNTHETIC, cuts)) == SYNTHETIC_EVENTS


def test_an_event_is_handed_on_with_the_read_that_completes_it():
    splitter = EventSplitter()
    assert splitter.feed(b"data: a\r\n") == []
    assert splitter.feed(b"\r") == [Event("a")]  # the blank line's CR ends it; its LF may follow
    assert splitter.feed(b"\ndata: b\n") == []
    assert splitter.feed(b"\n") == [Event("b")]
    assert not splitter.pending


def test_an_unfinished_event_is_pending_and_lines_are_bounded():
    splitter = EventSplitter()
    splitter.feed(b"data: half")
    assert splitter.pending
    small = EventSplitter(max_line=10)
    with pytest.raises(OllamaError) as e:
        small.feed(b"data: 0123456789")
    assert e.value.reason == "malformed_response"


# ---- the real recording ----

def test_ollama_v1_recording_decodes_at_every_cut():
    whole = list(sse_chunks(iter(body_reads([V1_CHAT]))))
    answer, tokens, final = summary(whole)
    assert answer == "I'm so glad you're here! I hope you've" and tokens == 12
    assert (final.prompt_eval_count, final.eval_count, final.done_reason) == (12, 12, "length")
    # The API gives no server timings: absent, not zero.
    assert final.load_duration_s is None and final.eval_duration_s is None and final.prompt_eval_duration_s is None
    assert final.cached_prompt_tokens is None
    for i in range(1, len(V1_CHAT)):
        chunks = list(sse_chunks(iter(body_reads([V1_CHAT[:i], V1_CHAT[i:]]))))
        assert summary(chunks) == (answer, tokens, final), f"cut at {i}"


def test_ollama_v1_recording_byte_by_byte_keeps_each_tokens_read():
    reads = body_reads([V1_CHAT[i:i + 1] for i in range(len(V1_CHAT))])
    chunks = list(sse_chunks(iter(reads)))
    assert summary(chunks) == summary(list(sse_chunks(iter(body_reads([V1_CHAT])))))
    received = [c.received for c in chunks]
    assert received == sorted(received) and len(set(received[:-1])) == len(received) - 1


def test_ollama_v1_404_is_model_not_found():
    status = int(V1_404.split(b" ")[1])
    body = V1_404.split(b"\r\n\r\n", 1)[1]
    err = http_failure(status, body)
    assert (err.reason, err.http_status) == ("model_not_found", 404)
    assert 'model "nope" not found' in err.message and "api_error" in err.message


# ---- shapes other servers send ----

def sse(*objs, done=True, crlf=False):
    end = "\r\n" if crlf else "\n"
    text = "".join(f"data: {o if isinstance(o, str) else json.dumps(o)}{end}{end}" for o in objs)
    return (text + (f"data: [DONE]{end}{end}" if done else "")).encode()


def choice(content=None, finish=None, role=None, **delta):
    d = dict(delta)
    if role:
        d["role"] = role
    if content is not None:
        d["content"] = content
    return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


USAGE = {"prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32,
         "prompt_tokens_details": {"cached_tokens": 24}}
SHAPES = {
    "openai": sse(choice("", role="assistant"), choice("Hi"), choice(" there"), choice(finish="stop"),
                  {"choices": [], "usage": USAGE}),
    "usage_on_finish": sse(choice("Hi", role="assistant"), choice(" there"), dict(choice(finish="stop"), usage=USAGE)),
    "usage_with_null_choices": sse(choice("Hi"), choice(" there", finish="stop"), {"choices": None, "usage": USAGE}),
    "comments_and_crlf": b": ping\r\n\r\n" + sse(choice("Hi"), choice(" there"), choice(finish="stop"),
                                                  {"choices": [], "usage": USAGE}, crlf=True),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_documented_shape_gives_the_same_answer_and_counts(shape):
    raw = SHAPES[shape]
    for i in range(len(raw) + 1):
        reads = [(piece, float(n)) for n, piece in enumerate(cut(raw, [i]))]
        answer, tokens, final = summary(list(sse_chunks(iter(reads))))
        assert (answer, tokens) == ("Hi there", 2), f"cut at {i}"
        assert (final.prompt_eval_count, final.eval_count, final.cached_prompt_tokens) == (30, 2, 24)
        assert final.done_reason == "stop"


def test_usage_omitted_leaves_counts_absent():
    final = list(sse_chunks(iter([(sse(choice("Hi"), choice(finish="stop")), 0.0)])))[-1].final
    assert final.prompt_eval_count is None and final.eval_count is None and final.done_reason == "stop"


def test_reasoning_counts_for_ttft_but_not_as_answer():
    raw = sse(choice(reasoning_content="thinking"), choice(reasoning="more"), choice("A"), choice(finish="stop"))
    chunks = list(sse_chunks(iter([(raw, 0.0)])))
    assert [(c.text_len, c.thinking_len, c.answer) for c in chunks[:-1]] == [(8, 8, ""), (4, 4, ""), (1, 0, "A")]


def test_a_body_that_ends_after_its_finish_reason_without_done_is_accepted():
    chunks = list(sse_chunks(iter([(sse(choice("Hi"), choice(finish="length"), done=False), 0.0)])))
    assert chunks[-1].final.done_reason == "length"


@pytest.mark.parametrize("raw, reason, text", [
    (sse(choice("Hi"), done=False), "stream_error", "before data: [DONE]"),
    (sse(choice("Hi"), "not json"), "malformed_response", "not JSON"),
    (sse(choice("Hi"), [1, 2]), "malformed_response", "not a JSON object"),
    (sse({"choices": "x"}), "malformed_response", "choices"),
    (sse(choice("Hi"), {"error": {"message": "an error was encountered while running the model",
                                  "type": "api_error", "code": None}}), "stream_error", "an error was encountered"),
    (sse({"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}}),
     "model_not_found", "does not exist"),
    (sse({"error": {"message": "Server is overloaded", "type": "server_error", "code": "overloaded"}}),
     "server_busy", "overloaded"),
    (b"event: error\ndata: {\"message\": \"boom\"}\n\n", "stream_error", "boom"),
    # Ollama 0.11.4's /v1 writes a mid-stream error as a bare JSON line, then ends the stream.
    (sse(choice("Hi"), done=False) + b'{"error":{"message":"llama runner process has terminated",'
     b'"type":"api_error","param":null,"code":null}}\n', "stream_error", "llama runner process has terminated"),
])
def test_broken_streams(raw, reason, text):
    with pytest.raises(OllamaError) as e:
        list(sse_chunks(iter([(raw, 0.0)])))
    assert e.value.reason == reason and text in e.value.message


# ---- HTTP errors in OpenAI's shape ----

def error_body(message, kind="invalid_request_error", code=None):
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


@pytest.mark.parametrize("status, body, reason", [
    (401, error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key"), "http_error"),
    (403, b"", "http_error"),
    (404, error_body("The model `gpt-x` does not exist", "invalid_request_error", "model_not_found"),
     "model_not_found"),
    (404, b"404 page not found", "http_error"),  # no such route: not an OpenAI-compatible server here
    (400, error_body("model 'x' not found", "invalid_request_error", "model_not_found"), "model_not_found"),
    (400, error_body("max_tokens must be at least 1"), "http_error"),
    (400, error_body("This model's maximum context length is 8192 tokens", "invalid_request_error",
                     "context_length_exceeded"), "context_exceeded"),
    (400, error_body("the prompt is longer than the context length currently available to the model; shorten "
                     "the prompt", "invalid_request_error"), "context_exceeded"),
    (429, error_body("Rate limit reached", "requests", "rate_limit_exceeded"), "server_busy"),
    (500, error_body("llama runner process has terminated", "api_error"), "http_error"),
    (503, error_body("Loading model", "unavailable_error"), "server_busy"),
    (504, b"", "timeout"),
])
def test_openai_error_bodies_map_to_the_fixed_reasons(status, body, reason):
    err = http_failure(status, body)
    assert (err.reason, err.http_status) == (reason, status)
    assert err.message.startswith(f"HTTP {status}: ")


def test_request_body_and_path():
    path, body = chat_completions_request("m", [{"role": "user", "content": "hi"}],
                                          {"temperature": 0, "num_predict": 5, "seed": 1, "stop": ["\n"]})
    assert path == "/v1/chat/completions"
    assert json.loads(body) == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                "stream_options": {"include_usage": True}, "temperature": 0, "max_tokens": 5,
                                "seed": 1, "stop": ["\n"]}
    assert chat_completions_path("/v1") == chat_completions_path("/openai/v1/") == "/chat/completions"
