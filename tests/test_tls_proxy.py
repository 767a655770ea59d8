"""HTTPS: verification against a loopback TLS server, and the CONNECT tunnel of HTTPS_PROXY."""

import os
import socket
import ssl
import threading

import pytest

import pi_min
from loopback import Loopback, Reply

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CA = os.path.join(DATA, "ca.pem")           # self-signed: api.example.test, localhost, 127.0.0.1
HELLO = (b'data: {"choices":[{"index":0,"delta":{"content":"secure"},"finish_reason":"stop"}]}\n\n'
         b"data: [DONE]\n\n")


@pytest.fixture
def tls_server():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(DATA, "localhost.pem"))
    srv = Loopback(tls=ctx)
    try:
        yield srv
    finally:
        srv.close()


class ConnectProxy:
    """A tiny CONNECT proxy that tunnels every request to one loopback target."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.requests = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn):
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return conn.close()
            head += chunk
        self.requests.append(head.decode("latin-1"))
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        back = threading.Thread(target=pipe, args=(upstream, conn), daemon=True)
        back.start()
        pipe(conn, upstream)
        back.join(timeout=10)
        conn.close()
        upstream.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def test_https_is_verified_against_the_configured_ca(tls_server, monkeypatch):
    tls_server.script([Reply(body=HELLO)])
    monkeypatch.setenv("SSL_CERT_FILE", CA)
    msg = pi_min.complete("groq", "hi", base_url=tls_server.url + "/v1", api_key="k", timeout=5)
    assert msg["content"][0]["text"] == "secure", msg.get("errorMessage")
    assert tls_server.requests[0].path == "/v1/chat/completions"


def test_untrusted_certificate_is_refused(tls_server, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    msg = pi_min.complete("groq", "hi", base_url=tls_server.url + "/v1", api_key="k", timeout=5, max_retries=0)
    assert msg["errorKind"] == "network" and "certificate" in msg["errorMessage"]
    assert tls_server.requests == []


def test_https_proxy_tunnels_with_connect(tls_server, monkeypatch):
    proxy = ConnectProxy(tls_server.port)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", CA)
        monkeypatch.setenv("HTTPS_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        tls_server.script([Reply(body=HELLO)])
        msg = pi_min.complete("groq", "hi", base_url="https://api.example.test/v1", api_key="k", timeout=5)
        assert msg["content"][0]["text"] == "secure", msg.get("errorMessage")
        assert proxy.requests[0].startswith("CONNECT api.example.test:443 HTTP/1.")  # http.client says 1.0 before 3.12
        assert "Proxy-Authorization: Basic dXNlcjpwQHNz" in proxy.requests[0]  # user:p@ss
        assert tls_server.requests[0].headers["host"] == "api.example.test"
    finally:
        proxy.close()


def test_https_connections_are_kept_alive(tls_server, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", CA)
    tls_server.script([Reply(body=HELLO), Reply(body=HELLO)])
    key = ("https", "127.0.0.1", tls_server.port, None)
    pi_min.complete("groq", "hi", base_url=tls_server.url, api_key="k", timeout=5)
    first = [s for s, _ in pi_min._POOL[key]]
    msg = pi_min.complete("groq", "hi", base_url=tls_server.url, api_key="k", timeout=5)
    assert msg["content"][0]["text"] == "secure"
    assert len(first) == 1 and [s for s, _ in pi_min._POOL[key]] == first
