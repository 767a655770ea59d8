"""HTTP framing, abort, memory, fork, proxies, headers and error kinds, as a hostile server
would try them: each response is exact bytes from a raw socket (Reply(raw=...)), and the
framing cases are also cut at every byte where a read could end."""

import gzip
import json
import os
import socket
import ssl
import sys
import threading
import time
import tracemalloc

import pytest

import pi_min
from loopback import Reply

SSE = (b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\r\n\r\n'
       b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\r\n\r\n'
       b"data: [DONE]\r\n\r\n")
ABORT_BOUND = 1.5  # seconds from signal.set() to the terminal event (the goal is 200 ms)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def call(url, **kw):
    kw.setdefault("api_key", "k")
    kw.setdefault("timeout", 5)
    kw.setdefault("max_retries", 0)
    return pi_min.complete("groq", kw.pop("prompt", "hi"), base_url=url + "/v1", **kw)


def text(msg):
    return "".join(b.get("text", "") for b in msg["content"])


def head(*lines):
    return ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + "".join(x + "\r\n" for x in lines)
            + "\r\n").encode("latin-1")


def chunked(body, size=40):
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                   for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


# -- 1. framing is http.client's ---------------------------------------------------------

@pytest.mark.parametrize("raw, kind", [
    (head("Transfer-Encoding: chunked") + b"-5\r\nhello\r\n0\r\n\r\n", "protocol"),
    (head("Transfer-Encoding: chunked") + b"zz\r\nhello\r\n0\r\n\r\n", "network"),
    (head("Content-Length: \xb2") + SSE, "protocol"),
    (head("Content-Length: 12", "Content-Length: 40") + SSE, "protocol"),
    (head("Transfer-Encoding: notchunked") + SSE, "protocol"),
    (head("Transfer-Encoding: gzip, chunked") + chunked(SSE), "protocol"),
    (head("X-Folded: a", " b", "Content-Length: %d" % len(SSE)) + SSE, "protocol"),
    (head("no colon here", "Content-Length: %d" % len(SSE)) + SSE, "protocol"),
    (b"HTTQ/1.1 200 OK\r\n\r\n" + SSE, "protocol"),
    (head(*["X-%d: y" % i for i in range(150)]) + SSE, "protocol"),
    (head("X-Long: " + "y" * 70000) + SSE, "protocol"),
    (head("Content-Length: %d" % len(SSE)) + SSE[:100], "network"),  # cut short, then closed
], ids=["negative-chunk-size", "non-hex-chunk-size", "superscript-length", "two-lengths", "notchunked",
        "gzip-chunked", "folded-header", "header-without-colon", "bad-status-line", "150-headers",
        "70k-header-line", "length-cut-short"])
def test_malformed_framing_is_an_error_not_a_guess(server, raw, kind):
    server.script([Reply(raw=[raw])])
    started = time.monotonic()
    msg = call(server.url)
    assert msg["stopReason"] == "error" and msg["errorKind"] == kind, msg.get("errorMessage")
    assert time.monotonic() - started < 3  # no spinning, no waiting for a timeout


def test_bare_lf_head_with_crlf_later_in_the_body(server):
    raw = b"HTTP/1.1 200 OK\nContent-Type: text/event-stream\nContent-Length: %d\n\n" % len(SSE) + SSE
    server.script([Reply(raw=[raw])])
    assert text(call(server.url)) == "Hello"


@pytest.mark.parametrize("extra", [
    ["Content-Length: %d" % len(SSE), "Content-Length: %d" % len(SSE)],  # the same value twice is fine
    ["Content-Length: %d, %d" % (len(SSE), len(SSE))],
])
def test_repeated_equal_content_length_is_accepted(server, extra):
    server.script([Reply(raw=[head(*extra) + SSE])])
    assert text(call(server.url)) == "Hello"


def test_interim_responses_are_skipped(server):
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
           + head("Transfer-Encoding: chunked") + chunked(SSE))
    server.script([Reply(raw=[raw])])
    assert text(call(server.url)) == "Hello"


def test_chunked_response_cut_at_every_byte():
    """The same response in two writes, cut at every position: the head, the chunk
    sizes, extensions and CRLFs all straddle a read boundary somewhere."""
    from loopback import Loopback
    raw = head("Transfer-Encoding: chunked") + chunked(SSE, size=90)
    with Loopback() as srv:
        srv.script([Reply(raw=[raw[:i], 0.002, raw[i:]]) for i in range(1, len(raw))])
        for i in range(1, len(raw)):
            msg = call(srv.url)
            assert text(msg) == "Hello" and msg["stopReason"] == "stop", (i, msg.get("errorMessage"))


def test_trailers_and_chunk_extensions(server):
    body = chunked(SSE)[:-2] + b"X-Trailer: 1\r\n\r\n"
    server.script([Reply(raw=[head("Transfer-Encoding: chunked") + body])])
    assert text(call(server.url)) == "Hello"


# -- 2. abort within bounds in every phase ------------------------------------------------

def _abort_after(delay):
    signal = threading.Event()
    when = []

    def fire():
        when.append(time.monotonic())
        signal.set()
    threading.Timer(delay, fire).start()
    return signal, when


def _assert_aborted(msg, when):
    assert msg["stopReason"] == "aborted" and msg["errorKind"] == "aborted", msg.get("errorMessage")
    assert when and time.monotonic() - when[0] < ABORT_BOUND


class SilentServer:
    """Accepts connections, reads what comes (or not), never answers."""

    def __init__(self, read=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.read = read
        self.conns = []
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            if self.read:
                threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        conn.settimeout(0.1)
        while not self.stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def silent():
    srv = SilentServer()
    yield srv
    srv.close()


def test_abort_while_waiting_for_the_head(silent):
    signal, when = _abort_after(0.2)
    _assert_aborted(call("http://127.0.0.1:%d" % silent.port, signal=signal, timeout=30), when)


def test_abort_during_the_tls_handshake(silent, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", os.path.join(DATA, "ca.pem"))
    signal, when = _abort_after(0.2)
    _assert_aborted(call("https://127.0.0.1:%d" % silent.port, signal=signal, timeout=30), when)


def test_abort_during_the_proxy_connect(silent, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:%d" % silent.port)
    signal, when = _abort_after(0.2)
    _assert_aborted(call("https://api.example.test", signal=signal, timeout=30), when)


def test_abort_while_sending_a_large_body():
    srv = SilentServer(read=False)  # never reads: the upload stalls once the buffers are full
    try:
        signal, when = _abort_after(1.0)
        msg = call("http://127.0.0.1:%d" % srv.port, prompt="x" * (48 << 20), signal=signal, timeout=30)
        _assert_aborted(msg, when)
    finally:
        srv.close()


def test_abort_while_reading_the_body(server):
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', mode="chunked",
                         hang=True)])
    signal, when = _abort_after(0.3)
    msg = call(server.url, signal=signal, timeout=30)
    _assert_aborted(msg, when)
    assert text(msg) == "a"  # what was streamed is kept


def test_abort_during_retry_backoff(server):
    server.script([Reply(429, {"Content-Type": "application/json", "Retry-After": "30"}, b'{"error":"slow"}')])
    signal, when = _abort_after(0.2)
    _assert_aborted(call(server.url, signal=signal, max_retries=2), when)


def test_abort_while_connecting(monkeypatch):
    # a connect that never completes (a black-holed SYN), simulated at the socket call so
    # no packet leaves loopback
    import errno
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, addr: errno.EINPROGRESS)
    monkeypatch.setattr("select.select", lambda r, w, x, t=None: (time.sleep(min(t or 0, 0.05)), ([], [], []))[1])
    signal, when = _abort_after(0.2)
    _assert_aborted(call("http://127.0.0.1:9", signal=signal, timeout=30), when)


def test_without_a_signal_no_thread_is_started(server):
    server.script([Reply(body=SSE)])
    before = set(threading.enumerate())
    seen = set()
    for _ in pi_min.stream("groq", "hi", base_url=server.url + "/v1", api_key="k"):
        seen.update(t.name for t in set(threading.enumerate()) - before)
    assert "pi_min-abort" not in seen


# -- 4. done as soon as the terminator is parsed -----------------------------------------

def test_done_does_not_wait_for_bytes_after_the_terminator(server):
    trickle = []
    for _ in range(200):  # ":" comment chunks every 50 ms, for 10 s
        trickle += [b"1\r\n:\r\n", 0.05]
    server.script([Reply(raw=[head("Transfer-Encoding: chunked") + b"%x\r\n%s\r\n" % (len(SSE), SSE)] + trickle)])
    started = time.monotonic()
    msg = call(server.url, timeout=30)
    assert text(msg) == "Hello" and msg["stopReason"] == "stop"
    assert time.monotonic() - started < ABORT_BOUND
    assert not pi_min._POOL.get(("http", "127.0.0.1", server.port, None))  # still open: closed, not pooled


def test_a_body_that_ended_goes_back_to_the_pool(server):
    server.script([Reply(body=SSE, mode="chunked", split=True), Reply(body=SSE)])
    call(server.url)
    assert len(pi_min._POOL[("http", "127.0.0.1", server.port, None)]) == 1
    assert text(call(server.url)) == "Hello"
    assert server.connections == 1


# -- 5. bounded memory --------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/event-stream", "application/json"])
def test_a_gzip_bomb_is_inflated_in_bounded_steps(server, ctype):
    bomb = gzip.compress(b"x" * (48 << 20), 9)  # ~50 KB that inflate to 48 MiB
    server.script([Reply(headers={"Content-Type": ctype, "Content-Encoding": "gzip"}, body=bomb)])
    tracemalloc.start()
    try:
        msg = call(server.url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert msg["errorKind"] == "protocol" and "16 MiB" in msg["errorMessage"]
    assert peak < 40 << 20, peak  # the 16 MiB line limit plus change, never the 48 MiB


# -- 6. fork safety ------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_never_uses_the_parents_connections(server):
    server.script([Reply(body=SSE) for _ in range(3)])
    assert text(call(server.url)) == "Hello"
    key = ("http", "127.0.0.1", server.port, None)
    parent_conn = pi_min._POOL[key][0][0]
    pid = os.fork()
    if pid == 0:  # the child: its own connection, and the parent's is left alone
        code = 1
        try:
            ok = text(call(server.url)) == "Hello" and parent_conn not in [c for c, _ in pi_min._POOL.get(key, [])]
            code = 0 if ok else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert text(call(server.url)) == "Hello"
    assert server.connections == 2  # the parent reused its socket; the child opened its own


# -- 7. proxies -----------------------------------------------------------------------------

def test_an_https_proxy_url_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "https://user:hunter2@proxy.example:3128")
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("groq", "hi", api_key="k")
    assert "not supported" in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize("proxy", ["http://user:hunter2@proxy.example:99999", "http://user:hunter2@:3128",
                                   "socks5://user:hunter2@proxy.example:1080"])
def test_a_malformed_proxy_url_is_a_config_error_without_its_password(monkeypatch, proxy, capsys):
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("groq", "hi", api_key="k")
    assert "hunter2" not in str(info.value)
    assert pi_min.main(["--provider", "groq", "--api-key", "k", "hi"]) == 2
    assert "hunter2" not in capsys.readouterr().err


def test_a_refusing_proxy_never_shows_its_credentials(server, monkeypatch):
    server.script([Reply(407, {"Content-Type": "text/plain"}, b"who are you")])
    monkeypatch.setenv("HTTPS_PROXY", "http://user:hunter2@127.0.0.1:%d" % server.port)
    msg = call("https://api.example.test")
    assert msg["errorKind"] == "auth" and "407" in msg["errorMessage"] and "hunter2" not in msg["errorMessage"]
    assert "hunter2" not in pi_min._redact("proxy http://user:hunter2@10.0.0.1:8080 failed")


# -- 8. request targets and headers -------------------------------------------------------

def test_values_substituted_into_urls_are_percent_encoded(server, isolated_env):
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"tmpl": {
        "api": "openai-completions", "baseUrl": server.url + "/deploy/{model}", "apiKey": "k"}}}))
    server.script([Reply(body=SSE)])
    msg = pi_min.complete("tmpl/gpt\r\nX-Injected: 1", "hi", timeout=5)
    assert text(msg) == "Hello"
    req = server.requests[0]
    assert req.path == "/deploy/gpt%0D%0AX-Injected%3A%201/chat/completions"
    assert "x-injected" not in req.headers


@pytest.mark.parametrize("kw", [
    {"headers": {"Content-Length": "0"}}, {"headers": {"transfer-encoding": "chunked"}},
    {"headers": {"HOST": "evil"}}, {"headers": {"Connection": "close"}},
    {"headers": {"X-A": "1\r\nX-B: 2"}}, {"headers": {"X-A\r\nX-B": "2"}}, {"headers": {"X-A": "tab\tand\x00"}},
    {"base_url": "http://127.0.0.1:1/v1\r\nX-B: 2"}, {"base_url": "http://127.0.0.1:1/v 1"},
])
def test_bad_headers_and_urls_are_config_errors(kw):
    with pytest.raises(pi_min.ConfigError):
        pi_min.stream("groq", "hi", **dict({"api_key": "k", "base_url": "http://127.0.0.1:1/v1"}, **kw))


def test_headers_merge_case_insensitively(server):
    server.script([Reply(body=SSE)])
    call(server.url, headers={"authorization": "Bearer mine", "X-Extra": "1", "user-agent": None})
    got = server.requests[0].headers
    assert got["authorization"] == "Bearer mine"  # one Authorization, the caller's (a second would be joined)
    assert got["x-extra"] == "1" and "user-agent" not in got


def test_header_values_are_redacted_like_keys(server):
    server.script([Reply(400, {"Content-Type": "application/json"},
                         b'{"error":{"message":"bad header X-Custom: s3cr3t-value-42"}}')])
    msg = call(server.url, headers={"X-Custom": "s3cr3t-value-42"})
    assert "s3cr3t" not in msg["errorMessage"] and "***" in msg["errorMessage"]


# -- 9. credential routing ----------------------------------------------------------------

def test_a_stored_key_never_goes_to_plain_http_on_its_providers_host(server, monkeypatch):
    # the loopback server stands in for an http proxy, so it sees what would go to api.groq.com
    monkeypatch.setenv("GROQ_API_KEY", "gsk_stored_key_000000000000")
    monkeypatch.setenv("HTTP_PROXY", server.url)
    server.script([Reply(body=SSE)])
    msg = pi_min.complete("groq", "hi", base_url="http://api.groq.com/openai/v1", timeout=5, max_retries=0)
    assert text(msg) == "Hello"
    req = server.requests[0]
    assert req.path == "http://api.groq.com/openai/v1/chat/completions"
    assert "authorization" not in req.headers


def test_a_stored_key_goes_only_to_its_configured_port(server, isolated_env):
    from loopback import Loopback
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"mine": {
        "api": "openai-completions", "baseUrl": server.url + "/v1", "apiKey": "stored-key-123",
        "models": [{"id": "m"}]}}}))
    server.script([Reply(body=SSE)])
    assert text(pi_min.complete("mine", "hi", timeout=5)) == "Hello"
    assert server.requests[0].headers["authorization"] == "Bearer stored-key-123"
    with Loopback() as other:
        other.script([Reply(body=SSE)])
        assert text(pi_min.complete("mine", "hi", base_url=other.url + "/v1", timeout=5)) == "Hello"
        assert "authorization" not in other.requests[0].headers


# -- 10. error kinds ----------------------------------------------------------------------

def test_an_untrusted_certificate_is_not_retried(monkeypatch):
    from loopback import Loopback
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(DATA, "localhost.pem"))
    with Loopback(tls=ctx) as srv:
        msg = call(srv.url, max_retries=2)
        assert msg["errorKind"] == "network" and "certificate" in msg["errorMessage"]
        assert "not retried" in msg["errorMessage"]
        time.sleep(0.1)
        assert srv.connections == 1


def test_the_status_decides_before_the_message(server):
    server.script([Reply(429, {"Content-Type": "application/json"}, json.dumps({"error": {
        "message": "Rate limit reached: too many tokens per minute (TPM): Limit 30000, Requested 41000",
        "code": "rate_limit_exceeded"}}).encode())])
    assert call(server.url)["errorKind"] == "rate_limit"


def test_error_kinds_are_only_the_contracts():
    for status in [None] + list(range(100, 600)):
        for message, code in (("", None), ("prompt is too long", "invalid_request_error"),
                              ("x", "weird_code"), ("x", 42)):
            assert pi_min._classify(status, message, code) in pi_min.ERROR_KINDS


def test_a_missing_ca_bundle_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nope.pem"))
    pi_min._TLS.clear()
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("groq", "hi", api_key="k", base_url="https://127.0.0.1:1/v1")
    assert "SSL_CERT_FILE" in str(info.value)


def test_connection_errors_try_every_address(monkeypatch, server):
    # the first resolved address refuses, the second is the server
    real = socket.getaddrinfo
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()

    def two(host, port, *a, **kw):
        infos = real("127.0.0.1", port, *a, **kw)
        first = real("127.0.0.1", dead_port, *a, **kw)
        return first[:1] + infos[:1]
    monkeypatch.setattr(socket, "getaddrinfo", two)
    server.script([Reply(body=SSE)])
    assert text(call("http://multi.localhost:%d" % server.port)) == "Hello"


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip("loopback servers here assume POSIX sockets")
