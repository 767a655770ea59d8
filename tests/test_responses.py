"""openai-responses beyond the fixture corpus: Azure OpenAI (both URL forms from the
environment, api-key and Entra bearer, both surfaces, filter chunks, the content-filter
finish), Sakana, ChatGPT/Codex subscriptions (auth.json token, refresh and write-back),
request shapes, handoff to and from the other families, and the CLI presets."""

import base64
import json
import os
import stat
import time

import pytest

import pi_min
from capture import sent_body
from invariants import StreamChecker
from loopback import Reply


def event(data):
    return b"event: %s\ndata: %s\n\n" % (data["type"].encode(), json.dumps(data).encode())


def rs_stream(text="Hi there", calls=(), usage=None):
    """A Responses stream: one message item, then function calls given as (call_id, item_id, name, args)."""
    out = [event({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}})]
    items = []
    if text:
        item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        out.append(event({"type": "response.output_item.added", "output_index": 0, "item": item}))
        out.append(event({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                          "content_index": 0, "delta": text}))
        done = dict(item, status="completed", content=[{"type": "output_text", "text": text, "annotations": []}])
        out.append(event({"type": "response.output_item.done", "output_index": 0, "item": done}))
        items.append(done)
    for n, (call_id, item_id, name, args) in enumerate(calls, start=len(items)):
        item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": ""}
        out.append(event({"type": "response.output_item.added", "output_index": n, "item": item}))
        out.append(event({"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": n,
                          "delta": args}))
        out.append(event({"type": "response.output_item.done", "output_index": n, "item": dict(item, arguments=args)}))
        items.append(dict(item, arguments=args))
    out.append(event({"type": "response.completed", "response": {
        "id": "resp_1", "status": "completed", "output": items,
        "usage": usage or {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}}}))
    return b"".join(out)


def sse(body):
    return Reply(headers={"Content-Type": "text/event-stream"}, body=body)


CHAT = (b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,'
        b'"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}\n\n'
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
        b'"content":"Hello"},"finish_reason":null,"content_filter_results":{}}]}\n\n'
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
        b'"finish_reason":"stop","content_filter_results":{}}]}\n\n'
        b'data: {"choices":[{"content_filter_offsets":{"check_offset":5,"start_offset":0,"end_offset":5},'
        b'"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}},"finish_reason":null,"index":0}],'
        b'"created":0,"id":"","model":"","object":""}\n\n'
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}\n\n'
        b"data: [DONE]\n\n")


def write(agent_dir, name, data):
    (agent_dir / name).write_text(json.dumps(data))


def body_for(model, ctx="hi", **options):
    return sent_body(model, ctx, **options)


# -- Azure OpenAI -----------------------------------------------------------------------------

@pytest.fixture
def azure(monkeypatch, server):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url + "/")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-0123456789")
    return server


def test_azure_endpoint_from_env_chat_completions_with_api_key_and_filter_chunks(azure):
    azure.script([sse(CHAT)])
    checker = StreamChecker(secrets=("azure-key-0123456789",))
    for e in pi_min.stream("azure", "hi", timeout=5):
        checker.feed(e)
    msg = checker.finish()
    assert msg["stopReason"] == "stop" and msg["content"] == [{"type": "text", "text": "Hello"}]
    assert (msg["api"], msg["provider"], msg["usage"]["input"]) == ("azure-openai", "azure-openai", 7)
    req = azure.requests[0]
    assert req.path == "/openai/deployments/gpt-5.2/chat/completions?api-version=2025-04-01-preview"
    assert req.headers["api-key"] == "azure-key-0123456789" and "authorization" not in req.headers
    assert req.json["stream_options"] == {"include_usage": True} and req.json["model"] == "gpt-5.2"
    assert pi_min._AZ_API_VERSION == pi_min._table().PROVIDERS["azure-openai"]["urlDefaults"]["api_version"]


def test_azure_resource_name_builds_the_openai_azure_com_url(monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_RESOURCE_NAME", "my-res")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-0123456789")
    monkeypatch.setenv("AZURE_OPENAI_API_VERSION", "2024-10-21")
    o = pi_min._Options()
    model = pi_min.get_model("azure-openai", "gpt-4.1")
    pi_min._prepare(model, o)
    assert o.credential == "azure-key-0123456789"  # the resource's host is the key's own
    url, headers, body = pi_min._build_request(model, {"messages": [{"role": "user", "content": "hi"}]}, o)
    assert url == "https://my-res.openai.azure.com/openai/deployments/gpt-4.1/chat/completions?api-version=2024-10-21"
    url = pi_min._build_request(pi_min.get_model("azure", "gpt-5-codex"), {"messages": []}, o)[0]
    assert url == "https://my-res.openai.azure.com/openai/v1/responses"
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://my-ai.cognitiveservices.azure.com/")  # wins over the name
    o = pi_min._Options()
    pi_min._prepare(model, o)
    assert o.credential == "azure-key-0123456789"
    assert pi_min._build_request(model, {"messages": []}, o)[0] == \
        "https://my-ai.cognitiveservices.azure.com/openai/deployments/gpt-4.1/chat/completions?api-version=2024-10-21"


def test_azure_resource_name_is_where_the_connection_goes(monkeypatch):
    """Real bytes: the CONNECT of the HTTPS proxy names the resource's host (TLS then fails on the test
    certificate, which is not that host's)."""
    from test_tls_proxy import CA, ConnectProxy
    from loopback import Loopback
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(os.path.dirname(CA), "localhost.pem"))
    with Loopback(tls=ctx) as tls_server:
        proxy = ConnectProxy(tls_server.port)
        try:
            monkeypatch.setenv("SSL_CERT_FILE", CA)
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
            monkeypatch.setenv("AZURE_OPENAI_RESOURCE_NAME", "my-res")
            monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-0123456789")
            msg = pi_min.complete("azure", "hi", timeout=5, max_retries=0)
            assert msg["stopReason"] == "error" and msg["errorKind"] == "network"
            assert proxy.requests[0].startswith("CONNECT my-res.openai.azure.com:443 ")
        finally:
            proxy.close()


@pytest.mark.parametrize("endpoint", ["{url}", "{url}/", "{url}/openai/v1/",
                                      "{url}/openai/deployments/x/chat/completions?api-version=2024-02-01"])
def test_azure_endpoint_spellings_end_at_openai(monkeypatch, server, endpoint):
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", endpoint.format(url=server.url))
    server.script([sse(CHAT)])
    assert pi_min.complete("azure", "hi", api_key="k", timeout=5)["stopReason"] == "stop"
    assert server.requests[0].path.startswith("/openai/deployments/gpt-5.2/chat/completions?api-version=")


def jwt(claims):
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_azure_entra_token_goes_as_a_bearer_token(azure, monkeypatch):
    token = jwt({"aud": "https://cognitiveservices.azure.com", "oid": "x"})
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", token)
    azure.script([sse(CHAT)])
    assert pi_min.complete("azure", "hi", timeout=5)["stopReason"] == "stop"
    req = azure.requests[0]
    assert req.headers["authorization"] == "Bearer " + token and "api-key" not in req.headers


@pytest.mark.parametrize("output, header", [("TOKEN", "authorization"), ("JSON", "authorization"),
                                            ("0123456789abcdef0123456789abcdef", "api-key")])
def test_azure_api_key_command_token_or_key(isolated_env, azure, monkeypatch, output, header):
    token = jwt({"aud": "https://cognitiveservices.azure.com"})
    printed = {"TOKEN": token, "JSON": json.dumps({"accessToken": token, "expiresOn": "2030-01-01 00:00:00.000000",
                                                   "tokenType": "Bearer"})}.get(output, output)
    (isolated_env / "out.txt").write_text(printed)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    write(isolated_env, "models.json", {"providers": {"azure": {"apiKey": f"!cat '{isolated_env / 'out.txt'}'"}}})
    azure.script([sse(CHAT)])
    assert pi_min.complete("azure", "hi", timeout=5)["stopReason"] == "stop"
    sent = azure.requests[0].headers
    assert sent[header] == ("Bearer " + token if header == "authorization" else output)
    assert ({"authorization", "api-key"} - {header}).isdisjoint(sent)


def test_azure_auth_header_from_headers_wins(azure):
    azure.script([sse(CHAT)])
    pi_min.complete("azure", "hi", headers={"Authorization": "Bearer mine-0123456789"}, timeout=5)
    req = azure.requests[0]
    assert req.headers["authorization"] == "Bearer mine-0123456789" and "api-key" not in req.headers


def test_azure_responses_surface_by_model_and_by_models_json(isolated_env, azure):
    azure.script([sse(rs_stream("From v1")), sse(rs_stream("Again"))])
    msg = pi_min.complete("azure/gpt-5-codex", {"systemPrompt": "sys", "messages": [{"role": "user", "content": "hi"}]},
                          timeout=5)
    assert msg["api"] == "azure-openai-responses" and msg["content"][0]["text"] == "From v1"
    req = azure.requests[0]
    assert req.path == "/openai/v1/responses" and req.headers["api-key"] == "azure-key-0123456789"
    assert req.json["model"] == "gpt-5-codex" and req.json["instructions"] == "sys" and req.json["store"] is False
    # models.json "api" moves a whole provider to the v1 surface; its key still goes as api-key
    write(isolated_env, "models.json", {"providers": {"azure": {
        "api": "azure-openai-responses", "models": [{"id": "gpt-5.2", "deployment": "prod-52"}]}}})
    assert pi_min.complete("azure", "hi", timeout=5)["content"][0]["text"] == "Again"
    req = azure.requests[1]
    assert req.path == "/openai/v1/responses" and req.json["model"] == "prod-52"
    assert req.headers["api-key"] == "azure-key-0123456789"


def test_azure_deployment_mapping(isolated_env, azure, monkeypatch):
    write(isolated_env, "models.json", {"providers": {"azure-openai": {"models": [
        {"id": "gpt-5.2", "deployment": "prod-52"}, {"id": "gpt-4.1", "deployment": 5}]}}})
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME_MAP", "gpt-5-mini=mini-dep, o3 = reasoner")
    azure.script([sse(CHAT), sse(CHAT), sse(CHAT)])
    for model_id, deployment in (("gpt-5.2", "prod-52"), ("o3", "reasoner"), ("gpt-5-nano", "gpt-5-nano")):
        assert pi_min.complete(f"azure/{model_id}", "hi", timeout=5)["stopReason"] == "stop"
    assert [r.path.split("/")[3] for r in azure.requests] == ["prod-52", "reasoner", "gpt-5-nano"]
    with pytest.raises(pi_min.ConfigError, match="deployment of gpt-4.1 .*non-empty string"):
        pi_min.stream("azure/gpt-4.1", "hi")
    monkeypatch.setenv("AZURE_OPENAI_DEPLOYMENT_NAME_MAP", "gpt-5-mini")
    with pytest.raises(pi_min.ConfigError, match="AZURE_OPENAI_DEPLOYMENT_NAME_MAP: 'gpt-5-mini' is not model="):
        pi_min.stream("azure/gpt-5-mini", "hi")


def test_azure_configuration_problems_name_what_to_set(monkeypatch, server):
    with pytest.raises(pi_min.ConfigError, match="AZURE_OPENAI_ENDPOINT or AZURE_OPENAI_BASE_URL or "
                                                 "AZURE_OPENAI_RESOURCE_NAME"):
        pi_min.stream("azure", "hi", api_key="k")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
    with pytest.raises(pi_min.ConfigError, match="AZURE_OPENAI_API_KEY or AZURE_OPENAI_AD_TOKEN"):
        pi_min.stream("azure", "hi")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-0123456789")
    server.script([sse(CHAT)])  # a base_url elsewhere gets no stored key
    pi_min.complete("azure", "hi", base_url=server.url.replace("127.0.0.1", "localhost"), timeout=5)
    assert "api-key" not in server.requests[0].headers


def test_azure_content_filter_finish_is_an_error_naming_the_categories(azure):
    body = (b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
            b'"content":"Here is"},"finish_reason":null,"content_filter_results":{"hate":{"filtered":false,'
            b'"severity":"safe"},"violence":{"filtered":false,"severity":"low"}}}]}\n\n'
            b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},'
            b'"finish_reason":"content_filter","content_filter_results":{"hate":{"filtered":false,"severity":"safe"},'
            b'"violence":{"filtered":true,"severity":"high"},"protected_material_text":{"filtered":true,'
            b'"detected":true}}}]}\n\n'
            b'data: {"choices":[{"content_filter_offsets":{"check_offset":7,"start_offset":0,"end_offset":7},'
            b'"content_filter_results":{"custom_blocklists":{"filtered":true,"details":[{"filtered":true,'
            b'"id":"weapons-list"}]}},"finish_reason":null,"index":0}],"created":0,"id":"","model":"","object":""}\n\n'
            b"data: [DONE]\n\n")
    azure.script([sse(body)])
    msg = pi_min.complete("azure", "hi", timeout=5)
    assert msg["stopReason"] == "error" and msg["errorKind"] == "invalid_request"
    assert msg["content"] == [{"type": "text", "text": "Here is"}]
    text = msg["errorMessage"]
    assert "content_filter" in text and "violence (high)" in text and "protected_material_text (detected)" in text
    assert "custom_blocklists (weapons-list)" in text and "hate" not in text


# -- Sakana -----------------------------------------------------------------------------------

def test_sakana_streams_through_the_responses_family(isolated_env, server, monkeypatch):
    monkeypatch.setenv("FUGU_API_KEY", "fugu-key-0123456789")
    write(isolated_env, "models.json", {"providers": {"sakana": {"baseUrl": server.url + "/v1"}}})
    server.script([sse(rs_stream("Konnichiwa"))])
    msg = pi_min.complete("sakana-ai", "hi", timeout=5)
    assert msg["content"][0]["text"] == "Konnichiwa" and msg["api"] == "openai-responses"
    req = server.requests[0]
    assert req.path == "/v1/responses" and req.headers["authorization"] == "Bearer fugu-key-0123456789"
    assert pi_min._table().PROVIDERS["sakana"]["baseUrl"] == "https://api.sakana.ai/v1"  # the table's, by default


# -- ChatGPT / Codex --------------------------------------------------------------------------

ACCOUNT = "a1b2c3d4-0000-4000-8000-acc0un7acc0u"


def codex_token(account=ACCOUNT, tag="1"):
    return jwt({"exp": 4102444800, "tag": tag, "https://api.openai.com/auth": {"chatgpt_account_id": account,
                                                                             "chatgpt_plan_type": "plus"}})


@pytest.fixture
def codex(isolated_env, server, monkeypatch):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    write(isolated_env, "models.json", {"providers": {"openai-codex": {
        "baseUrl": server.url + "/backend-api/codex/responses"}}})
    return server


def test_codex_token_from_auth_json(isolated_env, codex):
    token = codex_token()
    write(isolated_env, "auth.json", {"openai-codex": {"type": "oauth", "access": token, "refresh": "r-1",
                                                       "expires": 4102444800000, "accountId": ACCOUNT}})
    codex.script([sse(rs_stream("Codex here"))])
    ctx = {"systemPrompt": "You are a coding agent.", "messages": [{"role": "user", "content": "hi"}]}
    msg = pi_min.complete("codex", ctx, max_tokens=100, temperature=0.5, session_id="s-1", reasoning="minimal",
                          timeout=5)
    assert msg["content"][0]["text"] == "Codex here" and msg["api"] == "openai-codex-responses"
    req = codex.requests[0]
    assert req.path == "/backend-api/codex/responses"
    h = req.headers
    assert h["authorization"] == "Bearer " + token and h["chatgpt-account-id"] == ACCOUNT
    assert h["openai-beta"] == "responses=experimental" and h["originator"] == "pi" and h["session_id"] == "s-1"
    body = req.json
    assert body["instructions"] == "You are a coding agent." and body["store"] is False and body["stream"] is True
    assert body["parallel_tool_calls"] is True and body["tool_choice"] == "auto"
    assert body["include"] == ["reasoning.encrypted_content"] and body["text"] == {"verbosity": "medium"}
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}  # gpt-5.4 takes no minimal
    assert "max_output_tokens" not in body and "temperature" not in body


def codex_entry(ts_form, token_url, expires=1000):
    if ts_form:
        return {"type": "oauth", "access": codex_token(tag="old"), "refresh": "the-refresh-token",
                "expires": expires, "accountId": ACCOUNT, "token_url": token_url}
    return {"type": "o_auth", "access_token": codex_token(tag="old"), "refresh_token": "the-refresh-token",
            "expires": expires, "token_url": token_url}


@pytest.mark.parametrize("ts_form", [True, False])
def test_codex_expired_token_is_refreshed_and_written_back(isolated_env, codex, ts_form):
    write(isolated_env, "auth.json", {"openai-codex": codex_entry(ts_form, codex.url + "/oauth/token"),
                                      "anthropic": {"type": "api_key", "key": "sk-ant-keep-me"}})
    new = codex_token(tag="new")
    codex.script([Reply(200, {"Content-Type": "application/json"}, json.dumps(
        {"id_token": "x", "access_token": new, "refresh_token": "new-refresh-token", "expires_in": 864000}).encode()),
        sse(rs_stream("one")), sse(rs_stream("two"))])
    assert pi_min.complete("openai-codex", "hi", timeout=5)["content"][0]["text"] == "one"
    assert pi_min.complete("chatgpt-codex", "again", timeout=5)["content"][0]["text"] == "two"  # not refreshed again
    refresh, first, second = codex.requests
    assert refresh.path == "/oauth/token" and refresh.json == {"grant_type": "refresh_token",
                                                               "refresh_token": "the-refresh-token",
                                                               "client_id": "app_EMoamEEZ73f0CkXaXp7hrann"}
    for req in (first, second):
        assert req.headers["authorization"] == "Bearer " + new and req.headers["chatgpt-account-id"] == ACCOUNT
    path = isolated_env / "auth.json"
    saved = json.loads(path.read_text())
    assert saved["anthropic"] == {"type": "api_key", "key": "sk-ant-keep-me"}
    access, refresh_name = ("access", "refresh") if ts_form else ("access_token", "refresh_token")
    entry = saved["openai-codex"]
    assert entry[access] == new and entry[refresh_name] == "new-refresh-token"
    assert entry["expires"] > (time.time() + 800000) * 1000 and entry["type"] == ("oauth" if ts_form else "o_auth")
    if ts_form:
        assert entry["accountId"] == ACCOUNT
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in os.listdir(isolated_env) if p.startswith(".auth.json.")]


@pytest.mark.parametrize("status, body", [
    (401, b'{"error": {"message": "Refresh token the-refresh-token has been revoked", '
          b'"type": "invalid_request_error", "code": "refresh_token_invalidated"}}'),
    (400, b'{"error": "invalid_grant", "error_description": "the-refresh-token expired"}')])
def test_codex_failing_refresh_is_an_auth_error_event(isolated_env, codex, status, body):
    write(isolated_env, "auth.json", {"openai-codex": codex_entry(True, codex.url + "/oauth/token")})
    codex.script([Reply(status, {"Content-Type": "application/json"}, body)])
    events = list(pi_min.stream("codex", "hi", timeout=5))
    assert [e["type"] for e in events] == ["start", "error"]
    msg = events[-1]["error"]
    assert msg["errorKind"] == "auth" and msg["errorStatus"] == status and "token endpoint" in msg["errorMessage"]
    assert "log in to openai-codex again" in msg["errorMessage"]
    assert "the-refresh-token" not in msg["errorMessage"]
    assert json.loads((isolated_env / "auth.json").read_text())["openai-codex"]["refresh"] == "the-refresh-token"


def test_codex_a_refreshed_token_without_an_account_is_an_auth_error(isolated_env, codex):
    write(isolated_env, "auth.json", {"openai-codex": codex_entry(False, codex.url + "/oauth/token")})
    codex.script([Reply(200, {"Content-Type": "application/json"},
                        json.dumps({"access_token": jwt({"sub": "x"}), "expires_in": 3600}).encode())])
    msg = pi_min.complete("codex", "hi", timeout=5)
    assert msg["errorKind"] == "auth" and "account id" in msg["errorMessage"] and len(codex.requests) == 1


def test_codex_without_a_login_or_an_account_is_a_config_error(isolated_env, codex):
    with pytest.raises(pi_min.ConfigError, match="no ChatGPT login.*auth.json"):
        pi_min.stream("codex", "hi")
    write(isolated_env, "auth.json", {"openai-codex": {"type": "oauth", "access": "opaque-token", "refresh": "r",
                                                       "expires": 4102444800000}})
    with pytest.raises(pi_min.ConfigError, match="no ChatGPT account id"):
        pi_min.stream("codex", "hi")
    assert codex.requests == []


# -- OpenAI request shapes --------------------------------------------------------------------

def test_openai_completions_api_still_reaches_chat_completions(server):
    server.script([sse(CHAT)])
    model = pi_min.get_model("openai", "gpt-4.1", api="openai-completions")
    msg = pi_min.complete(model, "hi", base_url=server.url + "/v1", api_key="k", timeout=5)
    assert msg["stopReason"] == "stop" and msg["api"] == "openai-completions"
    assert server.requests[0].path == "/v1/chat/completions"


TOOLS = [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]


def test_request_shape_for_reasoning_and_plain_models():
    ctx = {"messages": [{"role": "user", "content": "x"}], "tools": TOOLS}
    body = body_for(pi_min.get_model("openai", "gpt-5"), ctx, api_key="k", reasoning="xhigh", temperature=0.2,
                    tool_choice="look", cache_retention="long", session_id="s")
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}  # gpt-5 has no xhigh
    assert body["include"] == ["reasoning.encrypted_content"] and "temperature" not in body
    assert body["tools"] == [{"type": "function", "name": "look", "description": "d",
                              "parameters": TOOLS[0]["parameters"], "strict": False}]
    assert body["tool_choice"] == {"type": "function", "name": "look"}
    assert body["prompt_cache_key"] == "s" and body["prompt_cache_retention"] == "24h"
    body = body_for(pi_min.get_model("openai", "gpt-4.1"), ctx, api_key="k", temperature=0.2, reasoning="off",
                    tool_choice="any", cache_retention="none", session_id="s")
    assert body["temperature"] == 0.2 and body["tool_choice"] == "required"
    assert not {"include", "reasoning", "prompt_cache_key", "instructions"} & set(body)
    assert body_for("openai/gpt-5.4", ctx, api_key="k", reasoning="xhigh")["reasoning"]["effort"] == "xhigh"


def test_a_server_that_rejects_the_encrypted_reasoning_gets_the_body_without_it(server):
    server.script([Reply(400, {"Content-Type": "application/json"},
                         b'{"error":{"message":"Unknown parameter: \'include\'.","type":"invalid_request_error",'
                         b'"param":"include","code":"unknown_parameter"}}'), sse(rs_stream("ok"))])
    msg = pi_min.complete("openai/gpt-5.4", "hi", base_url=server.url + "/v1", api_key="k", timeout=5)
    assert msg["content"][0]["text"] == "ok"
    assert "include" in server.requests[0].json and "include" not in server.requests[1].json


@pytest.mark.parametrize("bad", [
    {"type": "response.output_text.delta", "delta": 5}, {"type": "response.output_item.added", "item": "x"},
    {"type": "response.output_item.added", "output_index": [1], "item": {"type": "function_call", "id": 7}},
    {"type": "response.function_call_arguments.delta", "item_id": ["x"], "output_index": {}, "delta": "{}"},
    {"type": "response.reasoning_summary_text.delta", "item_id": "rs", "summary_index": [2], "delta": "t"},
    {"type": 5}, [1, 2], "text", None, {"type": "response.output_item.done", "item": {"type": "reasoning",
                                                                                       "summary": "x"}},
    {"type": "response.output_item.done", "item": {"type": "message", "id": "m2", "content": 7}}])
def test_odd_events_never_escape_as_exceptions(server, bad):
    good = rs_stream("fine")
    cut = good.index(b"event: response.completed")
    server.script([sse(good[:cut] + b"data: " + json.dumps(bad).encode() + b"\n\n" + good[cut:])])
    checker = StreamChecker()
    for e in pi_min.stream("openai", "hi", base_url=server.url, api_key="k", timeout=5):
        checker.feed(e)
    msg = checker.finish()
    assert "unexpected" not in (msg.get("errorMessage") or ""), msg.get("errorMessage")
    assert msg["content"][0]["text"] == "fine"


def test_an_odd_final_response_still_ends_the_turn(server):
    good = rs_stream("fine")
    cut = good.index(b"event: response.completed")
    server.script([sse(good[:cut] + event({"type": "response.completed",
                                           "response": {"output": 5, "usage": "x", "status": 3}}))])
    msg = pi_min.complete("openai", "hi", base_url=server.url, api_key="k", timeout=5)
    assert msg["stopReason"] == "stop" and msg["content"] == [{"type": "text", "text": "fine",
                                                               "textSignature": "msg_1"}]


def test_reasoning_text_itself_streamed_or_whole(server):
    """Servers that show the reasoning itself (reasoning_text parts, no summary): thinking, not repeated."""
    item = {"id": "rs_1", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "abc"}]}
    streamed = b"".join([event({"type": "response.output_item.added", "output_index": 0,
                                "item": dict(item, content=[])}),
                         event({"type": "response.reasoning_text.delta", "item_id": "rs_1", "output_index": 0,
                                "content_index": 0, "delta": "ab"}),
                         event({"type": "response.reasoning_text.delta", "item_id": "rs_1", "output_index": 0,
                                "content_index": 0, "delta": "c"}),
                         event({"type": "response.output_item.done", "output_index": 0, "item": item})])
    server.script([sse(streamed + rs_stream("ok")), Reply(headers={"Content-Type": "application/json"},
                                                          body=json.dumps({"status": "completed",
                                                                           "output": [item]}).encode())])
    for _ in range(2):
        msg = pi_min.complete("openai", "hi", base_url=server.url, api_key="k", timeout=5)
        assert msg["content"][0] == {"type": "thinking", "thinking": "abc"}


def test_random_mutations_end_in_one_terminal_event(server):
    import random
    rng = random.Random(8)
    base = rs_stream("Hello", calls=[("call_1", "fc_1", "look", '{"q": [1, {"r": "x"}]}')])
    for _ in range(60):
        body = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(body))
            op = rng.random()
            if op < 0.4:
                body[pos] = rng.randrange(256)
            elif op < 0.7:
                del body[pos:pos + rng.randint(1, 30)]
            else:
                body[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        server.script([Reply(body=bytes(body), mode=rng.choice(["length", "chunked", "close"]))])
        checker = StreamChecker()
        for e in pi_min.stream("openai", "hi", base_url=server.url, api_key="k", timeout=5, max_retries=0):
            checker.feed(e)
        msg = checker.finish()
        assert "unexpected" not in (msg.get("errorMessage") or ""), msg.get("errorMessage")


# -- handoff ----------------------------------------------------------------------------------

REASONING = {"id": "rs_abc", "type": "reasoning", "summary": [{"type": "summary_text", "text": "Plan."}],
             "encrypted_content": "gAAAA-secret-reasoning"}


def responses_turn(model="gpt-5.4"):
    return {"role": "assistant", "api": "openai-responses", "provider": "openai", "model": model,
            "content": [{"type": "thinking", "thinking": "Plan.", "thinkingSignature": json.dumps(REASONING)},
                        {"type": "text", "text": "Looking.", "textSignature": "msg_abc"},
                        {"type": "toolCall", "id": "call_abc|fc_abc", "name": "look", "arguments": {"q": "x"}}],
            "stopReason": "toolUse", "usage": {}, "timestamp": 1}


def conversation(turn):
    call_id = next(b["id"] for b in turn["content"] if b["type"] == "toolCall")
    return {"messages": [{"role": "user", "content": "go"}, turn,
                         {"role": "toolResult", "toolCallId": call_id, "toolName": "look",
                          "content": [{"type": "text", "text": "found"}], "isError": False},
                         {"role": "user", "content": "and now?"}], "tools": TOOLS}


ANTHROPIC_DONE = b"".join(b"event: %s\ndata: %s\n\n" % (d["type"].encode(), json.dumps(d).encode()) for d in [
    {"type": "message_start", "message": {"usage": {"input_tokens": 5}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
    {"type": "message_stop"}])


def test_a_responses_turn_continues_on_completions_and_anthropic(server):
    ctx = conversation(responses_turn())
    server.script([sse(CHAT), sse(ANTHROPIC_DONE)])
    assert pi_min.complete("groq", ctx, api_key="k", base_url=server.url + "/v1", timeout=5)["stopReason"] == "stop"
    oc = server.requests[0].json["messages"]
    assert oc[1]["content"] == "Plan.\n\nLooking."  # foreign thinking became text
    assert oc[1]["tool_calls"][0]["id"] == "call_abc" and oc[2]["tool_call_id"] == "call_abc"
    assert pi_min.complete("anthropic/claude-sonnet-4-5", ctx, api_key="k", base_url=server.url,
                           timeout=5)["stopReason"] == "stop"
    am = server.requests[1].json["messages"]
    assert am[1]["content"] == [{"type": "text", "text": "Plan."}, {"type": "text", "text": "Looking."},
                                {"type": "tool_use", "id": "call_abc_fc_abc", "name": "look", "input": {"q": "x"}}]
    assert am[2]["content"][0]["tool_use_id"] == "call_abc_fc_abc"
    for req in server.requests:
        assert "secret-reasoning" not in json.dumps(req.json) and "msg_abc" not in json.dumps(req.json)


def test_completions_and_anthropic_turns_continue_on_responses(server):
    anthropic = {"role": "assistant", "api": "anthropic-messages", "provider": "anthropic",
                 "model": "claude-sonnet-4-5", "stopReason": "toolUse", "usage": {}, "timestamp": 1,
                 "content": [{"type": "thinking", "thinking": "Hmm.", "thinkingSignature": "SIG=="},
                             {"type": "toolCall", "id": "toolu_01A", "name": "look", "arguments": {"q": "y"}}]}
    completions = {"role": "assistant", "api": "openai-completions", "provider": "deepseek",
                   "model": "deepseek-reasoner", "stopReason": "toolUse", "usage": {}, "timestamp": 1,
                   "content": [{"type": "thinking", "thinking": "Think.", "thinkingSignature": "reasoning_content"},
                               {"type": "toolCall", "id": "call_abc|weird/id:1", "name": "look", "arguments": {}}]}
    for turn in (anthropic, completions):
        server.script([sse(rs_stream("ok"))])
        assert pi_min.complete("openai", conversation(turn), api_key="k", base_url=server.url + "/v1",
                               timeout=5)["stopReason"] == "stop"
    first, second = (r.json["input"] for r in server.requests)
    import hashlib
    made_up = "fc_" + hashlib.sha256(b"toolu_01A").hexdigest()[:24]
    assert first[1:4] == [
        {"role": "assistant", "content": "Hmm."},  # foreign thinking: text, never a reasoning item
        {"type": "function_call", "call_id": "toolu_01A", "name": "look", "arguments": '{"q": "y"}', "id": made_up},
        {"type": "function_call_output", "call_id": "toolu_01A", "output": "found"}]
    assert "SIG==" not in json.dumps(first)
    assert second[2] == {"type": "function_call", "call_id": "call_abc", "name": "look", "arguments": "{}",
                         "id": "fc_weird_id_1"}
    assert second[3]["call_id"] == "call_abc"


def test_another_responses_model_gets_no_reasoning_and_no_item_ids(server):
    server.script([sse(rs_stream("ok")), sse(rs_stream("ok"))])
    ctx = conversation(responses_turn("gpt-5"))
    pi_min.complete("openai/gpt-5.4", ctx, api_key="k", base_url=server.url + "/v1", timeout=5)
    sent = server.requests[0].json["input"]
    assert sent[1:5] == [{"role": "assistant", "content": "Plan."}, {"role": "assistant", "content": "Looking."},
                         {"type": "function_call", "call_id": "call_abc", "name": "look", "arguments": '{"q": "x"}'},
                         {"type": "function_call_output", "call_id": "call_abc", "output": "found"}]
    pi_min.complete("openai/gpt-5", ctx, api_key="k", base_url=server.url + "/v1", timeout=5)
    same = server.requests[1].json["input"]
    assert same[1] == REASONING and same[2]["id"] == "msg_abc" and same[3]["id"] == "fc_abc"


def test_a_streamed_turn_goes_back_to_the_same_model_byte_for_byte(server):
    server.script([sse(rs_stream("Looking.", calls=[("call_9", "fc_9", "look", '{"q": "z"}')])),
                   sse(rs_stream("done"))])
    ctx = {"messages": [{"role": "user", "content": "go"}], "tools": TOOLS}
    turn = pi_min.complete("openai", ctx, api_key="k", base_url=server.url + "/v1", timeout=5)
    assert turn["content"][1]["id"] == "call_9|fc_9"
    ctx["messages"] += [turn, {"role": "toolResult", "toolCallId": "call_9|fc_9", "toolName": "look",
                               "content": [{"type": "text", "text": "r"}], "isError": False}]
    pi_min.complete("openai", ctx, api_key="k", base_url=server.url + "/v1", timeout=5)
    assert server.requests[1].json["input"][1:] == [
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Looking.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_9", "name": "look", "arguments": '{"q": "z"}', "id": "fc_9"},
        {"type": "function_call_output", "call_id": "call_9", "output": "r"}]


# -- the CLI presets --------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "azure", "sakana", "codex"])
def test_cli_presets_stream_against_loopback(provider, isolated_env, server, monkeypatch, capsys):
    monkeypatch.setattr(pi_min, "_TOKENS", {})
    if provider == "azure":  # the environment alone
        monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", server.url)
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-key-0123456789")
        server.script([sse(CHAT.replace(b'"Hello"', b'"Hi there"'))])
    else:
        base = {"openai": "/v1", "sakana": "/v1", "codex": "/backend-api/codex/responses"}[provider]
        write(isolated_env, "models.json", {"providers": {provider: {"baseUrl": server.url + base}}})
        if provider == "codex":  # auth.json alone
            write(isolated_env, "auth.json", {"openai-codex": {"type": "oauth", "access": codex_token(),
                                                               "refresh": "r", "expires": 4102444800000}})
        else:
            monkeypatch.setenv({"openai": "OPENAI_API_KEY", "sakana": "SAKANA_API_KEY"}[provider], "cli-key-0123456789")
        server.script([sse(rs_stream("Hi there"))])
    assert pi_min.main(["--provider", provider, "-u", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == "Hi there\n" and "cli-key" not in out.err
    assert len(server.requests) == 1
