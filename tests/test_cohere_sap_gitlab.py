"""Cohere and GitLab Duo beyond the fixture corpus: request shapes, configuration errors that
name what to set, and CLI runs of each provider against loopback servers configured by env vars
only."""

import json
import threading

import pytest

import pi_min
from loopback import Reply

CO_TEXT = (b'event: message-start\ndata: {"type":"message-start","id":"m1","delta":{"message":{}}}\n\n'
           b'event: content-start\ndata: {"type":"content-start","index":0,"delta":{"message":{"content":'
           b'{"type":"text","text":""}}}}\n\n'
           b'event: content-delta\ndata: {"type":"content-delta","index":0,"delta":{"message":{"content":'
           b'{"text":"Hi from Cohere"}}}}\n\n'
           b'event: content-end\ndata: {"type":"content-end","index":0}\n\n'
           b'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":'
           b'{"tokens":{"input_tokens":3,"output_tokens":4}}}}\n\n'
           b"data: [DONE]\n\n")


def sse(body):
    return Reply(headers={"Content-Type": "text/event-stream"}, body=body)


# -- Cohere and GitLab requests ----------------------------------------------------------

def body_for(model, context, **options):
    """The request body, captured by on_payload; the abort set there ends the stream unsent."""
    seen, signal = {}, threading.Event()

    def capture(body, _model):
        seen.update(body)
        signal.set()
    pi_min.complete(model, context, api_key="k", on_payload=capture, signal=signal, **options)
    return seen


def test_an_anthropic_turn_continues_on_cohere():
    ctx = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "api": "anthropic-messages", "provider": "anthropic", "model": "claude-sonnet-4-5",
         "content": [{"type": "thinking", "thinking": "Plan it.", "thinkingSignature": "SIG=="},
                     {"type": "toolCall", "id": "toolu_01/A", "name": "look", "arguments": {"q": "x"}}],
         "stopReason": "toolUse", "usage": {}, "timestamp": 1},
        {"role": "toolResult", "toolCallId": "toolu_01/A", "toolName": "look",
         "content": [{"type": "image", "data": "AAAA", "mimeType": "image/png"}], "isError": False}]}
    sent = body_for("cohere", ctx)["messages"]
    assert sent[1] == {"role": "assistant", "content": [{"type": "text", "text": "Plan it."}],  # not a tool plan
                       "tool_calls": [{"id": "toolu_01_A", "type": "function",
                                       "function": {"name": "look", "arguments": '{"q": "x"}'}}]}
    assert sent[2] == {"role": "tool", "tool_call_id": "toolu_01_A", "content": "(image)"}
    assert "SIG==" not in json.dumps(sent)


def test_cohere_tool_choice_and_thinking_off():
    tools = [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]
    ctx = {"messages": [{"role": "user", "content": "x"}], "tools": tools}
    assert body_for("cohere", ctx, tool_choice="required")["tool_choice"] == "REQUIRED"
    assert "tool_choice" not in body_for("cohere", ctx, tool_choice="auto")
    with pytest.raises(pi_min.ConfigError, match="auto, none or required"):
        pi_min.stream("cohere", ctx, api_key="k", tool_choice="look")
    assert body_for("cohere/command-a-reasoning-08-2025", ctx, reasoning="off")["thinking"] == {"type": "disabled"}
    assert "thinking" not in body_for("cohere/command-a-03-2025", ctx, reasoning="high")  # not a reasoning model


def test_gitlab_needs_a_question_last():
    ctx = {"messages": [{"role": "user", "content": "go"},
                        {"role": "assistant", "content": [{"type": "text", "text": "ok"}], "api": "x",
                         "provider": "y", "model": "z", "stopReason": "stop", "usage": {}, "timestamp": 1}]}
    with pytest.raises(pi_min.ConfigError, match="must end with a user message"):
        pi_min.stream("gitlab", ctx, api_key="k")


def test_gitlab_host_names_and_instance_urls(monkeypatch):
    row = pi_min._table().PROVIDERS["gitlab"]
    model = pi_min.get_model("gitlab")
    assert pi_min._fill_url(row["baseUrl"], row, model) == "https://gitlab.com/api/v4/chat/completions"
    monkeypatch.setenv("GITLAB_HOST", "gitlab.example.com")  # glab's form: a bare host name
    assert pi_min._fill_url(row["baseUrl"], row, model) == "https://gitlab.example.com/api/v4/chat/completions"
    monkeypatch.setenv("GITLAB_URL", "http://127.0.0.1:8080/")
    assert pi_min._fill_url(row["baseUrl"], row, model) == "http://127.0.0.1:8080/api/v4/chat/completions"
    for base in ("https://g.example", "https://g.example/api/v4", "https://g.example/api/v4/chat/completions"):
        assert pi_min._gl_url(base) == "https://g.example/api/v4/chat/completions"


# -- the CLI, configured by env vars only ------------------------------------------------

def test_cli_cohere(monkeypatch, server, capsys):
    monkeypatch.setenv("COHERE_API_KEY", "co-cli-key-0123456789")
    monkeypatch.setenv("CO_API_URL", server.url)  # as Cohere's SDK reads it
    server.script([sse(CO_TEXT)])
    assert pi_min.main(["--provider", "cohere", "-u", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hi from Cohere\n" and "3" in out.err  # usage on stderr
    (req,) = server.requests
    assert req.path == "/v2/chat" and req.headers["authorization"] == "Bearer co-cli-key-0123456789"
    assert req.json["model"] == "command-a-03-2025"


def test_cli_gitlab(monkeypatch, server, capsys):
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-cli-0123456789abcdef")
    monkeypatch.setenv("GITLAB_URL", server.url)
    server.script([Reply(201, {"Content-Type": "application/json"}, json.dumps("Use `git bisect`.").encode())])
    assert pi_min.main(["--provider", "gitlab-duo", "how do I find a bad commit?"]) == 0
    assert capsys.readouterr().out == "Use `git bisect`.\n"
    (req,) = server.requests
    assert req.path == "/api/v4/chat/completions"
    assert req.headers["authorization"] == "Bearer glpat-cli-0123456789abcdef"
    assert req.json == {"content": "how do I find a bad commit?", "with_clean_history": True}
