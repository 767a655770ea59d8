"""amazon-bedrock: the AWS event-stream decoder (frames built byte for byte here), the
ConverseStream translator through a loopback server, SigV4 checked with botocore, the
bearer token without botocore, and handoff."""

import binascii
import json
import struct
import sys
import zlib

import pytest

import pi_min
from capture import sent_body
from invariants import StreamChecker
from loopback import Reply

ES = "application/vnd.amazon.eventstream"


def header(name, value):
    raw = name.encode()
    if isinstance(value, bool):
        return bytes([len(raw)]) + raw + bytes([0 if value else 1])
    if isinstance(value, int):
        return bytes([len(raw)]) + raw + b"\x04" + struct.pack(">i", value)
    data = value.encode()
    return bytes([len(raw)]) + raw + b"\x07" + struct.pack(">H", len(data)) + data


def frame(headers, payload):
    hb = b"".join(header(k, v) for k, v in headers.items())
    total = 16 + len(hb) + len(payload)
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + hb + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event(name, data):
    return frame({":message-type": "event", ":event-type": name, ":content-type": "application/json"},
                 json.dumps(dict(data, p="abcdefgh")).encode())


def exception(name, message):
    return frame({":message-type": "exception", ":exception-type": name, ":content-type": "application/json"},
                 json.dumps({"message": message}).encode())


# the worked frames of wire.md 6.5 and botocore's own vectors
FRAME_A = binascii.unhexlify(
    "000000a2000000579acad7c80d3a6d6573736167652d747970650700056576656e740b3a6576656e742d74797065070011636f6e74"
    "656e74426c6f636b44656c74610d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e7b22636f6e74"
    "656e74426c6f636b496e646578223a302c2264656c7461223a7b2274657874223a2248656c6c6f227d2c2270223a2261626364227d"
    "9b1cfb23")
FRAME_B = binascii.unhexlify(
    "000000760000005296d5fade0d3a6d6573736167652d747970650700056576656e740b3a6576656e742d7479706507000c6d657373"
    "61676553746172740d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e7b22726f6c65223a22617373"
    "697374616e74227d1cc6be18")
FRAME_C = binascii.unhexlify(
    "000000b2000000613590d5d30d3a6d6573736167652d74797065070009657863657074696f6e0f3a657863657074696f6e2d747970"
    "650700137468726f74746c696e67457863657074696f6e0d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a"
    "736f6e7b226d657373616765223a22546f6f206d616e792072657175657374732c20706c656173652077616974206265666f726520"
    "747279696e6720616761696e2e227d1d4f6dc6")
EMPTY = bytes.fromhex("000000100000000005c248eb7d98c8ff")
PAYLOAD_ONLY = b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'}\xc3e96"
INT8_HEADER = b"\x00\x00\x00\x17\x00\x00\x00\x07)\x86\x01X\x04byte\x02\xff\xc2\xf8i\xdc"


def decode(data, step=None):
    d = pi_min._EventStream()
    out = []
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        out += d.feed(data[i:i + step])
    out += d.close()
    return out


# -- decoder ------------------------------------------------------------------------------

def test_the_worked_frames_decode():
    assert decode(FRAME_A) == [("contentBlockDelta", '{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcd"}')]
    assert decode(FRAME_B) == [("messageStart", '{"role":"assistant"}')]
    assert decode(FRAME_C) == [("!exception:throttlingException",
                                '{"message":"Too many requests, please wait before trying again."}')]
    assert decode(EMPTY) == [("", "")]
    assert decode(PAYLOAD_ONLY) == [("", "{'foo':'bar'}")]
    assert pi_min._EventStream._headers(INT8_HEADER[12:19]) == {"byte": -1}


@pytest.mark.parametrize("step", [1, 2, 7, 64, None])
def test_frames_split_anywhere_and_sharing_reads(step):
    data = FRAME_B + FRAME_A + FRAME_C
    assert [k for k, _ in decode(data, step)] == ["messageStart", "contentBlockDelta",
                                                    "!exception:throttlingException"]


def test_a_frame_split_at_every_byte():
    data = FRAME_A + FRAME_B
    for cut in range(1, len(data)):
        d = pi_min._EventStream()
        assert d.feed(data[:cut]) + d.feed(data[cut:]) + d.close() == decode(data), cut


@pytest.mark.parametrize("corrupt, what", [
    (lambda f: f[:2] + bytes([f[2] ^ 1]) + f[3:], "prelude checksum"),        # a length byte
    (lambda f: f[:9] + bytes([f[9] ^ 0x10]) + f[10:], "prelude checksum"),    # the prelude CRC itself
    (lambda f: f[:-20] + bytes([f[-20] ^ 1]) + f[-19:], "message checksum"),  # one payload bit
    (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "message checksum"),              # the message CRC
])
def test_a_corrupt_frame_is_a_protocol_error(corrupt, what):
    with pytest.raises(pi_min.PiError) as info:
        decode(corrupt(FRAME_A))
    assert info.value.kind == "protocol" and what in str(info.value)


def test_impossible_lengths_are_refused_before_buffering():
    for total, hlen in ((15, 0), (100, 90), (pi_min.MAX_FRAME + 1, 0), (0xFFFFFFFF, 0)):
        prelude = struct.pack(">II", total, hlen)
        prelude += struct.pack(">I", zlib.crc32(prelude))
        d = pi_min._EventStream()
        with pytest.raises(pi_min.PiError, match="impossible frame lengths"):
            d.feed(prelude)


def test_unknown_header_type_and_truncated_frames():
    bad = frame({}, b"{}")
    hb = b"\x01x\x0f"  # a header of value type 15
    total = 16 + len(hb) + 2
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + hb + b"{}"
    with pytest.raises(pi_min.PiError, match="unknown header value type 15"):
        decode(body + struct.pack(">I", zlib.crc32(body)))
    d = pi_min._EventStream()
    assert d.feed(bad[:-3]) == []
    with pytest.raises(pi_min.PiError, match="inside a frame"):
        d.close()


# -- the family through loopback ------------------------------------------------------------

def stream_body(*frames):
    return b"".join(frames)


TEXT = stream_body(
    event("messageStart", {"role": "assistant"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " there"}}),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event("messageStop", {"stopReason": "end_turn"}),
    event("metadata", {"usage": {"inputTokens": 20, "outputTokens": 5, "cacheReadInputTokens": 100,
                                 "cacheWriteInputTokens": 7, "totalTokens": 132}, "metrics": {"latencyMs": 9}}))

TOOL = stream_body(
    event("messageStart", {"role": "assistant"}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Need the "}}}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "weather."}}}),
    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "SIG-1"}}}),
    event("contentBlockStop", {"contentBlockIndex": 0}),
    event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_A1",
                                                                              "name": "get_weather"}}}),
    event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city":'}}}),
    event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": ' "Oslo"}'}}}),
    event("contentBlockStop", {"contentBlockIndex": 1}),
    event("messageStop", {"stopReason": "tool_use"}),
    event("metadata", {"usage": {"inputTokens": 50, "outputTokens": 30, "totalTokens": 80}}))


def es_reply(body, split=False):
    return Reply(headers={"Content-Type": ES}, body=body, split=split, mode="chunked")


def run(server, body, split=False, model="amazon-bedrock/us.anthropic.claude-sonnet-4-5-v1", **kw):
    server.script([es_reply(body, split)])
    kw.setdefault("api_key", "bedrock-bearer-token-1234")
    kw.setdefault("max_retries", 0)
    checker = StreamChecker()
    last = None
    for last in pi_min.stream(model, kw.pop("context", "hi"), base_url=server.url, timeout=5, **kw):
        checker.feed(last)
    checker.finish()
    return last.get("message") or last["error"]


@pytest.mark.parametrize("split", [False, True])
def test_text_with_usage_and_cache_apart(server, split):
    msg = run(server, TEXT, split)
    assert msg["content"] == [{"type": "text", "text": "Hello there"}] and msg["stopReason"] == "stop"
    u = msg["usage"]
    assert (u["input"], u["output"], u["cacheRead"], u["cacheWrite"], u["totalTokens"]) == (20, 5, 100, 7, 132)
    req = server.requests[0]
    assert req.path == "/model/us.anthropic.claude-sonnet-4-5-v1/converse-stream"
    assert req.headers["authorization"] == "Bearer bedrock-bearer-token-1234"
    assert req.json["messages"] == [{"role": "user", "content": [{"text": "hi"}, {"cachePoint": {"type": "default"}}]}]
    assert req.json["inferenceConfig"]["maxTokens"] > 0 and "modelId" not in req.json


@pytest.mark.parametrize("split", [False, True])
def test_reasoning_with_signature_and_a_tool_call(server, split):
    msg = run(server, TOOL, split)
    assert msg["stopReason"] == "toolUse"
    assert msg["content"] == [
        {"type": "thinking", "thinking": "Need the weather.", "thinkingSignature": "SIG-1"},
        {"type": "toolCall", "id": "tooluse_A1", "name": "get_weather", "arguments": {"city": "Oslo"}}]


def test_model_ids_are_percent_encoded_in_the_path(server):
    run(server, TEXT, model="amazon-bedrock/anthropic.claude-3-5-sonnet-20241022-v2:0")
    run(server, TEXT, model="amazon-bedrock/arn:aws:bedrock:us-east-1:123:inference-profile/us.x")
    assert server.requests[0].path == "/model/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream"
    assert server.requests[1].path == ("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123%3Ainference-profile%2Fus.x"
                                       "/converse-stream")


@pytest.mark.parametrize("name, kind, retried", [
    ("throttlingException", "rate_limit", True), ("serviceUnavailableException", "server", True),
    ("internalServerException", "server", True), ("modelStreamErrorException", "server", False),
    ("validationException", "invalid_request", False)])
def test_exception_frames_before_content(server, name, kind, retried):
    server.script([es_reply(stream_body(event("messageStart", {"role": "assistant"}), exception(name, "nope"))),
                   es_reply(TEXT)])
    msg = pi_min.complete("amazon-bedrock", "hi", base_url=server.url, api_key="t", timeout=5, max_retries=1)
    if retried:
        assert msg["stopReason"] == "stop" and len(server.requests) == 2
    else:
        assert msg["errorKind"] == kind and name in msg["errorMessage"] and len(server.requests) == 1


def test_an_exception_after_content_keeps_it(server):
    body = stream_body(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Part"}}),
                       exception("modelStreamErrorException", "The model failed mid-stream"))
    msg = run(server, body)
    assert msg["errorKind"] == "server" and "mid-stream" in msg["errorMessage"]
    assert msg["content"] == [{"type": "text", "text": "Part"}]


@pytest.mark.parametrize("stop, reason, kind", [
    ("max_tokens", "length", None), ("stop_sequence", "stop", None),
    ("guardrail_intervened", "error", "invalid_request"), ("content_filtered", "error", "invalid_request"),
    ("model_context_window_exceeded", "error", "context_overflow"), ("malformed_tool_use", "error", "server")])
def test_stop_reasons(server, stop, reason, kind):
    body = stream_body(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}),
                       event("contentBlockStop", {"contentBlockIndex": 0}),
                       event("messageStop", {"stopReason": stop}))  # and no metadata: still a clean end
    msg = run(server, body)
    assert msg["stopReason"] == reason and msg.get("errorKind") == kind


def test_no_message_stop_is_an_error_even_with_an_empty_end_turn(server):
    msg = run(server, stream_body(event("messageStart", {"role": "assistant"}),
                                  event("metadata", {"usage": {"inputTokens": 0, "outputTokens": 0}})))
    assert msg["errorKind"] == "protocol" and "messageStop" in msg["errorMessage"]


def test_unknown_blocks_are_skipped(server):
    body = stream_body(event("contentBlockStart", {"contentBlockIndex": 0, "start": {"image": {"format": "png"}}}),
                       event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"citation": {"x": 1}}}),
                       event("contentBlockStop", {"contentBlockIndex": 0}),
                       event("someNewEvent", {"x": 1}), TEXT)
    assert run(server, body)["content"] == [{"type": "text", "text": "Hello there"}]


def test_http_errors_map_to_kinds(server):
    server.script([Reply(400, {"Content-Type": "application/json",
                               "x-amzn-ErrorType": "ValidationException:http://internal.amazon.com/"},
                         b'{"message":"Input is too long for requested model."}')])
    msg = pi_min.complete("amazon-bedrock", "hi", base_url=server.url, api_key="t", max_retries=0)
    assert msg["errorKind"] == "context_overflow" and msg["errorStatus"] == 400


def test_tool_round_trip_request(server):
    ctx = {"systemPrompt": "Be brief", "messages": [{"role": "user", "content": "weather?"}],
           "tools": [{"name": "get_weather", "description": "Weather",
                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}
    turn = run(server, TOOL, context=ctx)
    ctx["messages"] += [turn, {"role": "toolResult", "toolCallId": "tooluse_A1", "toolName": "get_weather",
                               "content": [{"type": "text", "text": "-3 C"}], "isError": False}]
    run(server, TEXT, context=ctx, cache_retention="none")
    sent = server.requests[1].json
    assert sent["system"] == [{"text": "Be brief"}]
    spec = sent["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["inputSchema"]["json"]["properties"] == {"city": {"type": "string"}}
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "weather?"}]},
        {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Need the weather.", "signature": "SIG-1"}}},
            {"toolUse": {"toolUseId": "tooluse_A1", "name": "get_weather", "input": {"city": "Oslo"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_A1", "content": [{"text": "-3 C"}],
                                                     "status": "success"}}]}]


def body_for(model, **options):
    return sent_body(model, "hi", api_key="t", **options)


def test_thinking_goes_in_additional_fields_for_claude():
    sonnet = pi_min.get_model("amazon-bedrock", "us.anthropic.claude-sonnet-4-5-v1", reasoning=True,
                              maxTokens=64000)
    seen = body_for(sonnet, reasoning="medium", max_tokens=1000, temperature=0.5)
    assert seen["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 8192}}
    assert seen["inferenceConfig"] == {"maxTokens": 9192}  # raised to fit; no temperature with thinking
    seen = body_for(pi_min.get_model("amazon-bedrock"), reasoning="high")  # Opus 4.6: adaptive thinking
    assert seen["additionalModelRequestFields"] == {"thinking": {"type": "adaptive"},
                                                    "output_config": {"effort": "high"}}
    assert "additionalModelRequestFields" not in body_for(sonnet, temperature=0.5)
    nova = pi_min.get_model("amazon-bedrock", "amazon.nova-pro-v1:0")
    assert body_for(nova, reasoning="high", temperature=0.5)["inferenceConfig"]["temperature"] == 0.5


def test_handoff_from_and_to_completions(server):
    ctx = {"messages": [{"role": "user", "content": "go"}]}
    turn = run(server, TOOL, context=ctx)
    ctx["messages"] += [turn, {"role": "toolResult", "toolCallId": "tooluse_A1", "toolName": "get_weather",
                               "content": [{"type": "text", "text": "cold"}], "isError": False}]
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
                              b'data: [DONE]\n\n')])
    done = pi_min.complete("groq", ctx, api_key="k", base_url=server.url + "/v1")
    oc = server.requests[1].json["messages"]
    assert oc[1]["content"] == "Need the weather." and "SIG-1" not in json.dumps(oc)
    ctx["messages"].append(done)
    ctx["messages"].append({"role": "user", "content": "thanks"})
    run(server, TEXT, context=ctx)
    back = server.requests[2].json["messages"]
    assert back[1]["content"][0]["reasoningContent"]["reasoningText"]["signature"] == "SIG-1"
    assert back[3] == {"role": "assistant", "content": [{"text": "ok"}]}


# -- credentials ----------------------------------------------------------------------------

def bedrock_via_models_json(agent_dir, server):
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"amazon-bedrock": {"baseUrl": server.url}}}))


def test_sigv4_with_env_keys_verifies_with_botocore(server, isolated_env, monkeypatch, capsys):
    pytest.importorskip("botocore")
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE0000000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-example-0123456789")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(isolated_env / "nope"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(isolated_env / "nope"))
    bedrock_via_models_json(isolated_env, server)
    server.script([es_reply(TEXT), es_reply(TEXT)])
    assert pi_min.main(["--provider", "bedrock", "hi"]) == 0
    assert capsys.readouterr().out == "Hello there\n"
    req = server.requests[0]
    auth = req.headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE0000000000/") and "/eu-west-3/bedrock/" in auth
    assert req.headers["x-amz-security-token"] == "session-token-example-0123456789"
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    # recompute the signature from what the server received
    check = AWSRequest(method="POST", url=server.url + req.path, data=req.body,
                       headers={h: req.headers[h] for h in signed if h != "host"})
    signer = SigV4Auth(Credentials("AKIDEXAMPLE0000000000", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                                   "session-token-example-0123456789"), "bedrock", "eu-west-3")
    check.context["timestamp"] = req.headers["x-amz-date"]
    expected = signer.signature(signer.string_to_sign(check, signer.canonical_request(check)), check)
    assert auth.endswith("Signature=" + expected)
    assert "wJalrXUtnFEMI" not in json.dumps(server.requests[0].headers)
    # a retry is signed again (a new request, its own signature over its own bytes)
    msg = pi_min.complete("amazon-bedrock", "again")
    assert msg["stopReason"] == "stop" and server.requests[1].headers["authorization"].startswith("AWS4-HMAC")


def test_a_bearer_token_needs_no_botocore(server, isolated_env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "botocore", None)  # as in a venv without it
    monkeypatch.setitem(sys.modules, "botocore.session", None)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "ABSKbearer-token-0123456789")
    bedrock_via_models_json(isolated_env, server)
    server.script([es_reply(TEXT)])
    assert pi_min.main(["--provider", "bedrock", "hi"]) == 0
    assert server.requests[0].headers["authorization"] == "Bearer ABSKbearer-token-0123456789"


def test_no_credentials_and_no_botocore_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "botocore", None)
    monkeypatch.setitem(sys.modules, "botocore.session", None)
    with pytest.raises(pi_min.ConfigError, match=r"AWS_BEARER_TOKEN_BEDROCK.*pip install 'pi-min\[bedrock\]'"):
        pi_min.stream("bedrock", "hi")


def test_the_decoder_agrees_with_botocores_on_the_same_bytes():
    pytest.importorskip("botocore")
    from botocore.eventstream import EventStreamBuffer
    data = FRAME_B + TOOL + FRAME_A + TEXT + FRAME_C
    theirs = []
    buf = EventStreamBuffer()
    for i in range(0, len(data), 37):
        buf.add_data(data[i:i + 37])
        for message in buf:
            h = message.headers
            kind = ("!exception:" + h[":exception-type"] if h.get(":message-type") == "exception"
                    else h.get(":event-type", ""))
            theirs.append((kind, message.payload.decode()))
    assert decode(data, 37) == theirs and len(theirs) == 2 + 11 + 6 + 1
