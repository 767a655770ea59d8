"""Cross-provider handoff (transform_messages) and what openai-completions sends for it."""

import json

import pi_min
from loopback import Reply

DONE = (b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
        b"data: [DONE]\n\n")


def assistant(provider, api, model, content, stop="stop"):
    return {"role": "assistant", "content": content, "api": api, "provider": provider, "model": model,
            "usage": {}, "stopReason": stop, "timestamp": 1}


ANTHROPIC_TURN = assistant("anthropic", "anthropic-messages", "claude-sonnet-4-5", [
    {"type": "thinking", "thinking": "Let me add.", "thinkingSignature": "sig-abc"},
    {"type": "thinking", "thinking": "", "redacted": True, "thinkingSignature": "opaque"},
    {"type": "text", "text": "Calling the tool."},
    {"type": "toolCall", "id": "call_abc|fc_0123456789abcdefghijklmnopqrstuvwxyz0123456789", "name": "add",
     "arguments": {"a": 1, "b": 2}, "thoughtSignature": "c2ln"},
], stop="toolUse")


def conversation():
    return [
        {"role": "user", "content": "add 1 and 2", "timestamp": 1},
        ANTHROPIC_TURN,
        {"role": "toolResult", "toolCallId": ANTHROPIC_TURN["content"][3]["id"], "toolName": "add",
         "content": [{"type": "text", "text": "3"}], "isError": False, "timestamp": 2},
        assistant("openai", "openai-responses", "gpt-5", [{"type": "text", "text": "half an answ"}], stop="aborted"),
        assistant("openai", "openai-responses", "gpt-5", [{"type": "toolCall", "id": "orphan", "name": "add",
                                                            "arguments": {}}], stop="toolUse"),
        {"role": "user", "content": "thanks", "timestamp": 3},
    ]


def test_transform_for_another_model():
    groq = pi_min.get_model("groq")
    norm = pi_min._oc_normalizer(pi_min._oc_compat(groq, None))
    out = pi_min.transform_messages(conversation(), groq, norm)
    roles = [m["role"] for m in out]
    assert roles == ["user", "assistant", "toolResult", "assistant", "toolResult", "user"]
    first = out[1]["content"]
    assert first[0] == {"type": "text", "text": "Let me add."}          # foreign thinking -> text
    assert all(b.get("type") != "thinking" for b in first)               # redacted dropped
    call = first[2]
    assert call["id"] == "call_abc" and "thoughtSignature" not in call   # id normalised, signature gone
    assert out[2]["toolCallId"] == "call_abc"                            # result follows its call
    assert out[4] == {"role": "toolResult", "toolCallId": "orphan", "toolName": "add",
                      "content": [{"type": "text", "text": "No result provided"}], "isError": True,
                      "timestamp": 3}                                    # synthetic result for the orphan
    assert ANTHROPIC_TURN["content"][3]["id"].startswith("call_abc|")    # input not mutated


def test_transform_for_the_same_model_keeps_signatures():
    model = {"provider": "anthropic", "api": "anthropic-messages", "id": "claude-sonnet-4-5"}
    out = pi_min.transform_messages([ANTHROPIC_TURN], model)
    assert out[0]["content"] == ANTHROPIC_TURN["content"]


def test_completions_request_for_a_foreign_history(server):
    server.script([Reply(body=DONE)])
    ctx = {"systemPrompt": "be brief", "messages": conversation()}
    msg = pi_min.complete("groq", ctx, base_url=server.url, api_key="k")
    assert msg["stopReason"] == "stop"
    sent = server.requests[0].json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "tool", "user"]
    a = sent[2]
    assert a["content"] == "Let me add.\n\nCalling the tool."
    assert a["tool_calls"] == [{"id": "call_abc", "type": "function",
                                "function": {"name": "add", "arguments": json.dumps({"a": 1, "b": 2})}}]
    assert "reasoning_content" not in a
    assert sent[3] == {"role": "tool", "tool_call_id": "call_abc", "content": "3"}
    assert sent[4]["tool_calls"][0]["id"] == "orphan" and sent[4]["content"] is None
    assert sent[5] == {"role": "tool", "tool_call_id": "orphan", "content": "No result provided"}


def test_same_model_thinking_is_echoed_in_its_field(server):
    groq = pi_min.get_model("groq")
    turn = assistant("groq", groq["api"], groq["id"], [
        {"type": "thinking", "thinking": "hmm", "thinkingSignature": "reasoning_content"},
        {"type": "text", "text": "hi"}])
    server.script([Reply(body=DONE)])
    pi_min.complete(groq, {"messages": [{"role": "user", "content": "a"}, turn,
                                        {"role": "user", "content": "b"}]}, base_url=server.url, api_key="k")
    sent = server.requests[0].json["messages"][1]
    assert sent == {"role": "assistant", "content": "hi", "reasoning_content": "hmm"}


def test_images_dropped_for_text_only_models_and_tool_images_follow(server):
    png = {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
    call = {"type": "toolCall", "id": "c1", "name": "shot", "arguments": {}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "look"}, png]},
                assistant("x", "y", "z", [call], stop="toolUse"),
                {"role": "toolResult", "toolCallId": "c1", "toolName": "shot", "content": [png], "isError": False}]
    server.script([Reply(body=DONE), Reply(body=DONE)])
    text_only = pi_min.get_model("groq", input=["text"])
    pi_min.complete(text_only, {"messages": messages}, base_url=server.url, api_key="k")
    sent = server.requests[0].json["messages"]
    assert sent[0] == {"role": "user", "content": "look"}
    assert sent[2]["content"] == "(see attached image)" and len(sent) == 3
    vision = pi_min.get_model("groq", input=["text", "image"])
    pi_min.complete(vision, {"messages": messages}, base_url=server.url, api_key="k")
    sent = server.requests[1].json["messages"]
    assert sent[0]["content"][1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    assert sent[3]["role"] == "user" and sent[3]["content"][1]["type"] == "image_url"


def test_aborted_empty_turn_in_history_does_not_break_the_next_call(server):
    signal = __import__("threading").Event()
    signal.set()
    aborted = pi_min.complete("groq", "hi", base_url=server.url, api_key="k", signal=signal)
    server.script([Reply(body=DONE)])
    ctx = {"messages": [{"role": "user", "content": "hi"}, aborted, {"role": "user", "content": "again"}]}
    msg = pi_min.complete("groq", ctx, base_url=server.url, api_key="k")
    assert msg["stopReason"] == "stop"
    assert [m["role"] for m in server.requests[0].json["messages"]] == ["user", "user"]


def test_mistral_tool_ids_are_nine_alphanumerics(server):
    server.script([Reply(body=DONE)])
    messages = [{"role": "user", "content": "x"},
                assistant("openai", "openai-responses", "gpt-5", [
                    {"type": "toolCall", "id": "call_abc|fc_xyz", "name": "f", "arguments": {}}], stop="toolUse"),
                {"role": "toolResult", "toolCallId": "call_abc|fc_xyz", "toolName": "f",
                 "content": [{"type": "text", "text": "r"}], "isError": False}]
    pi_min.complete("mistral", {"messages": messages}, base_url=server.url, api_key="k")
    sent = server.requests[0].json["messages"]
    call_id = sent[1]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum()
    assert sent[2] == {"role": "tool", "tool_call_id": call_id, "content": "r", "name": "f"}


def test_reasoning_dialects(server):
    cases = [("zai", "high", {"thinking": {"type": "enabled"}}),
             ("zai", "off", {"thinking": {"type": "disabled"}}),
             ("alibaba", "low", {"enable_thinking": True}),
             ("deepseek", "xhigh", {"thinking": {"type": "enabled"}, "reasoning_effort": "max"}),
             ("openrouter", "medium", {"reasoning": {"effort": "medium"}}),
             ("groq", "xhigh", {"reasoning_effort": "high"})]
    for provider, level, expected in cases:
        server.script([Reply(body=DONE)])
        model = pi_min.get_model(provider, reasoning=True)
        pi_min.complete(model, "hi", base_url=server.url, api_key="k", reasoning=level)
        body = server.requests[-1].json
        for key, value in expected.items():
            assert body[key] == value, (provider, level, key)
    server.script([Reply(body=DONE)])
    pi_min.complete(pi_min.get_model("groq", reasoning=False), "hi", base_url=server.url, api_key="k",
                    reasoning="high")
    assert "reasoning_effort" not in server.requests[-1].json


def test_openai_compat_and_prompt_cache_key(server):
    server.script([Reply(body=DONE)])
    model = pi_min.get_model("openai", "gpt-4o", api="openai-completions", reasoning=True)
    pi_min.complete(model, {"systemPrompt": "sys", "messages": [{"role": "user", "content": "hi"}]},
                    base_url=server.url, api_key="k", max_tokens=5, session_id="s1")
    body = server.requests[0].json
    assert body["store"] is False and body["max_completion_tokens"] == 5
    assert body["messages"][0]["role"] == "developer"
    assert "prompt_cache_key" not in body  # only on api.openai.com itself


def test_tools_and_tool_choice(server):
    server.script([Reply(body=DONE)])
    tools = [{"name": "add", "description": "Add", "parameters": {"type": "object", "properties": {}}}]
    pi_min.complete("groq", {"messages": [{"role": "user", "content": "x"}], "tools": tools},
                    base_url=server.url, api_key="k", tool_choice="add")
    body = server.requests[0].json
    assert body["tools"] == [{"type": "function", "function": {"name": "add", "description": "Add",
                                                                "parameters": {"type": "object", "properties": {}}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}


def test_openrouter_anthropic_models_get_a_cache_mark(server):
    for model_id, retention, marked in (("anthropic/claude-sonnet-4", None, True),
                                        ("anthropic/claude-sonnet-4", "none", False),
                                        ("openai/gpt-4o", None, False)):
        server.script([Reply(body=DONE)])
        opts = {"cache_retention": retention} if retention else {}
        pi_min.complete(pi_min.get_model("openrouter", model_id), {"messages": [{"role": "user", "content": "hi"}]},
                        base_url=server.url, api_key="k", **opts)
        content = server.requests[-1].json["messages"][-1]["content"]
        if marked:
            assert content == [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
        else:
            assert content == "hi"


def test_openrouter_reasoning_details_sign_tool_calls_and_go_back(server):
    detail = {"type": "reasoning.encrypted", "id": "tool_1", "data": "c2lnbmVk", "format": "google-gemini-v1"}
    chunks = [
        {"choices": [{"index": 0, "delta": {"reasoning_details": [
            {"type": "reasoning.text", "text": "think", "format": "google-gemini-v1"}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "tool_1", "type": "function",
                                                             "function": {"name": "f", "arguments": "{}"}}],
                                            "reasoning_details": [detail]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    server.script([Reply(body=body), Reply(body=DONE)])
    model = pi_min.get_model("openrouter", "google/gemini-3-pro-preview")
    first = pi_min.complete(model, "go", base_url=server.url, api_key="k")
    assert first["content"][0] == {"type": "thinking", "thinking": "think", "thinkingSignature": "reasoning_details"}
    call = first["content"][1]
    assert json.loads(call["thoughtSignature"]) == detail
    ctx = {"messages": [{"role": "user", "content": "go"}, first,
                        {"role": "toolResult", "toolCallId": "tool_1", "toolName": "f",
                         "content": [{"type": "text", "text": "ok"}], "isError": False}]}
    pi_min.complete(model, ctx, base_url=server.url, api_key="k")
    sent = server.requests[1].json["messages"][1]
    assert sent["reasoning_details"] == [detail] and sent["tool_calls"][0]["id"] == "tool_1"
    # another model never sees the signature
    server.script([Reply(body=DONE)])
    pi_min.complete("groq", ctx, base_url=server.url, api_key="k")
    assert "reasoning_details" not in server.requests[2].json["messages"][1]


def test_vercel_gateway_routing(server):
    server.script([Reply(body=DONE)])
    model = pi_min.get_model("vercel", compat={"vercelGatewayRouting": {"only": ["anthropic"], "order": []}})
    pi_min.complete(model, "hi", base_url=server.url, api_key="k")
    assert server.requests[0].json["providerOptions"] == {"gateway": {"only": ["anthropic"]}}


def test_ids_that_normalise_alike_stay_distinct():
    groq = pi_min.get_model("groq")
    norm = pi_min._oc_normalizer(pi_min._oc_compat(groq, None))
    calls = [{"type": "toolCall", "id": "call_same|fc_%d" % n, "name": "f", "arguments": {}} for n in range(3)]
    msgs = [assistant("openai", "openai-responses", "gpt-5", calls, stop="toolUse")]
    msgs += [{"role": "toolResult", "toolCallId": c["id"], "toolName": "f", "content": [], "isError": False}
             for c in calls]
    out = pi_min.transform_messages(msgs, groq, norm)
    ids = [b["id"] for b in out[0]["content"]]
    assert len(set(ids)) == 3 and all(len(i) <= 40 and "|" not in i for i in ids)
    assert [m["toolCallId"] for m in out[1:]] == ids


def test_gemini_openai_endpoint_thought_signature_round_trip(isolated_env, server):
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"gemini-oai": {
        "api": "openai-completions", "baseUrl": server.url + "/v1beta/openai", "models": [{"id": "gemini-3-pro"}]}}}))
    extra = {"google": {"thought_signature": "c2ln"}}
    chunk = {"choices": [{"index": 0, "finish_reason": "tool_calls", "delta": {"tool_calls": [
        {"index": 0, "id": "fc1", "type": "function", "function": {"name": "f", "arguments": "{}"},
         "extra_content": extra}]}}]}
    server.script([Reply(body=b"data: " + json.dumps(chunk).encode() + b"\n\ndata: [DONE]\n\n"), Reply(body=DONE)])
    first = pi_min.complete("gemini-oai", "go")
    ctx = {"messages": [{"role": "user", "content": "go"}, first,
                        {"role": "toolResult", "toolCallId": "fc1", "toolName": "f", "content": [], "isError": False}]}
    pi_min.complete("gemini-oai", ctx)
    sent = server.requests[1].json["messages"][1]
    assert sent["tool_calls"][0]["extra_content"] == extra and "reasoning_details" not in sent


def test_mistral_gets_no_stream_options_and_prompt_mode(server):
    server.script([Reply(body=DONE)])
    model = pi_min.get_model("mistral", reasoning=True)
    pi_min.complete(model, "hi", base_url=server.url, api_key="k", reasoning="high")
    body = server.requests[0].json
    assert "stream_options" not in body and body["prompt_mode"] == "reasoning"
    assert "reasoning_effort" not in body
