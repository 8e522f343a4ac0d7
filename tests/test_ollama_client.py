"""The client: both stream readers over a real socket, the control calls, and the failure-reason table."""

import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import ollama
import pytest

from exporter.config import Target
from exporter.ollama import OllamaClient, OllamaError
from exporter.ollama.errors import from_exception, http_failure, stream_failure
from exporter.ollama.transport import ndjson_chunks
from tests.kit.exporters import free_port
from tests.kit.fake_ollama import FakeOllama
from tests.test_framing import GENERATE, NOT_FOUND, cut, decode

TRANSPORTS = ["raw", "http.client"]


class Replay:
    """Answers every request with recorded bytes, written in pieces with a pause between them."""

    def __init__(self, pieces, pause=0.002, tls=None):
        self.pieces, self.pause, self.tls = pieces, pause, tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.written: list[float] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self):
        conn, _ = self.listener.accept()
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except ssl.SSLError:  # a client that does not trust us hangs up in the handshake
                conn.close()
                return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            for piece in self.pieces:
                conn.sendall(piece)
                self.written.append(time.monotonic())
                time.sleep(self.pause)
        self.listener.close()


def stream(url, transport, timeout=5.0):
    client = OllamaClient(Target(name="t", url=url), transport=transport)
    return list(client.stream("generate", "smollm2-135m", "hi", timeout=timeout))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_split_across_reads_gives_the_same_chunks(transport):
    # Cuts every 41 bytes land inside chunk-size lines, inside JSON lines and between CR and LF.
    server = Replay(cut(GENERATE, range(0, len(GENERATE), 41)))
    chunks = stream(server.url, transport)
    _, _, lines, _ = decode([GENERATE])
    expected = list(ndjson_chunks(iter([(b"\n".join(lines) + b"\n", 0.0)]), chat=False))
    assert [(c.text_len, c.final) for c in chunks] == [(c.text_len, c.final) for c in expected]
    received = [c.received for c in chunks]
    assert received == sorted(received)
    # Each line is stamped by the read that completed it: the pieces came 2 ms apart.
    assert received[-1] - received[0] > 0.01
    assert received[-1] <= server.written[-1] + 0.5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_cut_inside_a_chunk_is_a_stream_error(transport):
    server = Replay(cut(GENERATE[:len(GENERATE) // 2], range(0, len(GENERATE), 100)))
    with pytest.raises(OllamaError) as e:
        stream(server.url, transport)
    assert e.value.reason == "stream_error"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_http_error_is_classified_with_its_message(transport):
    server = Replay(cut(NOT_FOUND, [20, 120]))
    with pytest.raises(OllamaError) as e:
        stream(server.url, transport)
    assert (e.value.reason, e.value.http_status) == ("model_not_found", 404)
    assert e.value.message == "HTTP 404: model 'nope' not found"


@pytest.fixture
def tls(monkeypatch):
    """A server context with a self-signed localhost certificate, which the client is made to trust."""
    cert = Path(__file__).parent / "data" / "localhost-cert.pem"  # test only, valid to 2125
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, cert.with_name("localhost-key.pem"))
    monkeypatch.setattr("exporter.ollama.endpoint._tls_context", ssl.create_default_context(cafile=str(cert)))
    return server


def test_https_streams_through_http_client_and_control_calls_verify_the_certificate(tls):
    server = Replay(cut(GENERATE, range(0, len(GENERATE), 300)), tls=tls)
    client = OllamaClient(Target(name="t", url=server.url))
    assert client.transport.name == "http.client"
    chunks = list(client.stream("generate", "smollm2-135m", "hi", timeout=5))
    assert chunks[-1].final.eval_count == 12 and sum(c.text_len for c in chunks) > 0
    body = b'{"version":"0.11.4"}'
    version = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert OllamaClient(Target(name="t", url=Replay([version], tls=tls).url)).version() == "0.11.4"


def test_https_with_an_untrusted_certificate_is_a_connection_failure(tls, monkeypatch):
    monkeypatch.setattr("exporter.ollama.endpoint._tls_context", ssl.create_default_context())
    server = Replay([GENERATE], tls=tls)
    with pytest.raises(OllamaError) as e:
        stream(server.url, None)
    assert e.value.reason == "connection" and "CERTIFICATE_VERIFY_FAILED" in e.value.message


def test_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="unknown transport"):
        OllamaClient(Target(name="t", url="http://127.0.0.1:1"), transport="carrier-pigeon")
    https = OllamaClient(Target(name="t", url="https://example.invalid"), transport="raw")
    assert https.transport.name == "http.client"


def test_control_calls_through_the_ollama_package(monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "an-ollama-com-key")  # never sent to a target
    with FakeOllama() as fake:
        client = OllamaClient(Target(name="t", url=fake.url))
        assert client.version() == "0.11.4"
        assert client.running_models() == []
        list(client.stream("generate", "tiny", "hello", timeout=5))
        [m] = client.running_models()
        assert (m.name, m.size, m.size_vram, m.context_length) == ("tiny:latest", 100_000_000, 0, 4096)
        facts = client.show("tiny")
        assert facts.architecture == "llama" and facts.context_length == 8192 and facts.head_count_kv == 3
        assert facts.quantization_level == "Q4_1" and facts.capabilities == ["completion"]
        assert "parameter_count" not in facts.to_dict()  # the fake does not say
        assert client.control.local_models() == set()  # the fake lists names only, without `model`
        client.unload("tiny")
        assert client.running_models() == []
        assert fake.requests[-1].body == {"model": "tiny", "keep_alive": 0, "stream": False}
        assert "authorization" not in {k.lower() for k in fake.requests[-1].headers}
        with pytest.raises(OllamaError) as e:
            OllamaClient(Target(name="t", url=fake.url + "/nope")).version()
        assert (e.value.reason, e.value.http_status) == ("model_not_found", 404)


def test_control_calls_send_the_targets_credentials(monkeypatch):
    from exporter.config import Auth

    monkeypatch.setenv("PROBE_TOKEN", "s3cr3t")
    with FakeOllama() as fake:
        fake.require_auth = "Bearer s3cr3t"
        target = Target(name="t", url=fake.url, auth=Auth(bearer_token_env="PROBE_TOKEN"))
        assert OllamaClient(target).show("tiny").architecture == "llama"
        assert OllamaClient(target).version() == "0.11.4"
        with pytest.raises(OllamaError) as e:
            OllamaClient(Target(name="t", url=fake.url)).show("tiny")
        assert (e.value.reason, e.value.http_status, e.value.message) == ("http_error", 401, "HTTP 401: unauthorized")
        monkeypatch.delenv("PROBE_TOKEN")
        with pytest.raises(OllamaError) as e:
            OllamaClient(target).show("tiny")
        assert e.value.reason == "connection" and "PROBE_TOKEN" in e.value.message and "s3cr3t" not in e.value.message


def test_control_call_to_a_dead_port_is_a_connection_failure():
    port = free_port()
    client = OllamaClient(Target(name="t", url=f"http://127.0.0.1:{port}"))
    with pytest.raises(OllamaError) as e:
        client.running_models()
    # The package's own text is advice to install Ollama: it is left out.
    assert (e.value.reason, e.value.message) == ("connection", f"cannot connect to /api/ps on 127.0.0.1:{port}")
    with pytest.raises(OllamaError) as e:
        client.version()  # plain httpx: its connect error is kept
    assert e.value.reason == "connection"
    assert e.value.message.startswith(f"cannot connect to /api/version on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("exc,reason,status", [
    (ollama.ResponseError('{"error":"model \'x\' not found"}', 404), "model_not_found", 404),
    (ollama.ResponseError("server busy, please try again", 503), "server_busy", 503),
    (ollama.ResponseError("gateway timeout", 504), "timeout", 504),
    (ollama.ResponseError("unauthorized", 401), "http_error", 401),
    (ollama.ResponseError("model 'x' not found, try pulling it first"), "model_not_found", None),
    (ollama.ResponseError("maximum pending requests exceeded"), "server_busy", None),
    (ollama.ResponseError("llama runner process has terminated"), "stream_error", None),
    # Ollama 0.30.9+ with context shift off; 0.11.4 cut such a prompt in silence.
    (ollama.ResponseError("the prompt is longer than the context length currently available to the model; "
                          "shorten the prompt, adjust the context length in settings, or use a model with a "
                          "longer context length", 400), "context_exceeded", 400),
    (ollama.ResponseError("the input length exceeds the context length", 400), "context_exceeded", 400),
    (ollama.ResponseError("the input length exceeds the context length"), "context_exceeded", None),
    (ollama.ResponseError("context length must be positive", 500), "http_error", 500),
    (ConnectionError("Failed to connect to Ollama"), "connection", None),
    (httpx.ReadTimeout("timed out"), "timeout", None),
    (httpx.ConnectTimeout("timed out"), "timeout", None),
    (httpx.RemoteProtocolError("peer closed"), "connection", None),
    (ValueError("Expecting value"), "malformed_response", None),
])
def test_one_table_for_every_failure(exc, reason, status):
    err = from_exception(exc, "/api/ps on h:1")
    assert (err.reason, err.http_status) == (reason, status)


def test_streams_and_control_calls_share_the_table():
    assert http_failure(503, "busy").reason == from_exception(ollama.ResponseError("busy", 503), "x").reason
    assert stream_failure("model 'm' not found").reason == "model_not_found"
    assert from_exception(ollama.ResponseError("model 'm' not found"), "x").message == stream_failure(
        "model 'm' not found").message
    with pytest.raises(RuntimeError):
        from_exception(RuntimeError("a bug of ours"), "x")
