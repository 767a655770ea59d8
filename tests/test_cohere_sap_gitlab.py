"""Cohere, SAP AI Core and GitLab Duo beyond the fixture corpus: SAP's service key and its
token (request, reuse, expiry, failure), configuration errors that name what to set, request
shapes, and CLI runs of each provider against loopback servers configured by env vars only."""

import json
import os
import subprocess
import sys
import threading
from urllib.parse import parse_qs

import pytest

import pi_min
from capture import sent_body
from loopback import Loopback, Reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "c1ient-s3cret$Xy7+Zq/9=="
CLIENT_ID = "sb-4f2e!b1234|aicore!b540"
DEPLOYMENT = "d7f3a9c1e5b2"
OC_TEXT = (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":" from SAP"},"finish_reason":"stop"}]}\n\n'
           b'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":3,"total_tokens":11}}\n\n'
           b"data: [DONE]\n\n")
OC_TOOL = (b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
           b'"function":{"name":"look","arguments":"{\\"q\\": "}}]},"finish_reason":null}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"x\\"}"}}]},'
           b'"finish_reason":"tool_calls"}]}\n\n'
           b"data: [DONE]\n\n")
CO_TEXT = (b'event: message-start\ndata: {"type":"message-start","id":"m1","delta":{"message":{}}}\n\n'
           b'event: content-start\ndata: {"type":"content-start","index":0,"delta":{"message":{"content":'
           b'{"type":"text","text":""}}}}\n\n'
           b'event: content-delta\ndata: {"type":"content-delta","index":0,"delta":{"message":{"content":'
           b'{"text":"Hi from Cohere"}}}}\n\n'
           b'event: content-end\ndata: {"type":"content-end","index":0}\n\n'
           b'event: message-end\ndata: {"type":"message-end","delta":{"finish_reason":"COMPLETE","usage":'
           b'{"tokens":{"input_tokens":3,"output_tokens":4}}}}\n\n'
           b"data: [DONE]\n\n")


def sse(body=OC_TEXT):
    return Reply(headers={"Content-Type": "text/event-stream"}, body=body)


def token_reply(token="tok-1", expires_in=43199, status=200, body=None):
    obj = body if body is not None else {"access_token": token, "token_type": "bearer", "expires_in": expires_in,
                                         "scope": "uaa.resource", "jti": "0a1b"}
    return Reply(status, {"Content-Type": "application/json"}, json.dumps(obj).encode())


def service_key(server):
    """A service key as AI Core gives it: XSUAA server in "url", the AI API in serviceurls."""
    return json.dumps({"clientid": CLIENT_ID, "clientsecret": SECRET, "url": server.url,
                       "identityzone": "acme", "serviceurls": {"AI_API_URL": server.url}})


@pytest.fixture
def sap(monkeypatch, server):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    monkeypatch.setenv("AICORE_SERVICE_KEY", service_key(server))
    monkeypatch.setenv("SAP_AI_CORE_DEPLOYMENT_ID", DEPLOYMENT)
    return server


INFERENCE = f"/v2/inference/deployments/{DEPLOYMENT}/chat/completions?api-version=2024-10-21"


# -- SAP AI Core --------------------------------------------------------------------------

def test_sap_fetches_a_client_credentials_token_and_streams_from_the_deployment(sap):
    sap.script([token_reply(), sse()])
    msg = pi_min.complete("sap", "hi")
    assert msg["stopReason"] == "stop" and msg["content"] == [{"type": "text", "text": "Hello from SAP"}]
    assert (msg["usage"]["input"], msg["usage"]["output"]) == (8, 3)
    token_req, chat_req = sap.requests
    assert (token_req.method, token_req.path) == ("POST", "/oauth/token")
    assert token_req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token_req.body.decode()) == {  # "!" and "|" of the client id survive the form encoding
        "grant_type": ["client_credentials"], "client_id": [CLIENT_ID], "client_secret": [SECRET]}
    assert chat_req.path == INFERENCE
    assert chat_req.headers["authorization"] == "Bearer tok-1"
    assert chat_req.headers["ai-resource-group"] == "default"
    assert chat_req.json["model"] == "gpt-5.4" and chat_req.json["stream"] is True


def test_sap_tool_calls_come_through_the_completions_family(sap):
    sap.script([token_reply(), sse(OC_TOOL)])
    tools = [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]
    msg = pi_min.complete("sap", {"messages": [{"role": "user", "content": "go"}], "tools": tools})
    assert msg["stopReason"] == "toolUse"
    assert msg["content"] == [{"type": "toolCall", "id": "call_1", "name": "look", "arguments": {"q": "x"}}]
    assert sap.requests[1].json["tools"][0]["function"]["name"] == "look"


def test_the_token_is_reused_across_retries_and_streams(sap):
    sap.script([token_reply(), Reply(429, {"Content-Type": "application/json", "Retry-After": "0"},
                                     b'{"error": {"code": "429", "message": "Rate limit exceeded"}}'),
                sse(), sse()])
    assert pi_min.complete("sap", "one")["stopReason"] == "stop"  # after one retry
    assert pi_min.complete("sap", "two")["stopReason"] == "stop"
    assert [r.path for r in sap.requests] == ["/oauth/token", INFERENCE, INFERENCE, INFERENCE]
    assert {r.headers["authorization"] for r in sap.requests[1:]} == {"Bearer tok-1"}


def test_a_token_close_to_expiry_is_fetched_again(sap):
    # 30 s left is inside the refresh margin: the next stream does not use it
    sap.script([token_reply("tok-1", expires_in=30), sse(), token_reply("tok-2"), sse(), sse()])
    for prompt in ("one", "two", "three"):
        assert pi_min.complete("sap", prompt)["stopReason"] == "stop"
    assert [r.path for r in sap.requests] == ["/oauth/token", INFERENCE, "/oauth/token", INFERENCE, INFERENCE]
    assert [r.headers["authorization"] for r in sap.requests if r.path == INFERENCE] == [
        "Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]


def test_one_token_request_for_concurrent_streams(sap):
    sap.script([token_reply()] + [sse() for _ in range(4)])
    results = []
    threads = [threading.Thread(target=lambda: results.append(pi_min.complete("sap", "hi")["stopReason"]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == ["stop"] * 4
    assert [r.path for r in sap.requests].count("/oauth/token") == 1


@pytest.mark.parametrize("status, body, kind", [
    (401, {"error": {"code": "401", "message": "Jwt is expired"}}, "auth"),
    (400, {"error": {"code": "400", "message": "Unsupported value: 'temperature'"}}, "invalid_request"),
    (404, {"error": {"code": "404", "message": "Deployment d7f3a9c1e5b2 not found"}}, "not_found")])
def test_inference_errors_keep_their_status_kind_and_message(sap, status, body, kind):
    sap.script([token_reply(), Reply(status, {"Content-Type": "application/json"}, json.dumps(body).encode())])
    msg = pi_min.complete("sap", "hi")
    assert (msg["stopReason"], msg["errorKind"], msg["errorStatus"]) == ("error", kind, status)
    assert body["error"]["message"] in msg["errorMessage"]


def test_a_failing_token_request_is_an_auth_error_that_never_shows_the_secret(sap):
    sap.script([token_reply(status=401, body={
        "error": "unauthorized", "error_description": f"Bad credentials for {CLIENT_ID} with secret {SECRET}"})])
    events = list(pi_min.stream("sap", "hi"))
    assert [e["type"] for e in events] == ["start", "error"]
    msg = events[-1]["error"]
    assert (msg["errorKind"], msg["errorStatus"]) == ("auth", 401)
    assert "SAP AI Core token endpoint" in msg["errorMessage"] and "Bad credentials" in msg["errorMessage"]
    assert SECRET not in json.dumps(events[-1]) and len(sap.requests) == 1


def test_the_four_variables_a_resource_group_and_a_models_json_deployment(monkeypatch, server, isolated_env):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    monkeypatch.setenv("SAP_AI_CORE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SAP_AI_CORE_CLIENT_SECRET", SECRET)
    monkeypatch.setenv("SAP_AI_CORE_TOKEN_URL", server.url + "/oauth/token")  # a full token URL is kept
    monkeypatch.setenv("SAP_AI_CORE_SERVICE_URL", server.url + "/v2/")  # the SDKs' form, with /v2
    monkeypatch.setenv("SAP_AI_CORE_RESOURCE_GROUP", "team-a")
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"sap-ai-core": {
        "models": [{"id": "gpt-4.1", "deploymentId": "dep-41"}]}}}))
    server.script([token_reply(), sse()])
    assert pi_min.complete("sap-ai-core/gpt-4.1", "hi")["stopReason"] == "stop"
    token_req, chat_req = server.requests
    assert token_req.path == "/oauth/token"
    assert chat_req.path == "/v2/inference/deployments/dep-41/chat/completions?api-version=2024-10-21"
    assert chat_req.headers["ai-resource-group"] == "team-a" and chat_req.json["model"] == "gpt-4.1"


def test_a_service_key_in_auth_json(monkeypatch, server, isolated_env):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    (isolated_env / "auth.json").write_text(json.dumps({"sap-ai-core": {
        "type": "service_key", "client_id": CLIENT_ID, "client_secret": SECRET,
        "token_url": server.url + "/oauth/token", "service_url": server.url}}))
    server.script([token_reply(), sse()])
    assert pi_min.complete("sap/" + DEPLOYMENT, "hi")["stopReason"] == "stop"  # the model id is the deployment
    assert [r.path for r in server.requests] == ["/oauth/token", INFERENCE]


def test_an_access_token_passed_as_api_key_is_used_as_it_is(monkeypatch, server):
    monkeypatch.setenv("SAP_AI_CORE_SERVICE_URL", server.url)
    server.script([sse()])
    assert pi_min.complete("sap/" + DEPLOYMENT, "hi", api_key="eyJhbGciOi.ready.token")["stopReason"] == "stop"
    (req,) = server.requests
    assert req.path == INFERENCE and req.headers["authorization"] == "Bearer eyJhbGciOi.ready.token"


def test_stored_credentials_are_not_used_for_another_server(sap):
    with Loopback() as other:
        other.script([sse()])
        assert pi_min.complete("sap", "hi", base_url=other.url + "/v1")["stopReason"] == "stop"
        (req,) = other.requests
    assert "authorization" not in req.headers and not sap.requests  # no token was even fetched


def test_sap_configuration_errors_name_what_to_set(monkeypatch, server):
    with pytest.raises(pi_min.ConfigError, match="AICORE_SERVICE_KEY.*SAP_AI_CORE_CLIENT_SECRET"):
        pi_min.stream("sap/" + DEPLOYMENT, "hi")
    monkeypatch.setenv("AICORE_SERVICE_KEY", '{"clientid": "x", "clientsecret": "' + SECRET + '",')
    with pytest.raises(pi_min.ConfigError, match="AICORE_SERVICE_KEY is not valid JSON") as e:
        pi_min.stream("sap/" + DEPLOYMENT, "hi")
    assert SECRET not in str(e.value)
    monkeypatch.setenv("AICORE_SERVICE_KEY", json.dumps({"clientid": "x", "clientsecret": SECRET, "url": server.url}))
    with pytest.raises(pi_min.ConfigError, match="SAP_AI_CORE_SERVICE_URL"):
        pi_min.stream("sap/" + DEPLOYMENT, "hi")
    monkeypatch.setenv("AICORE_SERVICE_KEY", service_key(server))
    with pytest.raises(pi_min.ConfigError, match="'gpt-5.4' is a model name.*SAP_AI_CORE_DEPLOYMENT_ID"):
        pi_min.stream("sap", "hi")
    assert not server.requests


# -- Cohere and GitLab requests ----------------------------------------------------------

def body_for(model, context, **options):
    return sent_body(model, context, api_key="k", **options)


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


def test_cli_sap(sap, capsys):
    sap.script([token_reply(), sse()])
    assert pi_min.main(["--provider", "sap", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hello from SAP\n" and SECRET not in out.out + out.err


def test_cli_sap_failures_exit_1_or_2_without_the_secret(sap, monkeypatch, capsys):
    sap.script([token_reply(status=401, body={"error": "unauthorized", "error_description": "no " + SECRET})])
    assert pi_min.main(["--provider", "sap", "hi"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "unauthorized" in err and SECRET not in err and err.count("\n") == 1
    monkeypatch.delenv("SAP_AI_CORE_DEPLOYMENT_ID")
    assert pi_min.main(["--provider", "sap", "hi"]) == 2
    err = capsys.readouterr().err
    assert "SAP_AI_CORE_DEPLOYMENT_ID" in err and SECRET not in err


def test_cli_sap_in_a_fresh_process(server, tmp_path):
    """The installed command as a user runs it: a clean environment holding only the service key."""
    server.script([token_reply(), sse()])
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PI_CODING_AGENT_DIR": str(tmp_path),
           "AICORE_SERVICE_KEY": service_key(server), "SAP_AI_CORE_DEPLOYMENT_ID": DEPLOYMENT}
    run = subprocess.run([sys.executable, "-I", os.path.join(ROOT, "pi_min.py"), "--provider", "sap", "hi"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert (run.returncode, run.stdout) == (0, "Hello from SAP\n"), run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert [r.path for r in server.requests] == ["/oauth/token", INFERENCE]
