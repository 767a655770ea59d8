"""What three adversarial reviews of the whole library found (contract, hostile servers,
handoff between families), each pinned by the bytes or the conversation that showed it."""

import json
import threading

import pytest

import pi_min
from capture import sent_body
from invariants import StreamChecker
from loopback import Reply


def sse(*events):
    return b"".join(b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode()) for name, data in events)


def run(server, provider, body, ctype="text/event-stream", **kw):
    server.script([Reply(headers={"Content-Type": ctype}, body=body)])
    kw.setdefault("api_key", "k-0123456789abcdef-secret")
    checker = StreamChecker()
    last = None
    for last in pi_min.stream(provider, kw.pop("context", "hi"), base_url=server.url, timeout=5, max_retries=0,
                              **kw):
        checker.feed(last)
    checker.finish()
    return last.get("message") or last["error"]


def body_for(model, context, **options):
    return sent_body(model, context, api_key="k", **options)


# -- a length stop after the tool block ended: done/length, the call kept (CONTRACT §4.3) ----

def test_anthropic_length_after_the_tool_block_ended(server):
    msg = run(server, "anthropic", sse(
        ("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "write", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": '{"path": "a.txt", "text": "unfini'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"})))
    assert msg["stopReason"] == "length"
    assert msg["content"][0]["arguments"] == {"path": "a.txt", "text": "unfini"}


def test_a_cut_call_with_a_normal_stop_is_still_an_error(server):
    msg = run(server, "anthropic", sse(
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "write", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": '{"path": "a.t'}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        ("message_stop", {"type": "message_stop"})))
    assert msg["stopReason"] == "error" and msg["errorKind"] == "protocol"


# -- secrets --------------------------------------------------------------------------------

def test_a_key_echoed_into_the_answer_is_hidden(server):
    key = "sk-live-0123456789abcdefghij"
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"your key is ' + key.encode() + b'"}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"f",'
            b'"arguments":"{\\"k\\": \\"' + key.encode() + b'\\"}"}}]},"finish_reason":"tool_calls"}]}\n\n'
            b"data: [DONE]\n\n")
    server.script([Reply(body=body)])
    events = list(pi_min.stream("groq", "hi", base_url=server.url + "/v1", api_key=key, timeout=5))
    assert key not in json.dumps([{k: v for k, v in e.items() if k != "partial"} for e in events])
    assert events[-1]["message"]["content"][0]["text"] == "your key is ***"


def test_a_proxy_echoing_its_password_never_shows_it(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://bob:proxy%21Passw0rd@127.0.0.1:" + str(server.port))
    server.script([Reply(407, {"Content-Type": "text/plain"}, b"proxy auth failed for bob:proxy!Passw0rd "
                                                                b"(bob:proxy%21Passw0rd)")])
    msg = pi_min.complete("groq", "hi", base_url="http://api.example.invalid/v1", api_key="k", max_retries=0)
    assert msg["stopReason"] == "error" and "Passw0rd" not in msg["errorMessage"]


def test_a_secret_query_value_in_a_bad_url_is_hidden():
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("groq", "hi", api_key="k", base_url="https://h/v1?key=SECRET123456&x= y")
    assert "SECRET123456" not in str(info.value)


# -- what stream() accepts ----------------------------------------------------------------

@pytest.mark.parametrize("context, what", [
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "text must be a text"),
    ({"messages": [{"role": "user", "content": [{"type": "toolCall", "id": "a", "name": "b"}]}]}, "cannot be"),
    ({"messages": [{"role": "assistant", "content": [{"type": "toolCall", "id": "a", "name": "b",
                                                      "arguments": "x"}]}]}, "arguments must be a dict"),
])
def test_bad_context_blocks_are_config_errors(context, what):
    with pytest.raises(pi_min.ConfigError, match=what):
        pi_min.stream("anthropic", context, api_key="k")


def test_bad_options_are_config_errors():
    class Flag:
        def is_set(self):
            return False
    for kw in ({"tool_choice": ["f"]}, {"timeout": float("inf")}, {"timeout": float("nan")}, {"signal": Flag()}):
        with pytest.raises(pi_min.ConfigError):
            pi_min.stream("anthropic", "hi", api_key="k", **kw)
    for field, value in (("headers", "X"), ("compat", ["x"]), ("cost", {"input": "free"})):
        with pytest.raises(pi_min.ConfigError, match=field):
            pi_min.get_model("groq", **{field: value})
    with pytest.raises(pi_min.ConfigError, match="chunkSize"):
        pi_min.stream("faux", "hi", faux={"text": "x", "chunkSize": "x"})


def test_bad_models_json_is_exit_2_without_a_traceback(isolated_env, capsys):
    (isolated_env / "models.json").write_text('{"providers": {"groq": {"headers": "X"}}}')
    assert pi_min.main(["--provider", "groq", "--api-key", "k", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_broken_settings_json_does_not_stop_an_explicit_provider(isolated_env, capsys):
    (isolated_env / "settings.json").write_text("{not json")
    assert pi_min.main(["--provider", "faux", "hi"]) == 0


def test_an_empty_api_key_falls_back_to_the_stored_one(server, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk-stored-key-000000")
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
                              b"data: [DONE]\n\n")])
    model = pi_min.get_model("groq", baseUrl=server.url + "/v1")  # the provider's own host: the stored key goes
    monkeypatch.setitem(pi_min._table().PROVIDERS, "groq", dict(pi_min._table().PROVIDERS["groq"],
                                                                  baseUrl=server.url + "/v1"))
    assert pi_min.complete(model, "hi", api_key="", timeout=5)["stopReason"] == "stop"
    assert server.requests[0].headers["authorization"] == "Bearer gsk-stored-key-000000"


def test_on_payload_mistakes_are_named(server):
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url, on_payload=lambda b, m: "oops")
    assert msg["errorKind"] == "invalid_request" and "on_payload must return a dict" in msg["errorMessage"]
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url, on_payload=lambda b, m: 1 / 0)
    assert "on_payload raised ZeroDivisionError" in msg["errorMessage"]
    assert server.requests == []


# -- bodies -------------------------------------------------------------------------------

def test_a_json_error_under_an_event_stream_label_keeps_its_message(server):
    msg = run(server, "anthropic", b'{"error":{"message":"You exceeded your current quota","type":"quota"}}')
    assert msg["stopReason"] == "error" and "exceeded your current quota" in msg["errorMessage"]


def test_a_connection_lost_after_the_finish_reason_is_a_normal_end(server):
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"All of it."}}]}\n\n'
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    server.script([Reply(body=body, mode="chunked", truncate=True)])
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url + "/v1", timeout=5, max_retries=0)
    assert msg["stopReason"] == "stop" and msg["content"][0]["text"] == "All of it."


def test_responses_final_text_that_differs_from_the_deltas_is_not_spliced(server):
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Hello world"}]}
    msg = run(server, "openai", sse(
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0,
                                        "item": dict(item, status="in_progress", content=[])}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1",
                                        "output_index": 0, "content_index": 0, "delta": "Hello wrld"}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
        ("response.completed", {"type": "response.completed", "response": {
            "id": "r", "status": "completed", "output": [item], "usage": {"input_tokens": 1, "output_tokens": 2}}})))
    assert msg["content"][0]["text"] == "Hello wrld"


# -- handoff ----------------------------------------------------------------------------------

def turn(provider, api, model, content, stop="toolUse"):
    return {"role": "assistant", "provider": provider, "api": api, "model": model, "content": content,
            "stopReason": stop, "usage": {}, "timestamp": 1}


def call(cid, name="ls"):
    return {"type": "toolCall", "id": cid, "name": name, "arguments": {}}


def result(cid, text="ok", name="ls"):
    return {"role": "toolResult", "toolCallId": cid, "toolName": name, "content": [{"type": "text", "text": text}],
            "isError": False}


TOOLS = [{"name": "ls", "description": "list", "parameters": {"type": "object", "properties": {}}}]


def test_a_reused_call_id_is_made_unique_and_results_pair_in_order():
    ctx = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "go"},
        turn("groq", "openai-completions", "m", [call("call_0")]), result("call_0", "first"),
        turn("groq", "openai-completions", "m", [call("call_0")]), result("call_0", "second")]}
    sent = body_for("anthropic/claude-sonnet-4-5", ctx)["messages"]
    uses = [c["id"] for m in sent for c in m["content"] if c["type"] == "tool_use"]
    answers = [(c["tool_use_id"], c["content"][0]["text"]) for m in sent for c in m["content"]
               if c["type"] == "tool_result"]
    assert len(set(uses)) == 2 and answers == [(uses[0], "first"), (uses[1], "second")]


def test_results_of_a_dropped_turn_are_dropped_and_roles_alternate():
    ctx = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "go"},
        turn("groq", "openai-completions", "m", [call("c1")], stop="error"), result("c1"),
        {"role": "user", "content": "again"}]}
    for model in ("anthropic/claude-sonnet-4-5", "amazon-bedrock/us.anthropic.claude-opus-4-6-v1"):
        sent = body_for(model, ctx)["messages"]
        assert [m["role"] for m in sent] == ["user"] and "c1" not in json.dumps(sent), model


def test_bedrock_user_words_after_results_join_the_results_turn_and_need_a_tool_config():
    ctx = {"messages": [{"role": "user", "content": "go"},
                        turn("groq", "openai-completions", "m", [call("c1")]), result("c1"),
                        {"role": "user", "content": "and?"}]}
    sent = body_for("amazon-bedrock/us.anthropic.claude-opus-4-6-v1", ctx, cache_retention="none")
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert "toolConfig" not in sent and "toolUse" not in json.dumps(sent)  # no tools sent: the calls go as words
    assert "[called the tool ls" in json.dumps(sent)


def test_thinking_stays_off_while_another_models_tool_loop_is_open():
    ctx = {"tools": TOOLS, "messages": [{"role": "user", "content": "go"},
                                        turn("groq", "openai-completions", "m", [call("c1")]), result("c1")]}
    assert "thinking" not in body_for("anthropic/claude-sonnet-4-5", ctx, reasoning="medium")
    ctx["messages"].append({"role": "user", "content": "next"})  # the loop is closed: thinking again
    assert "thinking" in body_for("anthropic/claude-sonnet-4-5", ctx, reasoning="medium")


def test_an_empty_tool_result_says_so_to_anthropic():
    ctx = {"tools": TOOLS, "messages": [{"role": "user", "content": "go"},
                                        turn("groq", "openai-completions", "m", [call("c1")]), result("c1", "")]}
    sent = body_for("anthropic/claude-sonnet-4-5", ctx)["messages"]
    assert sent[-1]["content"][0]["content"] == [{"type": "text", "text": "(no output)"}]


def test_vertex_gemini3_gets_another_models_open_calls_as_words(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    ctx = {"tools": TOOLS, "messages": [{"role": "user", "content": "go"},
                                        turn("groq", "openai-completions", "m", [call("c1")]), result("c1", "a, b")]}
    sent = json.dumps(body_for("google-vertex/gemini-3-pro-preview", ctx))
    assert "functionCall" not in sent and "[called the tool ls" in sent and "returned: a, b" in sent


def test_lone_surrogates_in_ids_do_not_crash():
    ctx = {"tools": TOOLS, "messages": [{"role": "user", "content": "go"},
                                        turn("groq", "openai-completions", "m", [call("a\udc80"), call("a\udc81")]),
                                        result("a\udc80"), result("a\udc81")]}
    for model in ("openai/gpt-5", "anthropic/claude-sonnet-4-5", "mistral"):
        assert body_for(model, ctx)


# -- hostile servers --------------------------------------------------------------------------

def test_empty_data_lines_count_against_the_event_limit(monkeypatch):
    monkeypatch.setattr(pi_min, "MAX_FRAME", 1000)
    parser = pi_min.SSEParser()
    with pytest.raises(pi_min.PiError, match="larger than"):
        parser.feed(b"data:\n" * 2000)


def test_a_line_in_tiny_pieces_is_not_kept_as_millions_of_objects():
    parser = pi_min.SSEParser()
    for _ in range(20000):
        parser.feed(b"a")
    assert len(parser._parts) < 10
    assert parser.feed(b"\n\n") == [] and parser._parts == []


def test_the_sniff_of_a_blank_body_is_bounded(server):
    server.script([Reply(body=b"\n" * (4 << 20) + b'data: {"choices":[{"index":0,"delta":{"content":"x"},'
                                                  b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
                         mode="chunked", split=False)])
    import time
    started = time.monotonic()
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url + "/v1", timeout=5, max_retries=0)
    assert msg["stopReason"] == "stop" and msg["content"][0]["text"] == "x"
    assert time.monotonic() - started < 5  # was quadratic: every piece re-copied and re-stripped the whole head


def raw_head(*lines):
    return ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" + "".join(x + "\r\n" for x in lines)
            + "\r\n").encode()


DONE_BODY = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}\n\n'
             b"data: [DONE]\n\n")


def test_trailers_forever_after_the_terminator_do_not_hold_done(server):
    import time
    trickle = [b"X-T: y\r\n" * 50, 0.05] * 100
    server.script([Reply(raw=[raw_head("Transfer-Encoding: chunked")
                              + b"%x\r\n%s\r\n0\r\n" % (len(DONE_BODY), DONE_BODY)] + trickle)])
    started = time.monotonic()
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url + "/v1", timeout=5, max_retries=0)
    assert msg["stopReason"] == "stop" and time.monotonic() - started < 1.5


def test_a_head_with_cr_only_line_ends_is_refused(server):
    raw = b"HTTP/1.1 200 OK\rContent-Type: text/event-stream\rContent-Length: %d\r\r" % len(DONE_BODY) + DONE_BODY
    server.script([Reply(raw=[raw])])
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url + "/v1", timeout=5, max_retries=0)
    assert msg["errorKind"] == "protocol"


def test_a_gzip_body_of_two_members_is_read_whole(server):
    import gzip
    body = gzip.compress(DONE_BODY[:40]) + gzip.compress(DONE_BODY[40:])
    server.script([Reply(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}, body=body)])
    msg = pi_min.complete("groq", "hi", api_key="k", base_url=server.url + "/v1", timeout=5, max_retries=0)
    assert msg["stopReason"] == "stop" and msg["content"][0]["text"] == "Hi"


def test_events_stop_as_soon_as_the_signal_is_set(server):
    body = b"".join(b'data: {"choices":[{"index":0,"delta":{"content":"w%d "}}]}\n\n' % i for i in range(300))
    server.script([Reply(body=body + DONE_BODY)])
    signal = threading.Event()
    after = []
    for e in pi_min.stream("groq", "hi", api_key="k", base_url=server.url + "/v1", signal=signal, timeout=5):
        if signal.is_set():
            after.append(e["type"])
        elif e["type"] == "text_delta":
            signal.set()
    assert after == ["error"]


def test_too_many_tool_calls_and_absurd_usage_end_cleanly(server):
    calls = b"".join(b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":%d,"id":"c%d","function":'
                     b'{"name":"f","arguments":"{"}}]}}]}\n\n' % (i, i) for i in range(pi_min._MAX_CALLS + 5))
    msg = run(server, "groq", calls + DONE_BODY)
    assert msg["errorKind"] == "protocol" and "tool calls" in msg["errorMessage"]
    body = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}],'
            b'"usage":{"prompt_tokens":1e999,"completion_tokens":' + b"9" * 400 + b'}}\n\ndata: [DONE]\n\n')
    msg = run(server, "groq", body)
    assert msg["stopReason"] == "stop" and msg["usage"]["output"] == 10**15


def test_deeply_nested_json_is_a_protocol_error(server):
    deep = b"[" * 100000 + b"]" * 100000
    msg = run(server, "groq", b"data: " + deep + b"\n\n")
    assert msg["errorKind"] == "protocol" and "unexpected" not in msg["errorMessage"]


def test_a_duplicated_tool_start_keeps_the_invariants(server):
    start = ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}})
    stop = ("content_block_stop", {"type": "content_block_stop", "index": 0})
    delta = ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}})
    msg = run(server, "anthropic", sse(start, start, stop, delta, ("message_stop", {"type": "message_stop"})))
    assert msg["stopReason"] == "toolUse" and [b["arguments"] for b in msg["content"]] == [{}, {}]


def test_a_key_as_a_tool_name_is_hidden(server):
    key = "zq-SECRET-0123456789abcdef"
    body = (b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"'
            + key.encode() + b'","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n')
    msg = run(server, "groq", body, api_key=key)
    assert key not in json.dumps(msg)
