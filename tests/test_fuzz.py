"""Odd and hostile stream bodies: every one ends in exactly one terminal event, never an exception."""

import json
import random

import pytest

import pi_min
from invariants import StreamChecker
from loopback import Reply

ODD_CHUNKS = [
    {"choices": "nope"}, {"choices": [1, 2]}, {"choices": [{"delta": "text"}]},
    {"choices": [{"delta": {"content": 5, "reasoning": {"x": 1}, "tool_calls": "x"}}]},
    {"choices": [{"delta": {"tool_calls": [None, 3, {"index": [1], "function": "f"},
                                           {"index": 0, "id": 7, "function": {"name": 3, "arguments": {"a": 1}}}]}}]},
    {"choices": [{"delta": {}, "finish_reason": {"weird": True}}]},
    {"usage": "lots"}, {"usage": {"prompt_tokens": "12", "completion_tokens": None,
                                  "prompt_tokens_details": "x"}},
    {"error": "plain string error"}, {"error": {"code": 502}}, [1, 2, 3], "just a string", 42, None,
]


@pytest.mark.parametrize("chunk", ODD_CHUNKS, ids=lambda c: json.dumps(c)[:40])
def test_odd_chunks_never_escape_as_exceptions(server, chunk):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
            b"data: " + json.dumps(chunk).encode() + b"\n\n"
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    server.script([Reply(body=body)])
    checker = StreamChecker()
    for event in pi_min.stream("groq", "hi", base_url=server.url, api_key="k", timeout=5):
        checker.feed(event)
    msg = checker.finish()
    assert "unexpected" not in (msg.get("errorMessage") or "")  # handled on purpose, not by the catch-all
    assert msg["content"][0]["text"].startswith("ok")


def test_random_bytes_and_mutations_end_in_one_terminal_event(server):
    rng = random.Random(1234)
    base = (b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":'
            b'{"name":"f","arguments":"{\\"a\\": [1, {\\"b\\": \\"x\\"}]}"}}]}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\ndata: [DONE]\n\n')
    for _ in range(60):
        body = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(body))
            if op < 0.4:
                body[pos] = rng.randrange(256)
            elif op < 0.7:
                del body[pos:pos + rng.randint(1, 20)]
            else:
                body[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        server.script([Reply(body=bytes(body), mode=rng.choice(["length", "chunked", "close"]),
                             split=rng.random() < 0.3)])
        checker = StreamChecker()
        for event in pi_min.stream("groq", "hi", base_url=server.url, api_key="k", timeout=5, max_retries=0):
            checker.feed(event)
        msg = checker.finish()
        assert msg["stopReason"] in ("stop", "toolUse", "error")
        assert "unexpected" not in (msg.get("errorMessage") or ""), msg.get("errorMessage")
