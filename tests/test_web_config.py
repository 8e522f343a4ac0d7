"""--web.config.file: TLS and basic auth in the Prometheus exporter-toolkit format.

The real exporter process serves real TLS with a certificate made here by the openssl CLI
(a CA and a server certificate for 127.0.0.1); clients verify it against that CA, send right
and wrong passwords, speak plain HTTP to the TLS port, and offer TLS versions below the minimum.
"""

import shutil
import ssl
import subprocess
import sys
import textwrap
import time

import bcrypt
import pytest
import requests

from exporter.http import HTTPServer, WebConfigError, WebConfigFile, load_web_config
from tests.kit.exporters import ExporterProcess, scenario_yaml, wait_for
from tests.kit.fake_ollama import Behavior, FakeOllama

PASSWORD = "correct horse battery staple"


def _openssl(*args, cwd):
    exe = shutil.which("openssl")
    assert exe, "the openssl CLI makes the test certificates (Debian package openssl)"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 signed by it, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    exts = (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth"))
    for name, ext in exts:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d


def _hash(password: str, rounds: int = 4) -> str:
    # Cost 4, the lowest, keeps the test fast; the format is what htpasswd -B writes.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def _web_yml(path, body: str):
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def served(pki, tmp_path_factory):
    """The exporter with TLS and one user, probing a fake Ollama."""
    d = tmp_path_factory.mktemp("web")
    web = _web_yml(d / "web.yml", f"""\
        tls_server_config:
          cert_file: {pki / 'server.crt'}
          key_file: {pki / 'server.key'}
        http_server_config:
          headers:
            X-Content-Type-Options: nosniff
        basic_auth_users:
          prometheus: '{_hash(PASSWORD)}'
        """)
    with FakeOllama(Behavior(tokens=3, token_interval=0.001)) as server:
        cfg = d / "c.yaml"
        cfg.write_text(scenario_yaml(server.url))
        exp = ExporterProcess(["--config.file", str(cfg), "--web.config.file", str(web)])
        exp.https = f"https://127.0.0.1:{exp.port}"
        exp.web = web
        exp.cfg = cfg
        try:
            yield exp
        finally:
            exp.stop()


def _get(exp, path, auth=None, method="GET", *, ca, **kw):
    """A request that verifies the server's certificate against the CA file `ca`."""
    return requests.request(method, exp.https + path, auth=auth, verify=ca, timeout=10, **kw)


def test_metrics_landing_page_and_reload_need_the_right_password(served, pki):
    ca = str(pki / "ca.crt")
    good = ("prometheus", PASSWORD)
    for path, method in (("/metrics", "GET"), ("/", "GET"), ("/-/reload", "POST")):
        for auth in (None, ("prometheus", "wrong"), ("nobody", PASSWORD), ("prometheus", PASSWORD + " ")):
            r = _get(served, path, auth, method, ca=ca)
            assert r.status_code == 401, (path, auth, r.status_code)
            assert r.headers["WWW-Authenticate"].startswith("Basic ")
            assert "llm_" not in r.text and "scenario" not in r.text  # nothing leaks with the refusal
        r = _get(served, path, good, method, ca=ca)
        assert r.status_code == 200, (path, r.status_code, r.text)
        assert r.headers["X-Content-Type-Options"] == "nosniff"  # http_server_config.headers
    assert "llm_exporter_config_last_reload_successful 1.0" in _get(served, "/metrics", good, ca=ca).text
    assert "<h1>ollama-perf-exporter" in _get(served, "/", good, ca=ca).text


def test_health_and_readiness_stay_open_to_probes_without_credentials(served, pki):
    # A kubelet or compose healthcheck carries no password; these say only Healthy / Ready.
    ca = str(pki / "ca.crt")
    assert _get(served, "/-/healthy", ca=ca).text == "Healthy\n"
    assert _get(served, "/-/ready", ca=ca).status_code == 200


def test_a_malformed_authorization_header_is_refused(served, pki):
    ca = str(pki / "ca.crt")
    for header in ("Basic !!!", "Basic " + "cHJvbWV0aGV1cw==", "Bearer abc", "basic"):  # no colon, other scheme
        r = _get(served, "/metrics", ca=ca, headers={"Authorization": header})
        assert r.status_code == 401, header


def test_the_certificate_is_served_and_checked_by_clients(served, pki, tmp_path):
    # A client that trusts another CA refuses the connection: the server really presents ours.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", "o.key", "-out", "o.crt", cwd=tmp_path)
    with pytest.raises(requests.exceptions.SSLError):
        _get(served, "/-/healthy", ca=str(tmp_path / "o.crt"))
    # Plain HTTP to the TLS port gets no answer, and the server goes on serving TLS.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{served.port}/metrics", auth=("prometheus", PASSWORD), timeout=5)
    assert _get(served, "/-/healthy", ca=str(pki / "ca.crt")).status_code == 200


def _tls12_client(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki / "ca.crt"))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _handshake(ctx, port):
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()


def test_min_version_is_enforced(served, pki, tmp_path):
    # The default minimum is TLS 1.2, as in the toolkit: a TLS 1.2 client gets in...
    assert _handshake(_tls12_client(pki), served.port) == "TLSv1.2"
    # ...and is refused by a server whose web config asks for TLS 1.3.
    path = _web_yml(tmp_path / "web.yml", f"""\
        tls_server_config:
          cert_file: {pki / 'server.crt'}
          key_file: {pki / 'server.key'}
          min_version: TLS13
        """)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = HTTPServer(app, "127.0.0.1", 0, WebConfigFile(str(path)))
    server.start()
    try:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _handshake(_tls12_client(pki), server.port)
        assert requests.get(f"https://127.0.0.1:{server.port}/", verify=str(pki / "ca.crt"), timeout=5).text == "ok"
    finally:
        server.stop()


def test_a_slow_handshake_does_not_hold_other_clients(served, pki):
    import socket

    idle = socket.create_connection(("127.0.0.1", served.port), timeout=5)  # connects, never says hello
    try:
        start = time.monotonic()
        assert _get(served, "/-/healthy", ca=str(pki / "ca.crt")).status_code == 200
        assert time.monotonic() - start < 5
    finally:
        idle.close()


def test_a_new_user_is_taken_without_a_restart_and_a_broken_file_keeps_the_last_good_one(served, pki):
    ca = str(pki / "ca.crt")
    original = served.web.read_text()
    try:
        served.web.write_text(original + f"  second: '{_hash('two')}'\n")
        wait_for(lambda: _get(served, "/metrics", ("second", "two"), ca=ca).status_code == 200, timeout=10,
                 interval=0.3, what="the new user accepted")
        served.web.write_text(original.replace("basic_auth_users:", "basic_auth_users: [oops"))
        time.sleep(1.5)
        assert _get(served, "/metrics", ("second", "two"), ca=ca).status_code == 200
        assert "web config not reloaded, the last good one stays" in served.output
    finally:
        served.web.write_text(original)
    wait_for(lambda: _get(served, "/metrics", ("second", "two"), ca=ca).status_code == 401, timeout=10,
             interval=0.3, what="the restored file without the second user")


def test_client_certificates_when_required(pki, tmp_path):
    web = _web_yml(tmp_path / "web.yml", f"""\
        tls_server_config:
          cert_file: {pki / 'server.crt'}
          key_file: {pki / 'server.key'}
          client_auth_type: RequireAndVerifyClientCert
          client_ca_file: {pki / 'ca.crt'}
        """)
    with FakeOllama(Behavior()) as server:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(scenario_yaml(server.url))
        exp = ExporterProcess(["--config.file", str(cfg), "--web.config.file", str(web)])
        try:
            url = f"https://127.0.0.1:{exp.port}/metrics"
            with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
                requests.get(url, verify=str(pki / "ca.crt"), timeout=5)
            r = requests.get(url, verify=str(pki / "ca.crt"), cert=(str(pki / "client.crt"), str(pki / "client.key")),
                             timeout=5)
            assert r.status_code == 200 and "llm_exporter_config_last_reload_successful" in r.text
        finally:
            exp.stop()


@pytest.mark.parametrize("body, message", [
    ("basic_auth_users:\n  u: plain-text-password\n", "expected a bcrypt hash"),
    ("basic_auth_user:\n  u: x\n", "unknown key(s) basic_auth_user"),
    ("tls_server_config:\n  cert_file: a.crt\n", "needs cert_file and key_file"),
    ("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
     "unsupported key(s) cipher_suites"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "does not exist"),
    ("http_server_config:\n  something: 1\n", "unsupported key(s) something"),
    ("[not, a, mapping]\n", "expected a mapping"),
])
def test_a_web_config_that_cannot_be_honoured_is_refused(tmp_path, body, message):
    path = tmp_path / "web.yml"
    path.write_text(body)
    with pytest.raises(WebConfigError) as info:
        load_web_config(str(path))
    assert message in str(info.value)


def test_tls_options_that_need_a_ca_or_a_known_version(pki, tmp_path):
    base = f"tls_server_config:\n  cert_file: {pki / 'server.crt'}\n  key_file: {pki / 'server.key'}\n"
    cases = [("  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
             ("  client_auth_type: RequireAnyClientCert\n", "supported: NoClientCert"),
             ("  min_version: TLS14\n", "expected one of TLS10")]
    for extra, message in cases:
        path = tmp_path / "web.yml"
        path.write_text(base + extra)
        with pytest.raises(WebConfigError) as info:
            load_web_config(str(path))
        assert message in str(info.value), extra
    path.write_text(base + "  min_version: TLS13\n")
    assert load_web_config(str(path)).tls_context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_the_exporter_refuses_to_start_on_a_bad_web_config(tmp_path):
    web = _web_yml(tmp_path / "web.yml", "basic_auth_users:\n  u: plain\n")
    run = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address", "127.0.0.1:0",
                          "--web.config.file", str(web)], capture_output=True, text=True, timeout=60)
    # Never serves in the clear instead: exit 1 (invalid config) before listening.
    assert run.returncode == 1, run.stderr
    assert "--web.config.file" in run.stderr and "bcrypt" in run.stderr
    assert "listening" not in run.stderr + run.stdout


def test_authentication_is_remembered_per_password_not_forever(tmp_path):
    path = _web_yml(tmp_path / "web.yml", f"basic_auth_users:\n  u: '{_hash('pw')}'\n")
    web = WebConfigFile(str(path))
    assert web.authenticate("u", "pw") and web.authenticate("u", "pw")  # the second from the cache
    assert not web.authenticate("u", "pw2") and not web.authenticate("v", "pw")
