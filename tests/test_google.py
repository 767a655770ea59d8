"""Google beyond the fixture corpus: request shapes per model generation, Vertex AI URL
forms, Claude on Vertex, every Google Cloud credential source (an access token, a
models.json command, Application Default Credentials and their cached refresh, the
metadata server, the service-account refusal), handoff both ways, and the CLI."""

import json
import threading
import time
import urllib.parse

import pytest

import pi_min
from invariants import StreamChecker
from loopback import Loopback, Reply

M25, M3 = "gemini-2.5-flash", "gemini-3-flash-preview"
CLAUDE = "claude-sonnet-4-5@20250929"
SIG = "CiQBjz1rX3Y2dGhvdWdodC1zaWduYXR1cmUtZm9yLXRlc3Rz"  # base64, as Google's are
GOOGLE_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "GCE_METADATA_HOST", "GCE_METADATA_ROOT",
               "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "VERTEX_PROJECT", "GOOGLE_CLOUD_LOCATION", "VERTEX_LOCATION",
               "GOOGLE_CLOUD_QUOTA_PROJECT", "K_SERVICE", "FUNCTION_TARGET")


@pytest.fixture(autouse=True)
def no_google_cloud(monkeypatch, tmp_path):
    """Nothing of this machine's Google Cloud setup may reach a test (not even being a GCE VM)."""
    for name in GOOGLE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pi_min, "_GC_DMI", str(tmp_path / "no-dmi"))
    monkeypatch.setattr(pi_min, "_TOKENS", {})


def sse(*chunks, model=M25, rid="rid-test"):
    out = b""
    for parts, finish, usage in chunks:
        cand = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        out += b"data: " + json.dumps({"candidates": [cand], "usageMetadata": usage, "modelVersion": model,
                                       "responseId": rid}).encode() + b"\r\n\r\n"
    return out


TEXT = sse(([{"text": "Hi there"}], "STOP", {"promptTokenCount": 3, "candidatesTokenCount": 2}))


def reply(body=TEXT):
    return Reply(headers={"Content-Type": "text/event-stream"}, body=body)


def token_reply(token="ya29.fresh-token", expires_in=3599):
    return Reply(200, {"Content-Type": "application/json"},
                 json.dumps({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}).encode())


def write(agent_dir, name, data):
    (agent_dir / name).write_text(json.dumps(data))


def vertex_at(agent_dir, server, monkeypatch, project="proj-1", location="us-central1", **provider):
    """Vertex's base URL on the loopback server through models.json (so this machine's
    credentials may go there), project and location from the environment."""
    if project:
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    if location:
        monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", location)
    write(agent_dir, "models.json", {"providers": {"google-vertex": dict({"baseUrl": server.url}, **provider)}})


def request_of(model, context="hi", **options):
    """(url, headers, body) exactly as stream() would send them, without sending."""
    o = pi_min._Options(**options)
    pi_min._prepare(model, o)
    return pi_min._build_request(model, pi_min._context(context), o)


def body_for(model, context="hi", **options):
    return request_of(model, context, api_key="k", **options)[2]


# -- request shapes -------------------------------------------------------------------------

@pytest.mark.parametrize("model_id, level, config", [
    ("gemini-2.5-pro", "minimal", {"thinkingBudget": 128, "includeThoughts": True}),
    ("gemini-2.5-pro", "high", {"thinkingBudget": 32768, "includeThoughts": True}),
    ("gemini-2.5-pro", "off", {"thinkingBudget": 128, "includeThoughts": False}),  # Pro cannot stop thinking
    ("gemini-2.5-flash", "xhigh", {"thinkingBudget": 24576, "includeThoughts": True}),
    ("gemini-2.5-flash", "off", {"thinkingBudget": 0, "includeThoughts": False}),
    ("gemini-2.5-flash-lite", "minimal", {"thinkingBudget": 512, "includeThoughts": True}),
    ("gemini-3-flash-preview", "minimal", {"thinkingLevel": "MINIMAL", "includeThoughts": True}),
    ("gemini-3-flash-preview", "off", {"thinkingLevel": "MINIMAL", "includeThoughts": False}),
    ("gemini-3-pro-preview", "minimal", {"thinkingLevel": "LOW", "includeThoughts": True}),
    ("gemini-3-pro-preview", "medium", {"thinkingLevel": "HIGH", "includeThoughts": True}),  # 3 Pro: low or high
    ("gemini-3.1-pro-preview", "medium", {"thinkingLevel": "MEDIUM", "includeThoughts": True}),
    ("gemini-flash-latest", "high", {"includeThoughts": True}),  # a generation we cannot tell: thoughts only
    ("gemini-flash-latest", "off", None),
])
def test_thinking_config_per_model_generation(model_id, level, config):
    provider = "google-vertex" if model_id == "gemini-3-pro-preview" else "google"
    model = pi_min.get_model(provider, model_id)
    if provider == "google-vertex":
        model["baseUrl"] = "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1"
    body = body_for(model, reasoning=level)
    assert body.get("generationConfig", {}).get("thinkingConfig") == config


def test_thinking_is_left_alone_unless_asked_or_possible():
    assert "generationConfig" not in body_for(pi_min.get_model("google", M25))
    assert "generationConfig" not in body_for(pi_min.get_model("google", "gemini-2.0-flash"), reasoning="high")
    body = body_for(pi_min.get_model("google", M25), reasoning="high", max_tokens=1000)
    assert body["generationConfig"] == {"maxOutputTokens": 1000,  # the budget leaves half to the answer
                                        "thinkingConfig": {"thinkingBudget": 500, "includeThoughts": True}}


def test_tool_choice_forms():
    model = pi_min.get_model("google", M25)
    ctx = {"messages": [{"role": "user", "content": "x"}],
           "tools": [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]}
    for choice, sent in (("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"}),
                         ("look", {"mode": "ANY", "allowedFunctionNames": ["look"]}),
                         ({"type": "function", "function": {"name": "look"}},
                          {"mode": "ANY", "allowedFunctionNames": ["look"]})):
        assert body_for(model, ctx, tool_choice=choice)["toolConfig"] == {"functionCallingConfig": sent}
    assert "toolConfig" not in body_for(model, ctx)
    assert "tools" not in body_for(model, {"messages": [{"role": "user", "content": "x"}], "tools": []})


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNg+M/AAAADAQEAGN2NsAAAAABJRU5ErkJggg=="


def image_result_context():
    return {"messages": [
        {"role": "user", "content": "Take a screenshot"},
        {"role": "assistant", "api": "openai-completions", "provider": "groq", "model": "m",
         "content": [{"type": "toolCall", "id": "c1", "name": "shot", "arguments": {}}], "stopReason": "toolUse"},
        {"role": "toolResult", "toolCallId": "c1", "toolName": "shot", "isError": False,
         "content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]}]}


def test_tool_result_images_go_inside_the_response_for_gemini_3_and_after_it_before():
    picture = {"inlineData": {"mimeType": "image/png", "data": PNG}}
    body = body_for(pi_min.get_model("google", M3), image_result_context())
    assert body["contents"][-1] == {"role": "user", "parts": [{"functionResponse": {
        "name": "shot", "response": {"output": "(see attached image)"}, "parts": [picture]}}]}
    body = body_for(pi_min.get_model("google", M25), image_result_context())
    assert body["contents"][-1] == {"role": "user", "parts": [
        {"functionResponse": {"name": "shot", "response": {"output": "(see attached image)"}}},
        {"text": "Tool result image:"}, picture]}
    text_only = pi_min.get_model("google", M25, input=["text"])
    assert "inlineData" not in json.dumps(body_for(text_only, image_result_context()))


def gemini_turn(model_id=M3, provider="google", api="google-generative-ai"):
    return {"role": "assistant", "api": api, "provider": provider, "model": model_id, "stopReason": "toolUse",
            "content": [{"type": "thinking", "thinking": "plan", "thinkingSignature": SIG},
                        {"type": "text", "text": "On it.", "textSignature": SIG},
                        {"type": "toolCall", "id": "a", "name": "f", "arguments": {"x": 1}, "thoughtSignature": SIG},
                        {"type": "toolCall", "id": "b", "name": "f", "arguments": {"x": 2}}]}


def results_after(turn):
    return [{"role": "user", "content": "go"}, turn] + [
        {"role": "toolResult", "toolCallId": i, "toolName": "f", "content": [{"type": "text", "text": "ok"}],
         "isError": False} for i in ("a", "b")]


def test_signatures_go_back_only_to_the_model_that_made_them():
    own = body_for(pi_min.get_model("google", M3), {"messages": results_after(gemini_turn())})
    assert own["contents"][1]["parts"] == [
        {"thought": True, "text": "plan", "thoughtSignature": SIG}, {"text": "On it.", "thoughtSignature": SIG},
        {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": SIG},
        {"functionCall": {"name": "f", "args": {"x": 2}}}]  # the parallel call stays unsigned
    # another Gemini 3 model: thinking as text, no signature of the other's, the sentinel on the first call
    other = body_for(pi_min.get_model("google", "gemini-3.1-pro-preview"), {"messages": results_after(gemini_turn())})
    assert other["contents"][1]["parts"] == [
        {"text": "plan"}, {"text": "On it."},
        {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "skip_thought_signature_validator"},
        {"functionCall": {"name": "f", "args": {"x": 2}}}]
    # Gemini 2.5 validates nothing: no sentinel
    older = body_for(pi_min.get_model("google", M25), {"messages": results_after(gemini_turn())})
    assert "thoughtSignature" not in json.dumps(older)
    # a same-model signature that is not base64 (another service's opaque JSON) is not sent
    turn = gemini_turn()
    turn["content"][2]["thoughtSignature"] = '{"extra_content": {"google": {}}}'
    sent = body_for(pi_min.get_model("google", M3), {"messages": results_after(turn)})
    assert sent["contents"][1]["parts"][2] == {"functionCall": {"name": "f", "args": {"x": 1}}}


def test_vertex_never_gets_the_sentinel():
    model = pi_min.get_model("google-vertex", M3)
    model["baseUrl"] = "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1"
    body = body_for(model, {"messages": results_after(gemini_turn(provider="google"))})
    assert "skip_thought_signature_validator" not in json.dumps(body)
    assert "thoughtSignature" not in json.dumps(body)


def test_a_parallel_call_without_a_signature_stays_without_one(server):
    server.script([reply(sse(([{"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": SIG},
                               {"functionCall": {"name": "f", "args": {"x": 2}}}], "STOP", {}), model=M3))])
    msg = pi_min.complete(f"google/{M3}", "go", api_key="k", base_url=server.url)
    first, second = msg["content"]
    assert first["thoughtSignature"] == SIG and "thoughtSignature" not in second
    assert first["id"] == "call_rid-test_1" and second["id"] == "call_rid-test_2" and msg["stopReason"] == "toolUse"


def test_a_repeated_call_id_is_replaced():
    b = pi_min._Builder(pi_min.get_model("google", M25))
    tr = pi_min._GTranslator(b, None)
    call = {"functionCall": {"id": "same", "name": "f", "args": {}}}
    tr.event("message", json.dumps({"candidates": [{"content": {"parts": [call, call]}, "finishReason": "STOP"}]}))
    ids = [block["id"] for block in b.content]
    assert ids[0] == "same" and ids[1] != "same" and ids[1]


# -- Vertex URL forms ---------------------------------------------------------------------------

@pytest.mark.parametrize("location, host", [
    ("us-east5", "https://us-east5-aiplatform.googleapis.com"),
    ("global", "https://aiplatform.googleapis.com"),
    ("eu", "https://aiplatform.eu.rep.googleapis.com"),
])
def test_vertex_urls_follow_the_location(location, host, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-proj")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", location)
    url, headers, _ = request_of(pi_min.get_model("vertexai", M25), api_key="ya29.token")
    assert url == (f"{host}/v1/projects/my-proj/locations/{location}/publishers/google/models/{M25}"
                   ":streamGenerateContent?alt=sse")
    assert headers["Authorization"] == "Bearer ya29.token" and "x-goog-api-key" not in headers
    url, _, body = request_of(pi_min.get_model("vertexai", CLAUDE), api_key="ya29.token")
    assert url == (f"{host}/v1/projects/my-proj/locations/{location}/publishers/anthropic/models/{CLAUDE}"
                   ":streamRawPredict")
    assert body["anthropic_version"] == "vertex-2023-10-16" and "model" not in body


def test_credentials_from_the_environment_go_to_googles_own_hosts(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-proj")
    monkeypatch.setenv("VERTEX_LOCATION", "asia-northeast1")
    monkeypatch.setenv("GOOGLE_CLOUD_ACCESS_TOKEN", "ya29.env")
    url, headers, _ = request_of(pi_min.get_model("vertexai", M25))
    assert url.startswith("https://asia-northeast1-aiplatform.googleapis.com/v1/projects/my-proj/locations/"
                          "asia-northeast1/publishers/google/")
    assert headers["Authorization"] == "Bearer ya29.env"


def test_vertex_base_url_overrides_keep_the_project_path(isolated_env, monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "my-proj")
    model = pi_min.get_model("vertexai", M25)
    url = request_of(model, api_key="t", base_url="http://10.0.0.7:8080/vertex/")[0]
    assert url == ("http://10.0.0.7:8080/vertex/v1/projects/my-proj/locations/us-central1/publishers/google/models/"
                   f"{M25}:streamGenerateContent?alt=sse")
    url = request_of(model, api_key="t", base_url="https://psc.example.internal/v1beta1")[0]
    assert url.startswith("https://psc.example.internal/v1beta1/projects/my-proj/")
    # pi_agent_rust writes the project and location into the base URL itself
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT")
    write(isolated_env, "models.json", {"providers": {"google-vertex": {
        "baseUrl": "https://europe-west4-aiplatform.googleapis.com/v1/projects/rust-proj/locations/europe-west4"}}})
    url = request_of(pi_min.get_model("vertexai", M25), api_key="t")[0]
    assert url == ("https://europe-west4-aiplatform.googleapis.com/v1/projects/rust-proj/locations/europe-west4/"
                   f"publishers/google/models/{M25}:streamGenerateContent?alt=sse")
    # or names them as fields of the provider
    write(isolated_env, "models.json", {"providers": {"google-vertex": {"project": "cfg-proj", "location": "global"}}})
    url = request_of(pi_min.get_model("vertexai", M25), api_key="t")[0]
    assert url.startswith("https://aiplatform.googleapis.com/v1/projects/cfg-proj/locations/global/publishers/")


def test_an_api_key_without_a_project_is_express_mode(monkeypatch):
    monkeypatch.setenv("GOOGLE_CLOUD_API_KEY", "AIza" + "x" * 35)
    url, headers, _ = request_of(pi_min.get_model("vertexai", M25))
    assert url == f"https://aiplatform.googleapis.com/v1/publishers/google/models/{M25}:streamGenerateContent?alt=sse"
    assert headers["x-goog-api-key"] == "AIza" + "x" * 35 and "Authorization" not in headers
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")  # a project: the project's path, the key still as a key
    url, headers, _ = request_of(pi_min.get_model("vertexai", M25))
    assert "/projects/p/locations/us-central1/" in url and headers["x-goog-api-key"].startswith("AIza")


def test_vertex_configuration_problems_are_config_errors(monkeypatch):
    with pytest.raises(pi_min.ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        pi_min.stream(pi_min.get_model("vertexai", M25), "hi", api_key="ya29.token")
    with pytest.raises(pi_min.ConfigError, match="GOOGLE_CLOUD_PROJECT"):  # no express mode for Claude
        pi_min.stream(pi_min.get_model("vertexai", CLAUDE), "hi", api_key="AIza" + "x" * 35)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "us-central1/../../evil")
    with pytest.raises(pi_min.ConfigError, match="not a Vertex AI location"):
        pi_min.stream(pi_min.get_model("vertexai", M25), "hi", api_key="ya29.token")


def test_claude_on_vertex_streams_through_the_anthropic_translator(isolated_env, server, monkeypatch):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_CLOUD_ACCESS_TOKEN", "ya29.env-token")
    events = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in [
        {"type": "message_start", "message": {"usage": {"input_tokens": 4, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Claude here"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
        {"type": "message_stop"}])
    server.script([reply(events)])
    msg = pi_min.complete(f"vertexai/{CLAUDE}", "hi")
    assert msg["content"] == [{"type": "text", "text": "Claude here"}] and msg["stopReason"] == "stop"
    assert (msg["api"], msg["provider"], msg["usage"]["input"]) == ("google-vertex", "google-vertex", 4)
    req = server.requests[0]
    assert req.path == ("/v1/projects/proj-1/locations/us-central1/publishers/anthropic/models/"
                        f"{CLAUDE}:streamRawPredict")
    assert req.headers["authorization"] == "Bearer ya29.env-token" and "anthropic-version" not in req.headers
    assert "model" not in req.json and req.json["anthropic_version"] == "vertex-2023-10-16"
    assert req.json["messages"][0]["content"][0]["text"] == "hi" and req.json["stream"] is True


# -- credentials ---------------------------------------------------------------------------------

def test_an_access_token_from_the_environment_or_a_models_json_command(isolated_env, server, monkeypatch):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_CLOUD_ACCESS_TOKEN", "ya29.from-env")
    server.script([reply(), reply()])
    assert pi_min.complete("vertexai", "hi")["stopReason"] == "stop"
    assert server.requests[0].headers["authorization"] == "Bearer ya29.from-env"
    monkeypatch.delenv("GOOGLE_CLOUD_ACCESS_TOKEN")
    vertex_at(isolated_env, server, monkeypatch, apiKey="!echo ya29.from-command")
    assert pi_min.complete("vertexai", "hi")["stopReason"] == "stop"
    assert server.requests[1].headers["authorization"] == "Bearer ya29.from-command"


def adc_file(tmp_path, server, **extra):
    info = dict({"type": "authorized_user", "client_id": "123-abc.apps.googleusercontent.com",
                 "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty", "refresh_token": "1//0refresh-token-secret",
                 "token_uri": server.url + "/token"}, **extra)
    path = tmp_path / "adc.json"
    path.write_text(json.dumps(info))
    return path


def test_adc_user_credentials_are_refreshed_once_and_cached(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, server, quota_project_id="billing")))
    server.script([token_reply(), reply(), reply()])
    assert pi_min.complete("vertexai", "one")["stopReason"] == "stop"
    assert pi_min.complete("vertexai", "two")["stopReason"] == "stop"
    token_req, first, second = server.requests
    assert token_req.method == "POST" and token_req.path == "/token"
    assert token_req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert dict(urllib.parse.parse_qsl(token_req.body.decode())) == {
        "grant_type": "refresh_token", "client_id": "123-abc.apps.googleusercontent.com",
        "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty", "refresh_token": "1//0refresh-token-secret"}
    for req in (first, second):
        assert req.headers["authorization"] == "Bearer ya29.fresh-token"
        assert req.headers["x-goog-user-project"] == "billing"


def test_a_token_close_to_expiry_is_fetched_again(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, server)))
    server.script([token_reply("ya29.short", expires_in=120), reply(), token_reply("ya29.next"), reply()])
    pi_min.complete("vertexai", "one")
    pi_min.complete("vertexai", "two")
    assert [r.path for r in server.requests] == ["/token", server.requests[1].path, "/token",
                                                 server.requests[3].path]
    assert server.requests[3].headers["authorization"] == "Bearer ya29.next"


def test_the_gcloud_default_adc_file_is_found(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    gcloud = tmp_path / "home" / ".config" / "gcloud"
    gcloud.mkdir(parents=True)
    (gcloud / "application_default_credentials.json").write_text(adc_file(tmp_path, server).read_text())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    server.script([token_reply(), reply()])
    assert pi_min.complete("vertexai", "hi")["stopReason"] == "stop"
    assert server.requests[0].path == "/token"


def test_a_refused_refresh_is_an_auth_error_without_secrets(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, server)))
    server.script([Reply(400, {"Content-Type": "application/json"}, json.dumps({
        "error": "invalid_grant", "error_description": "Token has been expired or revoked: 1//0refresh-token-secret "
                                                       "(client d-FL95Q19q7MQmFpd7hHD0Ty)"}).encode())])
    events = list(pi_min.stream("vertexai", "hi"))
    assert events[0]["type"] == "start" and events[-1]["type"] == "error"
    msg = events[-1]["error"]
    assert (msg["errorKind"], msg["errorStatus"]) == ("auth", 400)
    assert "application-default login" in msg["errorMessage"] and "token endpoint" in msg["errorMessage"]
    assert "refresh-token-secret" not in msg["errorMessage"] and "d-FL95Q19q7MQmFpd7hHD0Ty" not in msg["errorMessage"]


def test_the_metadata_server(isolated_env, server, monkeypatch):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GCE_METADATA_HOST", server.url.partition("://")[2])
    server.script([token_reply("ya29.metadata"), reply(), reply()])
    checker = StreamChecker(secrets=("ya29.metadata",))
    for event in pi_min.stream("vertexai", "one"):
        checker.feed(event)
    assert checker.finish()["stopReason"] == "stop"
    assert pi_min.complete("vertexai", "two")["stopReason"] == "stop"  # the cached token
    token_req, first, second = server.requests
    assert token_req.method == "GET"
    assert token_req.path == "/computeMetadata/v1/instance/service-accounts/default/token"
    assert token_req.headers["metadata-flavor"] == "Google"
    assert first.headers["authorization"] == second.headers["authorization"] == "Bearer ya29.metadata"


def test_a_service_account_key_is_a_config_error_naming_the_alternatives(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    key = tmp_path / "sa.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "abc",
                               "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
                               "client_email": "bot@p.iam.gserviceaccount.com"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("vertexai", "hi")
    text = str(info.value)
    assert "service-account" in text and "GOOGLE_CLOUD_ACCESS_TOKEN" in text
    assert "application-default login" in text and "PRIVATE KEY" not in text
    assert server.requests == []
    assert pi_min.main(["--provider", "vertexai", "hi"]) == 2


def test_no_credentials_at_all_names_every_choice(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("vertexai", "hi")
    for choice in ("GOOGLE_CLOUD_API_KEY", "GOOGLE_CLOUD_ACCESS_TOKEN", "gcloud auth print-access-token",
                   "application-default login", "metadata server"):
        assert choice in str(info.value)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(pi_min.ConfigError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        pi_min.stream("vertexai", "hi")
    assert server.requests == []


def test_machine_credentials_stay_off_other_hosts(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, server)))
    server.script([reply()])
    with Loopback() as other:
        other.script([reply()])
        assert pi_min.complete("vertexai", "hi", base_url=other.url)["stopReason"] == "stop"
        assert "authorization" not in other.requests[0].headers
    assert server.requests == []  # not even a token was fetched


# -- handoff ----------------------------------------------------------------------------------

def test_a_gemini_turn_continues_on_completions_and_anthropic_and_back(server):
    server.script([reply(sse(
        ([{"text": "weighing", "thought": True}], None, {}),
        ([{"text": "Looking.", "thoughtSignature": SIG}], None, {}),
        ([{"functionCall": {"name": "look", "args": {"q": "x"}}, "thoughtSignature": SIG}], "STOP",
         {"promptTokenCount": 5, "candidatesTokenCount": 4}), model=M3))])
    ctx = {"messages": [{"role": "user", "content": "go"}],
           "tools": [{"name": "look", "description": "d", "parameters": {"type": "object", "properties": {}}}]}
    turn = pi_min.complete(f"google/{M3}", ctx, api_key="k", base_url=server.url)
    assert turn["stopReason"] == "toolUse"
    call_id = turn["content"][2]["id"]
    ctx["messages"] += [turn, {"role": "toolResult", "toolCallId": call_id, "toolName": "look",
                               "content": [{"type": "text", "text": "found"}], "isError": False}]
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}'
                              b'\n\ndata: [DONE]\n\n')])
    assert pi_min.complete("groq", ctx, api_key="k", base_url=server.url + "/v1")["stopReason"] == "stop"
    oc = server.requests[1].json["messages"]
    assert oc[1]["content"] == "weighing\n\nLooking." and oc[1]["tool_calls"][0]["id"] == call_id
    assert oc[2] == {"role": "tool", "tool_call_id": call_id, "content": "found"}
    anthropic = pi_min.get_model("anthropic", "claude-sonnet-4-5")
    server.script([Reply(body=b'event: message_stop\ndata: {"type":"message_stop"}\n\n')])
    assert pi_min.complete(anthropic, ctx, api_key="k", base_url=server.url)["stopReason"] == "stop"
    am = server.requests[2].json["messages"]
    assert am[1]["content"][0] == {"type": "text", "text": "weighing"}  # foreign thinking became text
    assert am[1]["content"][2]["type"] == "tool_use" and am[2]["content"][0]["tool_use_id"] == am[1]["content"][2]["id"]
    for req in server.requests[1:]:
        assert SIG not in req.body.decode()  # Google's signatures never leave Google
    server.script([reply()])
    assert pi_min.complete(f"google/{M3}", ctx, api_key="k", base_url=server.url)["stopReason"] == "stop"
    back = server.requests[3].json["contents"]
    assert back[1]["parts"] == [{"thought": True, "text": "weighing"}, {"text": "Looking.", "thoughtSignature": SIG},
                                {"functionCall": {"name": "look", "args": {"q": "x"}}, "thoughtSignature": SIG}]
    assert back[2]["parts"] == [{"functionResponse": {"name": "look", "response": {"output": "found"}}}]


def test_an_anthropic_conversation_continues_on_gemini(server):
    ctx = {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "api": "anthropic-messages", "provider": "anthropic", "model": "claude-sonnet-4-5",
         "content": [{"type": "thinking", "thinking": "", "thinkingSignature": "EqQB", "redacted": True},
                     {"type": "thinking", "thinking": "hmm", "thinkingSignature": "EqQBsig"},
                     {"type": "toolCall", "id": "toolu_1", "name": "look", "arguments": {"q": 1}}],
         "stopReason": "toolUse"},
        {"role": "user", "content": "never mind"}]}  # the call got no result: a synthetic error result
    server.script([reply()])
    assert pi_min.complete(f"google/{M25}", ctx, api_key="k", base_url=server.url)["stopReason"] == "stop"
    contents = server.requests[0].json["contents"]
    assert contents[1] == {"role": "model", "parts": [{"text": "hmm"},
                                                      {"functionCall": {"name": "look", "args": {"q": 1}}}]}
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "look", "response": {"error": "No result provided"}}}, {"text": "never mind"}]}


# -- errors ------------------------------------------------------------------------------------

def test_a_retry_delay_beyond_the_limit_fails_at_once(server):
    body = json.dumps({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED",
                                 "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                              "retryDelay": "3600s"}]}}).encode()
    server.script([Reply(429, {"Content-Type": "application/json"}, body)])
    started = time.monotonic()
    msg = pi_min.complete(f"google/{M25}", "hi", api_key="k", base_url=server.url)
    assert time.monotonic() - started < 5 and len(server.requests) == 1
    assert msg["errorKind"] == "rate_limit" and "3600 s" in msg["errorMessage"]


def test_an_overload_inside_the_stream_before_any_content_is_retried(server):
    overload = b'data: {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}\r\n\r\n'
    server.script([reply(overload), reply()])
    msg = pi_min.complete(f"google/{M25}", "hi", api_key="k", base_url=server.url)
    assert msg["stopReason"] == "stop" and len(server.requests) == 2


def test_abort_while_fetching_a_token(isolated_env, server, monkeypatch, tmp_path):
    vertex_at(isolated_env, server, monkeypatch)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc_file(tmp_path, server)))
    server.script([Reply(200, {"Content-Type": "application/json"}, b"{", hang=True)])
    signal = threading.Event()
    threading.Timer(0.2, signal.set).start()
    started = time.monotonic()
    msg = pi_min.complete("vertexai", "hi", signal=signal, timeout=30)
    assert msg["stopReason"] == "aborted" and time.monotonic() - started < 5


# -- the CLI -------------------------------------------------------------------------------------

def test_cli_gemini_with_a_key(isolated_env, server, monkeypatch, capsys):
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-cli-key-0123456789")
    write(isolated_env, "models.json", {"providers": {"google": {"baseUrl": server.url + "/v1beta"}}})
    server.script([reply()])
    assert pi_min.main(["--provider", "gemini", "-u", "hi"]) == 0
    out, err = capsys.readouterr()
    assert out == "Hi there\n" and "3 in" in err
    req = server.requests[0]
    assert req.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert req.headers["x-goog-api-key"] == "AIza-cli-key-0123456789"


@pytest.mark.parametrize("model_id", [M25, CLAUDE])
def test_cli_vertex_with_project_location_and_token_from_env(model_id, isolated_env, server, monkeypatch, capsys):
    vertex_at(isolated_env, server, monkeypatch, location="europe-west1")
    monkeypatch.setenv("GOOGLE_CLOUD_ACCESS_TOKEN", "ya29.cli-token")
    if model_id == CLAUDE:
        server.script([reply(b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                             b'"content_block":{"type":"text","text":"Hi there"}}\n\n'
                             b'event: message_stop\ndata: {"type":"message_stop"}\n\n')])
    else:
        server.script([reply()])
    assert pi_min.main(["--provider", "vertexai", "-m", model_id, "hi"]) == 0
    assert capsys.readouterr().out == "Hi there\n"
    req = server.requests[0]
    publisher, method = ("anthropic", "streamRawPredict") if model_id == CLAUDE else \
        ("google", "streamGenerateContent?alt=sse")
    assert req.path == f"/v1/projects/proj-1/locations/europe-west1/publishers/{publisher}/models/{model_id}:{method}"
    assert req.headers["authorization"] == "Bearer ya29.cli-token"


def test_cli_error_line_for_a_bad_key(isolated_env, server, monkeypatch, capsys):
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-wrong-key-0123456789")
    write(isolated_env, "models.json", {"providers": {"google": {"baseUrl": server.url}}})
    server.script([Reply(400, {"Content-Type": "application/json"}, json.dumps({"error": {
        "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}},
        indent=2).encode())])
    assert pi_min.main(["--provider", "google", "hi"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 400" in err and "API key not valid" in err and "AIza-wrong-key" not in err
    assert len(err.strip().splitlines()) == 1


def test_google_cloud_is_recognised_for_the_metadata_server(monkeypatch, tmp_path):
    assert pi_min._gc_metadata_host() is None
    dmi = tmp_path / "product_name"
    dmi.write_text("Google Compute Engine\n")
    monkeypatch.setattr(pi_min, "_GC_DMI", str(dmi))
    assert pi_min._gc_metadata_host() == "metadata.google.internal"
    monkeypatch.setattr(pi_min, "_GC_DMI", str(tmp_path / "none"))
    monkeypatch.setenv("K_SERVICE", "my-cloud-run-service")
    assert pi_min._gc_metadata_host() == "metadata.google.internal"
    monkeypatch.setenv("GCE_METADATA_HOST", "http://169.254.169.254/")
    assert pi_min._gc_metadata_host() == "169.254.169.254"
