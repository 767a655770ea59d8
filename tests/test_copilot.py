"""GitHub Copilot: the GitHub token exchanged for a Copilot token (request, cache across
streams and retries, expiry, one exchange for concurrent streams, failures), a Copilot
token used as it is, GitHub Enterprise, the API host the token names, the routing of each
model to chat completions, Responses or Messages, the editor, initiator and vision
headers, secrets, and CLI runs configured by env vars only.

One loopback server plays both GitHub's API (PI_COPILOT_GITHUB_API_BASE) and, through the
exchange's endpoints.api, the account's Copilot API host."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

import pi_min
from invariants import StreamChecker
from loopback import Loopback, Reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GH = "gho_16C7e42F292c6912E7710c838347Ae178B4a"  # a GitHub OAuth token
CP = "tid=5f2a9c0e;exp=1893456000;sku=copilot_for_individuals;proxy-ep=proxy.individual.githubcopilot.com;8kp=1:0a1b2c"
TOKEN_PATH = "/copilot_internal/v2/token"
API = "/individual"  # the path of the API host the exchange names on the loopback server

OC_TEXT = (b'data: {"choices":[],"created":0,"id":"","prompt_filter_results":[{"content_filter_results":{},'
           b'"prompt_index":0}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}],'
           b'"id":"c1","model":"gpt-4.1"}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":" from Copilot"},"finish_reason":"stop"}],'
           b'"id":"c1","model":"gpt-4.1"}\n\n'
           b'data: {"choices":[],"id":"c1","usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}\n\n'
           b"data: [DONE]\n\n")


def _event(obj):
    return b"event: %s\ndata: %s\n\n" % (obj["type"].encode(), json.dumps(obj).encode())


RS_TEXT = b"".join(_event(e) for e in [
    {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}},
    {"type": "response.output_item.added", "output_index": 0,
     "item": {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}},
    {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
     "delta": "Hello from Responses"},
    {"type": "response.output_item.done", "output_index": 0,
     "item": {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
              "content": [{"type": "output_text", "text": "Hello from Responses", "annotations": []}]}},
    {"type": "response.completed", "response": {"id": "resp_1", "status": "completed", "output": [],
                                                "usage": {"input_tokens": 9, "output_tokens": 3}}},
])
AM_TEXT = b"".join(_event(e) for e in [
    {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                          "model": "claude-sonnet-4.5", "usage": {"input_tokens": 9,
                                                                                  "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from Claude"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    {"type": "message_stop"},
])


def sse(body=OC_TEXT):
    return Reply(headers={"Content-Type": "text/event-stream"}, body=body)


def token_reply(server, token=CP, api=API, expires_in=1800, status=200, body=None):
    """GitHub's answer: the token, its expiry (epoch seconds) and the account's API host."""
    obj = body if body is not None else {
        "token": token, "expires_at": int(time.time()) + expires_in, "refresh_in": expires_in - 300,
        "sku": "free_limited_copilot", "endpoints": {"api": server.url + api, "proxy": "https://proxy.example",
                                                     "telemetry": "https://telemetry.example"}}
    return Reply(status, {"Content-Type": "application/json"}, json.dumps(obj).encode())


def slow_token_reply(server, delay=0.3):
    """A token answer that takes a while, so concurrent streams meet at the exchange."""
    body = token_reply(server).body
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    return Reply(raw=[head % len(body), delay, body])


@pytest.fixture
def copilot(monkeypatch, server):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    monkeypatch.delenv("GITHUB_API_URL", raising=False)  # set on GitHub's own CI runners
    monkeypatch.setenv("PI_COPILOT_GITHUB_API_BASE", server.url)
    monkeypatch.setenv("GITHUB_TOKEN", GH)
    return server


def checked(model, context="hi", **options):
    """Run a stream through the invariant checker (which also looks for both secrets)."""
    checker = StreamChecker(secrets=(GH, CP))
    for event in pi_min.stream(model, context, **options):
        checker.feed(event)
    return checker.finish()


def models_json(agent_dir, **provider):
    (agent_dir / "models.json").write_text(json.dumps({"providers": {"github-copilot": provider}}))


# -- the exchange ---------------------------------------------------------------------------

def test_the_github_token_is_exchanged_and_the_token_api_host_serves_the_chat(copilot):
    copilot.script([token_reply(copilot), sse()])
    msg = checked("copilot", "hi")
    assert msg["stopReason"] == "stop" and msg["content"] == [{"type": "text", "text": "Hello from Copilot"}]
    assert msg["api"] == "openai-completions" and msg["usage"]["input"] == 9
    exchange, chat = copilot.requests
    assert (exchange.method, exchange.path, exchange.body) == ("GET", TOKEN_PATH, b"")
    assert exchange.headers["authorization"] == "token " + GH
    assert exchange.headers["accept"] == "application/json"
    assert exchange.headers["editor-version"].startswith("vscode/")
    assert exchange.headers["user-agent"].startswith("GitHubCopilotChat/")
    assert exchange.headers["x-github-api-version"]
    assert (chat.method, chat.path) == ("POST", API + "/chat/completions")
    assert chat.headers["authorization"] == "Bearer " + CP
    assert chat.json["model"] == "gpt-4.1" and chat.json["messages"] == [{"role": "user", "content": "hi"}]


def test_the_editor_headers_copilot_requires_are_on_every_request(copilot):
    copilot.script([token_reply(copilot), sse()])
    assert pi_min.complete("copilot", "hi")["stopReason"] == "stop"
    headers = copilot.requests[1].headers
    assert headers["editor-version"].startswith("vscode/")
    assert headers["editor-plugin-version"].startswith("copilot-chat/")
    assert headers["copilot-integration-id"] == "vscode-chat"
    assert headers["user-agent"].startswith("GitHubCopilotChat/")
    assert headers["x-github-api-version"] and headers["openai-intent"]
    assert "x-api-key" not in headers


def test_the_token_is_reused_across_retries_and_streams(copilot):
    copilot.script([token_reply(copilot), Reply(429, {"Content-Type": "application/json", "Retry-After": "0"},
                                                b'{"error":{"message":"rate limited"}}'), sse(), sse()])
    assert pi_min.complete("copilot", "one")["stopReason"] == "stop"  # after one retry
    assert pi_min.complete("copilot", "two")["stopReason"] == "stop"
    chat = API + "/chat/completions"
    assert [r.path for r in copilot.requests] == [TOKEN_PATH, chat, chat, chat]
    assert {r.headers["authorization"] for r in copilot.requests[1:]} == {"Bearer " + CP}


def test_a_token_close_to_expiry_is_exchanged_again(copilot):
    """Within a minute of expires_at a token is not used for a new request."""
    copilot.script([token_reply(copilot, token="tid=first;exp=1", expires_in=30), sse(),
                    token_reply(copilot, token="tid=second;exp=2"), sse(), sse()])
    for prompt in ("one", "two", "three"):
        assert pi_min.complete("copilot", prompt)["stopReason"] == "stop"
    chat = API + "/chat/completions"
    assert [r.path for r in copilot.requests] == [TOKEN_PATH, chat, TOKEN_PATH, chat, chat]
    assert [r.headers["authorization"] for r in copilot.requests if r.path == chat] == [
        "Bearer tid=first;exp=1", "Bearer tid=second;exp=2", "Bearer tid=second;exp=2"]


def test_concurrent_streams_make_one_exchange(copilot):
    copilot.script([slow_token_reply(copilot)] + [sse() for _ in range(4)])
    results = []
    threads = [threading.Thread(target=lambda: results.append(pi_min.complete("copilot", "hi")["stopReason"]))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == ["stop"] * 4
    assert [r.path for r in copilot.requests].count(TOKEN_PATH) == 1
    assert len(copilot.requests) == 5


@pytest.mark.parametrize("status, body", [
    (401, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
    (403, {"message": "Resource not accessible by integration"}),
    (404, {"message": "Not Found"}),
])
def test_a_refused_exchange_is_an_auth_error_saying_what_to_check(copilot, status, body):
    body = dict(body, echo="token " + GH)  # a server that echoes the token it was given
    copilot.script([Reply(status, {"Content-Type": "application/json"}, json.dumps(body).encode())])
    events = list(pi_min.stream("copilot", "hi"))
    assert [e["type"] for e in events] == ["start", "error"]
    msg = events[-1]["error"]
    assert (msg["errorKind"], msg["errorStatus"]) == ("auth", status)
    text = msg["errorMessage"]
    assert f"HTTP {status}" in text and body["message"] in text
    assert "GITHUB_TOKEN" in text and "Copilot access" in text and copilot.url in text
    assert GH not in json.dumps(events[-1]) and len(copilot.requests) == 1  # not retried


def test_a_failing_exchange_is_retried_like_any_request(copilot):
    copilot.script([Reply(500, {"Content-Type": "application/json"}, b'{"message":"Server Error"}'),
                    Reply(502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>"),
                    token_reply(copilot), sse()])
    assert pi_min.complete("copilot", "hi")["stopReason"] == "stop"
    assert [r.path for r in copilot.requests] == [TOKEN_PATH] * 3 + [API + "/chat/completions"]


def test_an_exchange_that_keeps_failing_ends_with_its_status(copilot):
    copilot.script([Reply(503, {"Content-Type": "application/json"}, b'{"message":"unavailable"}')] * 2)
    msg = pi_min.complete("copilot", "hi", max_retries=1)
    assert (msg["stopReason"], msg["errorKind"], msg["errorStatus"]) == ("error", "server", 503)
    assert "GitHub Copilot token endpoint" in msg["errorMessage"] and len(copilot.requests) == 2


def test_an_answer_without_a_token_is_an_auth_error(copilot):
    copilot.script([token_reply(copilot, body={"expires_at": 0, "error_details": {"message": "no seat"}})])
    msg = pi_min.complete("copilot", "hi")
    assert msg["errorKind"] == "auth" and "without a usable token" in msg["errorMessage"]
    assert len(copilot.requests) == 1


# -- where the credential comes from ---------------------------------------------------------

def test_a_copilot_token_in_github_copilot_api_key_is_sent_as_it_is(monkeypatch, server, isolated_env):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    monkeypatch.setenv("GITHUB_COPILOT_API_KEY", CP)
    monkeypatch.setenv("GITHUB_TOKEN", GH)  # later in the table's order: not used, not exchanged
    monkeypatch.setenv("PI_COPILOT_GITHUB_API_BASE", server.url)  # an exchange would show here
    models_json(isolated_env, baseUrl=server.url)
    server.script([sse()])
    assert checked("copilot", "hi")["stopReason"] == "stop"
    (req,) = server.requests
    assert req.path == "/chat/completions" and req.headers["authorization"] == "Bearer " + CP


def test_a_copilot_token_names_its_api_host():
    """With the table's generic host, a ready token goes to the host its proxy-ep names
    (as pi reads it); a base URL the user chose stays."""
    model = pi_min.get_model("copilot")
    o = pi_min._Options(api_key=CP)
    pi_min._prepare(model, o)
    assert o.url == "https://api.individual.githubcopilot.com" and o.auth_step is None
    assert o.auth_headers["Authorization"] == "Bearer " + CP
    o = pi_min._Options(api_key=CP, base_url="https://copilot-proxy.example/v1")
    pi_min._prepare(model, o)
    assert o.url == "https://copilot-proxy.example/v1"
    o = pi_min._Options(api_key="tid=1;exp=2")  # no proxy-ep: the table's host
    pi_min._prepare(model, o)
    assert o.url == "https://api.githubcopilot.com"


@pytest.mark.parametrize("how", ["GITHUB_COPILOT_API_KEY", "api_key", "GH_TOKEN", "COPILOT_GITHUB_TOKEN"])
def test_a_github_token_from_anywhere_is_exchanged(copilot, monkeypatch, how):
    """GH_TOKEN and COPILOT_GITHUB_TOKEN hold GitHub tokens; so may GITHUB_COPILOT_API_KEY
    (pi_agent_rust exchanges what it holds) and api_key=, where the token's shape tells."""
    monkeypatch.delenv("GITHUB_TOKEN")
    other = "ghu_" + "x" * 36
    options = {}
    if how == "api_key":
        options["api_key"] = other
    else:
        monkeypatch.setenv(how, other)
    copilot.script([token_reply(copilot), sse()])
    assert pi_min.complete("copilot", "hi", **options)["stopReason"] == "stop"
    assert copilot.requests[0].headers["authorization"] == "token " + other
    assert copilot.requests[1].headers["authorization"] == "Bearer " + CP


@pytest.mark.parametrize("entry", [
    {"type": "oauth", "refresh": GH, "access": "tid=stale;exp=1", "expires": 1},  # pi (TS)
    {"type": "o_auth", "access_token": GH, "expires": 4102444800000},  # pi_agent_rust
    {"type": "api_key", "key": GH},
], ids=["pi", "pi_agent_rust", "api_key"])
def test_the_github_token_of_a_pi_login_in_auth_json(copilot, monkeypatch, isolated_env, entry):
    monkeypatch.delenv("GITHUB_TOKEN")
    (isolated_env / "auth.json").write_text(json.dumps({"github-copilot": entry}))
    copilot.script([token_reply(copilot), sse()])
    assert pi_min.complete("copilot", "hi")["stopReason"] == "stop"
    assert copilot.requests[0].headers["authorization"] == "token " + GH
    assert copilot.requests[1].headers["authorization"] == "Bearer " + CP


def test_github_enterprise(copilot, monkeypatch):
    """GITHUB_API_URL (GitHub Enterprise Server's API, as Actions set it) when
    PI_COPILOT_GITHUB_API_BASE is not set; the enterprise's own API host from the token."""
    monkeypatch.delenv("PI_COPILOT_GITHUB_API_BASE")
    monkeypatch.setenv("GITHUB_API_URL", copilot.url + "/api/v3/")
    copilot.script([token_reply(copilot, api="/enterprise/"), sse(AM_TEXT)])
    msg = pi_min.complete("copilot/claude-sonnet-4.5", "hi")
    assert msg["content"] == [{"type": "text", "text": "Hello from Claude"}]
    assert [r.path for r in copilot.requests] == ["/api/v3" + TOKEN_PATH, "/enterprise/v1/messages"]


def test_pi_copilot_github_api_base_comes_before_github_api_url(copilot, monkeypatch):
    monkeypatch.setenv("GITHUB_API_URL", "http://127.0.0.1:9/api/v3")  # nothing listens there
    copilot.script([token_reply(copilot), sse()])
    assert pi_min.complete("copilot", "hi")["stopReason"] == "stop"
    assert copilot.requests[0].path == TOKEN_PATH


def test_the_enterprise_pi_logged_in_to(monkeypatch, isolated_env):
    """pi's login to GitHub Enterprise Cloud (<name>.ghe.com) keeps the host: the
    exchange goes to its API host, unless the environment names one."""
    (isolated_env / "auth.json").write_text(json.dumps({"github-copilot": {
        "type": "oauth", "refresh": GH, "access": "tid=x", "expires": 1, "enterpriseUrl": "acme.ghe.com"}}))
    o = pi_min._Options()
    pi_min._prepare(pi_min.get_model("copilot"), o)
    assert o.credential.token_url == "https://api.acme.ghe.com" + TOKEN_PATH
    monkeypatch.setenv("GITHUB_API_URL", "https://ghe.example/api/v3")
    o = pi_min._Options()
    pi_min._prepare(pi_min.get_model("copilot"), o)
    assert o.credential.token_url == "https://ghe.example/api/v3" + TOKEN_PATH


def test_a_base_url_the_user_chose_is_kept(copilot, isolated_env):
    models_json(isolated_env, baseUrl=copilot.url + "/mine")
    copilot.script([token_reply(copilot, api="/not-here"), sse()])
    assert pi_min.complete("copilot", "hi")["stopReason"] == "stop"
    assert [r.path for r in copilot.requests] == [TOKEN_PATH, "/mine/chat/completions"]


def test_stored_tokens_are_not_sent_to_another_server(copilot):
    with Loopback() as other:
        other.script([sse()])
        assert pi_min.complete("copilot", "hi", base_url=other.url)["stopReason"] == "stop"
        (req,) = other.requests
    assert "authorization" not in req.headers and not copilot.requests  # not even exchanged


def test_no_credentials_is_a_config_error_naming_what_to_set(isolated_env, capsys):
    with pytest.raises(pi_min.ConfigError) as e:
        pi_min.stream("copilot", "hi")
    text = str(e.value)
    for name in ("GITHUB_COPILOT_API_KEY", "GITHUB_TOKEN", "GH_TOKEN", "COPILOT_GITHUB_TOKEN",
                 str(isolated_env / "auth.json"), "api_key"):
        assert name in text
    assert pi_min.main(["--provider", "copilot", "hi"]) == 2
    assert "GITHUB_COPILOT_API_KEY" in capsys.readouterr().err


# -- routing --------------------------------------------------------------------------------

@pytest.mark.parametrize("model, path, body, text, api", [
    ("gpt-4.1", "/chat/completions", OC_TEXT, "Hello from Copilot", "openai-completions"),
    ("gpt-5.4", "/responses", RS_TEXT, "Hello from Responses", "openai-responses"),
    ("claude-sonnet-4.5", "/v1/messages", AM_TEXT, "Hello from Claude", "anthropic-messages"),
])
def test_each_model_goes_to_the_api_of_its_family(copilot, model, path, body, text, api):
    copilot.script([token_reply(copilot), sse(body)])
    msg = checked("copilot/" + model, "hi")
    assert (msg["stopReason"], msg["api"], msg["model"]) == ("stop", api, model)
    assert msg["content"][0]["text"] == text and msg["usage"]["input"] == 9
    req = copilot.requests[1]
    assert req.path == API + path and req.json["model"] == model
    assert req.headers["authorization"] == "Bearer " + CP and req.headers["copilot-integration-id"] == "vscode-chat"
    if api == "openai-responses":
        assert req.json["input"][0]["content"] == [{"type": "input_text", "text": "hi"}]
    if api == "anthropic-messages":
        assert req.headers["anthropic-version"] and req.json["max_tokens"] > 0


def test_responses_only_models_never_go_to_chat_completions(copilot):
    """Every gpt-5 and codex model of the table, and ids it does not list, on /responses."""
    ids = [m for m in pi_min._known_models("github-copilot") if m.startswith("gpt-5") or "codex" in m]
    ids += ["gpt-5.9", "gpt-6-codex"]
    assert len(ids) >= 6
    copilot.script([token_reply(copilot)] + [sse(RS_TEXT) for _ in ids])
    for mid in ids:
        msg = pi_min.complete("copilot/" + mid, "hi")
        assert (msg["stopReason"], msg["api"]) == ("stop", "openai-responses"), mid
    assert [r.path for r in copilot.requests[1:]] == [API + "/responses"] * len(ids)


def test_table_models_have_the_api_of_pi_ais_catalog():
    path = os.path.join(ROOT, "..", "shared", "spec", "models-catalog.json")
    if not os.path.exists(path):
        pytest.skip("shared/spec/models-catalog.json is not beside the repository")
    with open(path, encoding="utf-8") as f:
        catalog = {m["id"]: m["api"] for m in json.load(f)["providers"]["github-copilot"]}
    known = pi_min._known_models("github-copilot")
    both = set(catalog) & set(known)
    assert len(both) >= 10 and {catalog[m] for m in both} == {"openai-completions", "openai-responses",
                                                            "anthropic-messages"}
    for mid in both:
        assert pi_min.get_model("copilot", mid)["api"] == catalog[mid], mid


def test_chat_models_send_no_reasoning_effort(copilot):
    """pi-ai's Copilot chat-completions models take no reasoning_effort."""
    copilot.script([token_reply(copilot), sse()])
    assert pi_min.complete("copilot/gemini-3-flash-preview", "hi", reasoning="high")["stopReason"] == "stop"
    assert "reasoning_effort" not in copilot.requests[1].json


# -- the per-request headers and secrets ----------------------------------------------------

IMAGE = {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
CALL = {"role": "assistant", "content": [{"type": "toolCall", "id": "call_1", "name": "look", "arguments": {}}],
        "api": "openai-completions", "provider": "github-copilot", "model": "gpt-4.1", "stopReason": "toolUse",
        "usage": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 0}, "timestamp": 1}


@pytest.mark.parametrize("messages, initiator, vision", [
    ([{"role": "user", "content": "hi"}], "user", False),
    ([{"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}], "user", True),
    ([{"role": "user", "content": "look"}, CALL,
      {"role": "toolResult", "toolCallId": "call_1", "toolName": "look", "isError": False,
       "content": [{"type": "text", "text": "seen"}]}], "agent", False),
    ([{"role": "user", "content": "look"}, CALL,
      {"role": "toolResult", "toolCallId": "call_1", "toolName": "look", "isError": False, "content": [IMAGE]}],
     "agent", True),
], ids=["user", "user-image", "after-tool", "tool-image"])
def test_initiator_and_vision_headers(copilot, messages, initiator, vision):
    copilot.script([token_reply(copilot), sse()])
    model = pi_min.get_model("copilot", "gpt-4.1")
    assert pi_min.complete(model, {"messages": messages})["stopReason"] == "stop"
    headers = copilot.requests[1].headers
    assert headers["x-initiator"] == initiator
    assert headers.get("copilot-vision-request") == ("true" if vision else None)


def test_headers_given_by_the_caller_win(copilot):
    copilot.script([token_reply(copilot), sse()])
    msg = pi_min.complete("copilot", "hi", headers={"X-Initiator": "agent", "Editor-Version": "Neovim/0.11.0"})
    assert msg["stopReason"] == "stop"
    headers = copilot.requests[1].headers
    assert (headers["x-initiator"], headers["editor-version"]) == ("agent", "Neovim/0.11.0")


def test_neither_token_reaches_a_message(copilot):
    copilot.script([token_reply(copilot), Reply(401, {"Content-Type": "application/json"}, json.dumps(
        {"error": {"message": f"unauthorized: token {CP} expired (from {GH})"}}).encode())])
    events = list(pi_min.stream("copilot", "hi"))
    msg = events[-1]["error"]
    assert (msg["errorKind"], msg["errorStatus"]) == ("auth", 401)
    assert "unauthorized: token *** expired" in msg["errorMessage"]
    dumped = json.dumps(events[-1])
    assert CP not in dumped and GH not in dumped


# -- CLI ------------------------------------------------------------------------------------

def test_cli_copilot(copilot, capsys):
    copilot.script([token_reply(copilot), sse()])
    assert pi_min.main(["--provider", "copilot", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hello from Copilot\n"
    assert GH not in out.out + out.err and CP not in out.out + out.err


def test_cli_copilot_exchange_refused_exits_1_with_one_line(copilot, capsys):
    copilot.script([Reply(401, {"Content-Type": "application/json"}, b'{"message":"Bad credentials"}')])
    assert pi_min.main(["--provider", "copilot", "hi"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "Copilot access" in err and GH not in err and err.count("\n") == 1


def test_cli_copilot_in_a_fresh_process(server, tmp_path):
    """The command as a user runs it: a clean environment with a GitHub token and the GitHub API."""
    server.script([token_reply(server), sse(RS_TEXT)])
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PI_CODING_AGENT_DIR": str(tmp_path),
           "GH_TOKEN": GH, "PI_COPILOT_GITHUB_API_BASE": server.url}
    run = subprocess.run([sys.executable, "-I", os.path.join(ROOT, "pi_min.py"), "--provider", "copilot",
                          "-m", "gpt-5.4", "hi"], capture_output=True, text=True, env=env, timeout=60)
    assert (run.returncode, run.stdout) == (0, "Hello from Responses\n"), run.stderr
    assert GH not in run.stdout + run.stderr and CP not in run.stdout + run.stderr
    assert [r.path for r in server.requests] == [TOKEN_PATH, API + "/responses"]
