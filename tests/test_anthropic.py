"""anthropic-messages beyond the fixture corpus: the presets, request shapes per thinking
level, subscription (OAuth) tokens and their refresh, and handoff both ways."""

import json
import os
import stat
import time

import pytest

import pi_min
from capture import sent_body
from loopback import Reply

STREAM = b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode()) for name, data in [
    ("message_start", {"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant",
                                                           "content": [], "model": "m", "stop_reason": None,
                                                           "usage": {"input_tokens": 9, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text",
                                                                                          "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "Hi there"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
    ("message_stop", {"type": "message_stop"})])
PRESETS = ["anthropic", "kimi-for-coding", "minimax", "minimax-cn", "minimax-coding-plan", "minimax-cn-coding-plan",
           "zenmux", "umans"]


def sse_reply(body=STREAM):
    return Reply(headers={"Content-Type": "text/event-stream"}, body=body)


def write(agent_dir, name, data):
    (agent_dir / name).write_text(json.dumps(data))


@pytest.mark.parametrize("provider", PRESETS)
def test_each_preset_streams_through_models_json(provider, isolated_env, server, monkeypatch, capsys):
    row = pi_min._table().PROVIDERS[provider]
    monkeypatch.setenv(row["envKeys"][0], "preset-key-" + provider)
    base = row["baseUrl"].replace("https://", "").split("/", 1)[1]  # the path part, kept
    write(isolated_env, "models.json", {"providers": {provider: {"baseUrl": f"{server.url}/{base}"}}})
    server.script([sse_reply()])
    assert pi_min.main(["--provider", provider, "hi"]) == 0
    assert capsys.readouterr().out == "Hi there\n"
    req = server.requests[0]
    assert req.path.endswith("/v1/messages") and "/v1/messages/" not in req.path and req.path.count("/v1") == 1
    assert req.headers["x-api-key"] == "preset-key-" + provider
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.json["model"] == row["defaultModel"] and req.json["stream"] is True
    assert req.json["max_tokens"] == pi_min.get_model(provider)["maxTokens"]


@pytest.mark.parametrize("base, path", [("", "/v1/messages"), ("/v1", "/v1/messages"),
                                        ("/v1/messages", "/v1/messages"),
                                        ("/api/anthropic", "/api/anthropic/v1/messages")])
def test_base_urls_are_not_doubled(server, base, path):
    server.script([sse_reply()])
    msg = pi_min.complete("anthropic", "hi", base_url=server.url + base, api_key="k")
    assert msg["stopReason"] == "stop" and server.requests[0].path == path


def body_for(model, **options):
    return sent_body(model, {"systemPrompt": "sys", "messages": [{"role": "user", "content": "hi"}]}, api_key="k",
                     **options)


def test_thinking_levels_map_to_budgets_or_adaptive_effort():
    sonnet45 = pi_min.get_model("anthropic", "claude-sonnet-4-5")
    assert "thinking" not in body_for(sonnet45) and "thinking" not in body_for(sonnet45, reasoning="off")
    body = body_for(sonnet45, reasoning="medium", max_tokens=1000, temperature=0.3)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert body["max_tokens"] == 9192 and "temperature" not in body  # raised to fit; no temperature with thinking
    body = body_for(sonnet45, reasoning="high")
    assert body["thinking"]["budget_tokens"] < body["max_tokens"] == sonnet45["maxTokens"]
    assert body_for(sonnet45, temperature=0.3)["temperature"] == 0.3
    opus46 = pi_min.get_model("anthropic", "claude-opus-4-6")
    body = body_for(opus46, reasoning="xhigh")
    assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "max"}
    assert body_for(opus46, reasoning="minimal")["output_config"] == {"effort": "low"}
    small = pi_min.get_model("anthropic", "claude-sonnet-4-5", maxTokens=4096)
    body = body_for(small, reasoning="high")
    assert body["thinking"]["budget_tokens"] < body["max_tokens"] <= 4096


def test_cache_marks_follow_cache_retention():
    model = pi_min.get_model("anthropic", "claude-sonnet-4-5")
    body = body_for(model)
    assert body["system"] == [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}]
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    body = body_for(model, cache_retention="none")
    assert "cache_control" not in json.dumps(body)
    body = body_for(model, cache_retention="long", base_url="https://api.anthropic.com/v1/messages")
    assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    body = body_for(pi_min.get_model("minimax"), cache_retention="long")  # a compatible server: 5 minutes only
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}


def test_tool_choice_forms():
    model = pi_min.get_model("anthropic", "claude-sonnet-4-5")
    tools = [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]
    for choice, sent in (("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
                         ("look", {"type": "tool", "name": "look"}),
                         ({"type": "function", "function": {"name": "look"}}, {"type": "tool", "name": "look"})):
        import threading
        seen, signal = {}, threading.Event()
        pi_min.complete(model, {"messages": [{"role": "user", "content": "x"}], "tools": tools}, api_key="k",
                        tool_choice=choice, signal=signal,
                        on_payload=lambda body, m: (seen.update(body), signal.set()) and None)
        assert seen["tool_choice"] == sent and seen["tools"][0]["input_schema"] == tools[0]["parameters"]


# -- subscriptions ------------------------------------------------------------------------

def test_a_subscription_token_goes_as_a_bearer_token_with_the_oauth_beta(server):
    server.script([sse_reply()])
    token = "sk-ant-oat01-" + "x" * 40
    msg = pi_min.complete("anthropic", {"systemPrompt": "Be terse", "messages": [{"role": "user", "content": "hi"}]},
                          api_key=token, base_url=server.url)
    assert msg["stopReason"] == "stop"
    req = server.requests[0]
    assert req.headers["authorization"] == "Bearer " + token and "x-api-key" not in req.headers
    assert "oauth-2025-04-20" in req.headers["anthropic-beta"].split(",")
    assert [b["text"] for b in req.json["system"]][1:] == ["Be terse"]


def oauth_entry(ts_form, expires_ms, token_url):
    if ts_form:
        return {"type": "oauth", "access": "old-access-token", "refresh": "the-refresh-token",
                "expires": expires_ms, "token_url": token_url}
    return {"type": "o_auth", "access_token": "old-access-token", "refresh_token": "the-refresh-token",
            "expires": expires_ms, "token_url": token_url}


@pytest.mark.parametrize("ts_form", [True, False])
def test_an_expired_oauth_entry_is_refreshed_and_written_back(ts_form, isolated_env, server, monkeypatch):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    write(isolated_env, "auth.json", {"anthropic": oauth_entry(ts_form, 1000, server.url + "/v1/oauth/token"),
                                      "groq": {"type": "api_key", "key": "gsk-keep-me"}})
    write(isolated_env, "models.json", {"providers": {"anthropic": {"baseUrl": server.url + "/v1/messages"}}})
    server.script([Reply(200, {"Content-Type": "application/json"}, json.dumps(
        {"access_token": "new-access-token", "refresh_token": "new-refresh-token", "expires_in": 3600}).encode()),
        sse_reply(), sse_reply()])
    assert pi_min.complete("anthropic", "hi")["stopReason"] == "stop"
    assert pi_min.complete("anthropic", "again")["stopReason"] == "stop"  # the refreshed token, not refreshed again
    refresh_req, first, second = server.requests
    assert refresh_req.path == "/v1/oauth/token"
    assert refresh_req.json["grant_type"] == "refresh_token"
    assert refresh_req.json["refresh_token"] == "the-refresh-token"
    assert first.headers["authorization"] == second.headers["authorization"] == "Bearer new-access-token"
    path = isolated_env / "auth.json"
    saved = json.loads(path.read_text())
    assert saved["groq"] == {"type": "api_key", "key": "gsk-keep-me"}  # other entries kept
    entry = saved["anthropic"]
    access, refresh = ("access", "refresh") if ts_form else ("access_token", "refresh_token")
    assert entry[access] == "new-access-token" and entry[refresh] == "new-refresh-token"
    assert entry["expires"] > time.time() * 1000 + 3000 * 1000
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in os.listdir(isolated_env) if p.startswith(".auth.json.")]  # no temp file left


def test_a_failing_refresh_is_an_auth_error_event(isolated_env, server, monkeypatch):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    write(isolated_env, "auth.json", {"anthropic": oauth_entry(True, 1000, server.url + "/v1/oauth/token")})
    write(isolated_env, "models.json", {"providers": {"anthropic": {"baseUrl": server.url + "/v1/messages"}}})
    server.script([Reply(400, {"Content-Type": "application/json"},
                         b'{"error": "invalid_grant", '
                         b'"error_description": "Refresh token the-refresh-token revoked"}')])
    events = list(pi_min.stream("anthropic", "hi"))
    assert events[0]["type"] == "start" and events[-1]["type"] == "error"
    msg = events[-1]["error"]
    assert msg["errorStatus"] == 400 and "token endpoint" in msg["errorMessage"]
    assert "the-refresh-token" not in msg["errorMessage"]  # a secret, even when the server echoes it
    assert json.loads((isolated_env / "auth.json").read_text())["anthropic"]["access"] == "old-access-token"


# -- handoff ------------------------------------------------------------------------------

def test_a_completions_conversation_continues_on_anthropic(server):
    calls = [{"type": "toolCall", "id": "call_abc|weird/id:1", "name": "look", "arguments": {"q": "x"}}]
    ctx = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "api": "openai-completions", "provider": "deepseek", "model": "deepseek-reasoner",
         "content": [{"type": "thinking", "thinking": "Plan it."}, {"type": "text", "text": "Looking."}] + calls,
         "stopReason": "toolUse", "usage": {}, "timestamp": 1},
        {"role": "toolResult", "toolCallId": "call_abc|weird/id:1", "toolName": "look",
         "content": [{"type": "text", "text": "found"}], "isError": False},
        {"role": "user", "content": "and now?"}],
        "tools": [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]}
    server.script([sse_reply()])
    assert pi_min.complete("anthropic", ctx, api_key="k", base_url=server.url)["stopReason"] == "stop"
    sent = server.requests[0].json["messages"]
    assert sent[1] == {"role": "assistant", "content": [
        {"type": "text", "text": "Plan it."}, {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "call_abc_weird_id_1", "name": "look", "input": {"q": "x"}}]}
    assert sent[2]["content"][0]["tool_use_id"] == "call_abc_weird_id_1"


def test_an_anthropic_turn_continues_on_completions_and_back(server):
    server.script([sse_reply(b"".join([
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":5}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"thinking","thinking":""}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"hmm"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"signature_delta","signature":"SIG=="}}\n\n',
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
        b'"content_block":{"type":"tool_use","id":"toolu_01A","name":"look","input":{}}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"q\\": \\"y\\"}"}}\n\n',
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},'
        b'"usage":{"output_tokens":7}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n']))])
    ctx = {"messages": [{"role": "user", "content": "go"}],
           "tools": [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]}
    turn = pi_min.complete("anthropic/claude-sonnet-4-5", ctx, api_key="k", base_url=server.url)
    assert turn["stopReason"] == "toolUse" and turn["content"][0]["thinkingSignature"] == "SIG=="
    ctx["messages"] += [turn, {"role": "toolResult", "toolCallId": "toolu_01A", "toolName": "look",
                               "content": [{"type": "text", "text": "ok"}], "isError": False}]
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"done"},"finish_reason":"stop"}]}'
                              b'\n\ndata: [DONE]\n\n')])
    assert pi_min.complete("groq", ctx, api_key="k", base_url=server.url + "/v1")["stopReason"] == "stop"
    oc = server.requests[1].json["messages"]
    assert oc[1]["content"] == "hmm"  # foreign thinking became text
    assert oc[1]["tool_calls"][0]["id"] == "toolu_01A" and oc[2]["tool_call_id"] == "toolu_01A"
    assert "SIG==" not in json.dumps(oc)  # the signature never leaves Anthropic
    server.script([sse_reply()])
    assert pi_min.complete("anthropic/claude-sonnet-4-5", ctx, api_key="k", base_url=server.url)["stopReason"] == "stop"
    back = server.requests[2].json["messages"]
    assert back[1]["content"][0] == {"type": "thinking", "thinking": "hmm", "signature": "SIG=="}  # same model
    assert back[2]["content"][0]["tool_use_id"] == "toolu_01A"
