"""The family interface: a toy family registered from here streams through pi_min with
only its own pieces (a request builder, a translator, a decoder) and one registry row,
plus a per-attempt auth step that exchanges the key for a cached token."""

import json
import time

import pytest

import pi_min
from invariants import StreamChecker
from loopback import Reply


class Lines:
    """Newline-delimited JSON framing: one frame a line (a decoder of our own)."""

    CONTENT_TYPE = "application/x-ndjson"

    def __init__(self):
        self.buf = b""

    @staticmethod
    def looks_like(head):
        return head.lstrip().startswith(b'{"toy"')

    def feed(self, data):
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        return [("line", line.decode()) for line in lines if line.strip()]

    def close(self):
        rest, self.buf = self.buf, b""
        return [("line", rest.decode())] if rest.strip() else []


class Toy:
    """Frames like {"toy": 1, "text": "..."}; drives the builder through its operations."""

    def __init__(self, b, o):
        self.b = b
        self.reason = None

    def event(self, kind, data):
        f = json.loads(data)
        b = self.b
        if "think" in f:
            b.thinking(f["think"])
        if "sig" in f:
            b.sign(f["sig"], append=True)  # signatures may come after the block opened, in pieces
        if "redacted" in f:
            b.redacted_thinking(f["redacted"])
        if "text" in f:
            b.text(f["text"])
        if "call" in f:
            b.tool_start(f["call"], f["call"], f["name"])
            b.tool_delta(f["call"], f["args"])
        if "usage" in f:
            b.update_usage(**f["usage"])
        if "stop" in f:
            self.reason = pi_min._stop_reason(f["stop"], f.get("details", ""))
            return True
        return False

    def end(self, cut):
        if self.reason is None:
            raise pi_min.PiError("the toy stream ended before its stop frame", "protocol")
        return self.reason

    def whole(self, obj):
        for frame in obj["frames"]:
            self.event("line", json.dumps(frame))


def toy_build(model, ctx, o):
    return o.url + "/generate", {"Content-Type": "application/json"}, {
        "model": model["id"], "prompt": ctx["messages"][-1]["content"]}


def toy_token_step(o, method, url, headers, data, watch):
    def fetch():
        obj = pi_min._fetch_json("POST", o.url + "/token", {"Content-Type": "application/json"},
                                 json.dumps({"key": o.credential}).encode(), o, watch, "toy token service")
        return obj["token"], time.time() + obj["expires_in"]
    headers["Authorization"] = "Bearer " + pi_min._cached_token(("toy", o.credential), fetch)


FRAMES = [
    {"toy": 1, "usage": {"input": 12, "cacheRead": 3}},
    {"toy": 1, "think": "Let me "}, {"toy": 1, "think": "see."}, {"toy": 1, "sig": "sig-"}, {"toy": 1, "sig": "A"},
    {"toy": 1, "redacted": "opaque-blob"},
    {"toy": 1, "text": "Hi"}, {"toy": 1, "text": "!"},
    {"toy": 1, "call": "c1", "name": "look", "args": '{"q": "x"}'},
    {"toy": 1, "usage": {"output": 7}},
    {"toy": 1, "stop": "tool_use"},
]
BODY = b"".join(json.dumps(f).encode() + b"\n" for f in FRAMES)


@pytest.fixture
def toy(monkeypatch, isolated_env, server):
    monkeypatch.setitem(pi_min._FAMILIES, "toy-lines", pi_min._Family(toy_build, Toy, decoder=Lines))
    monkeypatch.setitem(pi_min._AUTH_STEPS, "toy-token", toy_token_step)
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"toy": {
        "api": "toy-lines", "baseUrl": server.url, "apiKey": "toy-key-123456", "auth": "toy-token",
        "models": [{"id": "t1", "cost": {"input": 1, "output": 2, "cacheRead": 0.5, "cacheWrite": 0}}]}}}))
    return server


def token_reply(token="tok-1", status=200):
    return Reply(status, {"Content-Type": "application/json"},
                 json.dumps({"token": token, "expires_in": 3600} if status == 200 else {"error": "no"}).encode())


@pytest.mark.parametrize("split", [False, True])
def test_a_toy_family_streams_through_its_own_decoder_and_builder_operations(toy, split):
    toy.script([token_reply(), Reply(headers={"Content-Type": "application/x-ndjson"}, body=BODY, split=split,
                                     mode="chunked")])
    checker = StreamChecker()
    events = list(pi_min.stream("toy", "hello", timeout=5))
    for e in events:
        checker.feed(e)
    checker.finish()
    msg = events[-1]["message"]
    assert [e["type"] for e in events if not e["type"].endswith("_delta")] == [
        "start", "thinking_start", "thinking_end", "thinking_start", "thinking_end", "text_start", "text_end",
        "toolcall_start", "toolcall_end", "done"]
    assert msg["content"] == [
        {"type": "thinking", "thinking": "Let me see.", "thinkingSignature": "sig-A"},
        {"type": "thinking", "thinking": "", "thinkingSignature": "opaque-blob", "redacted": True},
        {"type": "text", "text": "Hi!"},
        {"type": "toolCall", "id": "c1", "name": "look", "arguments": {"q": "x"}}]
    assert msg["stopReason"] == "toolUse"
    usage = msg["usage"]  # input and cacheRead from the first frame, output from a later one
    assert (usage["input"], usage["output"], usage["cacheRead"], usage["totalTokens"]) == (12, 7, 3, 22)
    assert usage["cost"]["total"] == pytest.approx((12 * 1 + 7 * 2 + 3 * 0.5) / 1e6)
    token_req, gen_req = toy.requests
    assert token_req.path == "/token" and token_req.json == {"key": "toy-key-123456"}
    assert gen_req.path == "/generate" and gen_req.headers["authorization"] == "Bearer tok-1"
    assert gen_req.json == {"model": "t1", "prompt": "hello"}


def test_the_token_is_cached_across_streams_and_attempts(toy):
    toy.script([token_reply(), Reply(503, {"Content-Type": "text/plain"}, b"busy"),
                Reply(headers={"Content-Type": "application/x-ndjson"}, body=BODY),
                Reply(headers={"Content-Type": "application/x-ndjson"}, body=BODY)])
    assert pi_min.complete("toy", "a", timeout=5)["stopReason"] == "toolUse"  # after one retry
    assert pi_min.complete("toy", "b", timeout=5)["stopReason"] == "toolUse"
    assert [r.path for r in toy.requests] == ["/token", "/generate", "/generate", "/generate"]
    assert all(r.headers["authorization"] == "Bearer tok-1" for r in toy.requests[1:])


def test_a_failing_token_exchange_is_an_error_event_of_its_kind(toy):
    toy.script([token_reply(status=401)])
    msg = pi_min.complete("toy", "a", timeout=5)
    assert msg["stopReason"] == "error" and msg["errorKind"] == "auth" and msg["errorStatus"] == 401
    assert "toy token service" in msg["errorMessage"]


def test_a_family_without_a_decoder_reads_one_json_body(toy, monkeypatch):
    monkeypatch.setitem(pi_min._FAMILIES, "toy-lines", pi_min._Family(toy_build, Toy, decoder=None))
    toy.script([token_reply(), Reply(headers={"Content-Type": "application/json"},
                                     body=json.dumps({"frames": FRAMES}).encode())])
    msg = pi_min.complete("toy", "a", timeout=5)
    assert msg["stopReason"] == "toolUse" and msg["content"][2] == {"type": "text", "text": "Hi!"}


def test_a_mislabelled_stream_is_recognised_by_its_decoder(toy):
    toy.script([token_reply(), Reply(headers={"Content-Type": "text/plain"}, body=BODY)])
    assert pi_min.complete("toy", "a", timeout=5)["stopReason"] == "toolUse"


@pytest.mark.parametrize("word, details, kind", [
    ("refusal", "policy violation: weapons", "invalid_request"),
    ("model_context_window_exceeded", "", "context_overflow"),
    ("SAFETY", "HARM_CATEGORY_DANGEROUS", "invalid_request"),
    ("wibble", "", "server"),
])
def test_stop_words_that_are_errors_keep_their_details(toy, word, details, kind):
    body = (json.dumps({"toy": 1, "text": "partial"}) + "\n"
            + json.dumps({"toy": 1, "stop": word, "details": details}) + "\n").encode()
    toy.script([token_reply(), Reply(headers={"Content-Type": "application/x-ndjson"}, body=body)])
    msg = pi_min.complete("toy", "a", timeout=5)
    assert msg["stopReason"] == "error" and msg["errorKind"] == kind
    assert word in msg["errorMessage"] and details in msg["errorMessage"]
    assert msg["content"] == [{"type": "text", "text": "partial"}]  # what came is kept


def test_a_family_or_auth_style_not_registered_is_a_config_error(isolated_env, server):
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"toy": {
        "api": "toy-lines", "baseUrl": server.url, "apiKey": "k", "models": [{"id": "t1"}]}}}))
    with pytest.raises(pi_min.ConfigError, match="toy-lines"):
        pi_min.stream("toy", "a")
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"toy": {
        "api": "openai-completions", "baseUrl": server.url, "apiKey": "k", "auth": "toy-token",
        "models": [{"id": "t1"}]}}}))
    with pytest.raises(pi_min.ConfigError, match="toy-token"):
        pi_min.stream("toy", "a")
