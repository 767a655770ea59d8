"""HTTP transport: keep-alive, framing, timeouts, abort, retries and their delays."""

import email.utils
import json
import threading
import time

import pytest

import pi_min
from loopback import Reply

HELLO = (b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
         b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
         b"data: [DONE]\n\n")


def call(server, **kw):
    kw.setdefault("api_key", "k")
    kw.setdefault("timeout", 5)
    return pi_min.complete("groq", "hi", base_url=server.url + "/v1", **kw)


def text(msg):
    return "".join(b.get("text", "") for b in msg["content"])


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_each_framing_streams_and_keeps_alive_when_it_can(server, mode):
    server.script([Reply(body=HELLO, mode=mode), Reply(body=HELLO, mode=mode)])
    first = call(server)
    key = ("http", "127.0.0.1", server.port, None)
    pooled = [s for s, _ in pi_min._POOL.get(key, [])]
    second = call(server)
    assert text(first) == text(second) == "Hello"
    if mode == "close":
        assert not pi_min._POOL.get(key)
    else:
        assert len(pooled) == 1 and [s for s, _ in pi_min._POOL[key]] == pooled  # the same socket again


def test_stale_pooled_socket_is_replaced_transparently(server):
    server.script([Reply(body=HELLO)])
    call(server)
    key = ("http", "127.0.0.1", server.port, None)
    stale, _ = pi_min._POOL[key][0]
    stale.sock.shutdown(2)  # as if the server had dropped the idle connection
    server.script([Reply(body=HELLO)])
    assert text(call(server)) == "Hello"
    assert len(server.requests) == 2


def test_idle_timeout_is_a_timeout_error(server):
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', mode="chunked",
                         hang=True)])
    msg = call(server, timeout=0.3, max_retries=0)
    assert msg["errorKind"] == "timeout" and msg["stopReason"] == "error"
    assert text(msg) == "a"


def test_abort_while_waiting_for_data(server):
    server.script([Reply(body=b": keep-alive\n\n", mode="chunked", hang=True)])
    signal = threading.Event()
    threading.Timer(0.2, signal.set).start()
    started = time.monotonic()
    msg = call(server, signal=signal, timeout=30)
    assert msg["stopReason"] == "aborted" and msg["errorKind"] == "aborted"
    assert msg["errorMessage"] == "Request was aborted"
    assert time.monotonic() - started < 10  # the abort, not the 30 s timeout, ended it


def test_abort_during_retry_backoff(server):
    server.script([Reply(429, {"Content-Type": "application/json", "Retry-After": "30"},
                         b'{"error":{"message":"slow down"}}')])
    signal = threading.Event()
    threading.Timer(0.2, signal.set).start()
    started = time.monotonic()
    msg = call(server, signal=signal)
    assert msg["stopReason"] == "aborted" and len(server.requests) == 1
    assert time.monotonic() - started < 10


def test_closing_the_generator_closes_the_socket(server):
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', mode="chunked",
                         hang=True)])
    events = pi_min.stream("groq", "hi", base_url=server.url, api_key="k", timeout=30)
    partial = None
    for event in events:
        if event["type"] == "text_delta":
            partial = event["partial"]
            break
    events.close()
    assert partial["stopReason"] == "aborted" and partial["content"][0]["text"] == "a"
    key = ("http", "127.0.0.1", server.port, None)
    assert not pi_min._POOL.get(key)  # a half-read socket is never pooled


def test_retry_after_http_date_and_ms():
    soon = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3 <= pi_min._parse_retry_after({"retry-after": soon}) <= 6
    assert pi_min._parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert pi_min._parse_retry_after({"retry-after": "garbage"}) is None
    assert pi_min._parse_retry_after({}) is None


@pytest.mark.parametrize("status", [408, 500, 502, 504, 529])
def test_retryable_statuses(server, status):
    server.script([Reply(status, {"Content-Type": "text/plain", "Retry-After": "0"}, b"busy"), Reply(body=HELLO)])
    assert text(call(server)) == "Hello"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status, kind", [(400, "invalid_request"), (403, "auth"), (404, "not_found"),
                                          (422, "invalid_request")])
def test_non_retryable_statuses(server, status, kind):
    server.script([Reply(status, {"Content-Type": "application/json"}, b'{"error":{"message":"nope"}}')])
    msg = call(server)
    assert (msg["errorKind"], msg["errorStatus"], len(server.requests)) == (kind, status, 1)
    assert "nope" in msg["errorMessage"] and str(status) in msg["errorMessage"]


def test_html_error_page_is_summarised(server):
    server.script([Reply(502, {"Content-Type": "text/html"}, b"<html><body>" + b"x" * 5000 + b"</body></html>")] * 3)
    msg = call(server, max_retries=0)
    assert msg["errorStatus"] == 502 and "HTML error page" in msg["errorMessage"]
    assert len(msg["errorMessage"]) < 300


def test_connection_refused_is_a_network_error():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    msg = pi_min.complete("groq", "hi", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
    assert msg["errorKind"] == "network" and msg["stopReason"] == "error"


def test_oversized_line_is_a_protocol_error(server):
    body = b"data: " + b"x" * (pi_min.MAX_FRAME + 10) + b"\n\n"
    server.script([Reply(body=body)])
    msg = call(server)
    assert msg["errorKind"] == "protocol" and "16 MiB" in msg["errorMessage"]


def test_invalid_utf8_is_a_protocol_error(server):
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"\xff"}}]}\n\n')])
    msg = call(server)
    assert msg["errorKind"] == "protocol" and "UTF-8" in msg["errorMessage"]


def test_lone_surrogates_are_dropped_from_the_request(server):
    server.script([Reply(body=HELLO)])
    pi_min.complete("groq", {"messages": [{"role": "user", "content": "a\ud83db \ud83d\ude00"}]},
                    base_url=server.url, api_key="k")
    assert server.requests[0].json["messages"][0]["content"] == "ab \U0001F600"


def test_split_url_forms():
    assert pi_min._split_url("https://h.example/v1") == ("https", "h.example", 443, "/v1")
    assert pi_min._split_url("http://[::1]:8080/x?y=1") == ("http", "::1", 8080, "/x?y=1")
    assert pi_min._split_url("http://user:pw@h:81") == ("http", "h", 81, "/")
    with pytest.raises(pi_min.ConfigError):
        pi_min._split_url("ftp://h")


@pytest.mark.parametrize("ctype", ["application/json", "", "text/plain"])
def test_mislabelled_event_stream_is_still_streamed(server, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    server.script([Reply(headers=headers, body=HELLO, mode="chunked", split=True)])
    msg = call(server)
    assert text(msg) == "Hello" and msg["stopReason"] == "stop"


def test_plain_text_200_is_a_protocol_error(server):
    server.script([Reply(headers={"Content-Type": "text/plain"}, body=b"internal error, try later")])
    msg = call(server)
    assert msg["errorKind"] == "protocol" and "text/plain" in msg["errorMessage"]


def test_gzip_body_is_inflated(server):
    import gzip
    server.script([Reply(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"},
                         body=gzip.compress(HELLO), mode="chunked", split=True)])
    msg = call(server)
    assert text(msg) == "Hello"
    assert server.requests[0].headers["accept-encoding"] == "identity"


def test_redirect_is_an_error_naming_the_target(server):
    server.script([Reply(308, {"Location": "https://new.example/v1/chat/completions"}, b"")])
    msg = call(server)
    assert msg["errorStatus"] == 308 and "https://new.example/v1" in msg["errorMessage"]
    assert msg["errorKind"] == "invalid_request"


def test_connect_timeout_and_abort_during_connect(monkeypatch):
    # A connect that never completes (a black-holed SYN), simulated at the socket call so
    # no packet leaves loopback: the abort must end the wait, and later the timeout.
    import errno
    import socket
    real = socket.socket.connect_ex

    def never(self, addr):
        return errno.EINPROGRESS
    monkeypatch.setattr(socket.socket, "connect_ex", never)
    monkeypatch.setattr("select.select", lambda r, w, x, t=None: (time.sleep(min(t or 0, 0.05)), ([], [], []))[1])
    signal = threading.Event()
    threading.Timer(0.2, signal.set).start()
    started = time.monotonic()
    msg = pi_min.complete("groq", "hi", base_url="http://127.0.0.1:9/v1", api_key="k", signal=signal, timeout=20)
    assert msg["stopReason"] == "aborted"
    assert time.monotonic() - started < 10
    msg = pi_min.complete("groq", "hi", base_url="http://127.0.0.1:9/v1", api_key="k", timeout=0.3, max_retries=0)
    assert msg["errorKind"] == "network" and "cannot connect" in msg["errorMessage"]
    monkeypatch.setattr(socket.socket, "connect_ex", real)


def test_whole_json_completion_with_two_unindexed_tool_calls(server):
    body = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": "{\"x\": 1}"}},
            {"type": "function", "function": {"name": "b", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
    server.script([Reply(headers={"Content-Type": "application/json"}, body=json.dumps(body).encode())])
    msg = call(server)
    calls = [(b["name"], b["arguments"]) for b in msg["content"]]
    assert calls == [("a", {"x": 1}), ("b", {})] and msg["stopReason"] == "toolUse"
    assert msg["content"][0]["id"] != msg["content"][1]["id"]
    assert (msg["usage"]["input"], msg["usage"]["output"]) == (5, 7)


@pytest.mark.parametrize("data", [b'{"message": "overloaded, try later", "type": "server_error"}',
                                  b"overloaded, try later"])
def test_sse_error_events_carry_their_message(server, data):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"so far"}}]}\n\n'
            b"event: error\ndata: " + data + b"\n\n")
    server.script([Reply(body=body)])
    msg = call(server)
    assert msg["stopReason"] == "error" and "overloaded, try later" in msg["errorMessage"]
    assert msg["errorKind"] == "server" and text(msg) == "so far"


def test_a_server_rejecting_stream_options_is_asked_again_without_it(server):
    reject = {"object": "error", "message": {"detail": [{"type": "extra_forbidden", "msg": "Extra inputs are not "
              "permitted", "loc": ["body", "stream_options", "include_usage"]}]}, "type": "invalid_request_error"}
    server.script([Reply(422, {"Content-Type": "application/json"}, json.dumps(reject).encode()), Reply(body=HELLO)])
    msg = call(server, max_retries=0)
    assert text(msg) == "Hello"
    assert "stream_options" in server.requests[0].json and "stream_options" not in server.requests[1].json
    server.script([Reply(422, {"Content-Type": "application/json"}, json.dumps(reject).encode())] * 2)
    msg = call(server, max_retries=0)
    assert msg["errorStatus"] == 422 and len(server.requests) == 4  # no loop: one relaxed retry, and only one


def test_validation_error_details_are_readable(server):
    body = {"detail": [{"type": "missing", "loc": ["body", "model"], "msg": "Field required"}]}
    server.script([Reply(422, {"Content-Type": "application/json"}, json.dumps(body).encode())])
    msg = call(server)
    assert msg["errorMessage"] == "HTTP 422 from groq: Field required (body.model)"
