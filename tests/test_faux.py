"""The offline faux provider: echo by default, scriptable replies, same event path."""

import json
import os
import subprocess
import sys

import pytest

import pi_min
from invariants import StreamChecker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, **kw):
    checker = StreamChecker()
    for event in pi_min.stream(*args, **kw):
        checker.feed(event)
    return checker.finish()


def test_echoes_the_last_user_message():
    msg = run("faux", {"messages": [{"role": "user", "content": "first"},
                                    {"role": "user", "content": [{"type": "text", "text": "second"}]}]})
    assert msg["content"] == [{"type": "text", "text": "You said: second"}]
    assert (msg["api"], msg["provider"], msg["model"], msg["stopReason"]) == ("faux", "faux", "faux-1", "stop")
    assert msg["usage"]["input"] > 0 and msg["usage"]["output"] > 0


def test_scripted_thinking_text_and_tool_calls():
    script = {"thinking": "step by step", "text": "calling", "chunkSize": 3,
              "toolCalls": [{"name": "add", "arguments": {"a": 1, "b": [2, "x"]}}, {"name": "noop", "arguments": {}}]}
    msg = run("demo", "go", faux=script)
    kinds = [b["type"] for b in msg["content"]]
    assert kinds == ["thinking", "text", "toolCall", "toolCall"]
    assert msg["content"][0]["thinking"] == "step by step"
    assert msg["content"][2]["arguments"] == {"a": 1, "b": [2, "x"]}
    assert msg["content"][3]["arguments"] == {}
    assert msg["stopReason"] == "toolUse"


def test_scripted_errors():
    msg = pi_min.complete("faux", "x", faux={"text": "partial", "error": "model melted"})
    assert msg["stopReason"] == "error" and msg["errorMessage"] == "model melted"
    assert msg["content"][0]["text"] == "partial"
    msg = pi_min.complete("faux", "x", faux={"errorStatus": 429})
    assert (msg["errorKind"], msg["errorStatus"]) == ("rate_limit", 429)


def test_a_list_scripts_one_reply_per_turn():
    script = [{"toolCalls": [{"name": "f", "arguments": {}}]}, {"text": "done"}]
    first = pi_min.complete("faux", "go", faux=script)
    call = first["content"][0]
    ctx = {"messages": [{"role": "user", "content": "go"}, first,
                        {"role": "toolResult", "toolCallId": call["id"], "toolName": "f",
                         "content": [{"type": "text", "text": "ok"}], "isError": False}]}
    second = pi_min.complete("faux", ctx, faux=script)
    assert (first["stopReason"], second["stopReason"]) == ("toolUse", "stop")
    assert second["content"] == [{"type": "text", "text": "done"}]


def test_scripted_from_models_json(isolated_env):
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"faux": {"models": [
        {"id": "scripted", "faux": {"text": "from config"}}]}}}))
    assert pi_min.complete("faux/scripted", "x")["content"][0]["text"] == "from config"


def test_abort_between_chunks():
    import threading
    signal = threading.Event()
    events = pi_min.stream("faux", "x", faux={"text": "a" * 50, "chunkSize": 1, "delay": 0.01}, signal=signal)
    checker = StreamChecker()
    for event in events:
        checker.feed(event)
        if event["type"] == "text_delta":
            signal.set()
    msg = checker.finish()
    assert msg["stopReason"] == "aborted" and 0 < len(msg["content"][0]["text"]) < 50


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_interactive_chat_on_a_terminal(isolated_env):
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-I", os.path.join(ROOT, "pi_min.py"), "--provider", "faux"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    os.close(slave)
    try:
        os.write(master, b"hello\n")
        os.write(master, b"again\n")
        os.write(master, b"\x04")  # Ctrl-D ends the chat
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        os.close(master)
    assert proc.returncode == 0, err
    assert out.decode().splitlines()[-2:] == ["You said: hello", "You said: again"]


def test_a_bad_faux_script_is_a_config_error():
    for bad in (3, [1], None.__class__):
        with pytest.raises(pi_min.ConfigError, match="faux must be"):
            pi_min.stream("faux", "x", faux=bad)
    assert pi_min.complete("faux", "x", faux="plain text")["content"][0]["text"] == "plain text"
