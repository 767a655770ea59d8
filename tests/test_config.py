"""Credentials precedence, auth.json / models.json / settings.json, key scoping, headers."""

import json
import os
import threading

import pytest

import pi_min
from loopback import Reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OK = (b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}\n\n'
      b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
      b"data: [DONE]\n\n")


def write(agent_dir, name, data):
    (agent_dir / name).write_text(json.dumps(data), encoding="utf-8")


def groq_at(agent_dir, server, **extra):
    write(agent_dir, "models.json", {"providers": {"groq": dict({"baseUrl": server.url + "/v1"}, **extra)}})


def auth_of(server, n=0):
    return server.requests[n].headers.get("authorization")


def run(server, *args, **kw):
    server.script([Reply(body=OK)])
    msg = pi_min.complete(*args, **kw)
    assert msg["stopReason"] == "stop", msg.get("errorMessage")
    return msg


def test_precedence_option_env_auth_json_models_json(isolated_env, server, monkeypatch):
    groq_at(isolated_env, server, apiKey="from-models-json")
    run(server, "groq", "hi")
    assert auth_of(server, 0) == "Bearer from-models-json"
    write(isolated_env, "auth.json", {"groq": {"type": "api_key", "key": "from-auth-json"}})
    run(server, "groq", "hi")
    assert auth_of(server, 1) == "Bearer from-auth-json"
    monkeypatch.setenv("GROQ_API_KEY", "from-env")
    run(server, "groq", "hi")
    assert auth_of(server, 2) == "Bearer from-env"
    run(server, "groq", "hi", api_key="from-option")
    assert auth_of(server, 3) == "Bearer from-option"


def test_env_keys_are_tried_in_table_order(isolated_env, server, monkeypatch):
    write(isolated_env, "models.json", {"providers": {"together": {"baseUrl": server.url}}})
    monkeypatch.setenv("TOGETHER_AI_API_KEY", "second")
    run(server, "togetherai", "hi")
    assert auth_of(server, 0) == "Bearer second"
    monkeypatch.setenv("TOGETHER_API_KEY", "first")
    run(server, "togetherai", "hi")
    assert auth_of(server, 1) == "Bearer first"


@pytest.mark.parametrize("entry, expected", [
    ({"type": "oauth", "access": "ts-token", "refresh": "r", "expires": 4102444800000}, "ts-token"),
    ({"type": "o_auth", "access_token": "rust-token", "expires": 4102444800000}, "rust-token"),
    ({"type": "oauth", "access": "stale", "expires": 1000}, "from-models-json"),
    ({"type": "api_key", "key": "plain"}, "plain"),
])
def test_auth_json_shapes_of_both_pis(isolated_env, server, entry, expected):
    groq_at(isolated_env, server, apiKey="from-models-json")
    write(isolated_env, "auth.json", {"groq": entry})
    run(server, "groq", "hi")
    assert auth_of(server) == "Bearer " + expected


def test_auth_json_entry_under_an_alias(isolated_env, server):
    write(isolated_env, "models.json", {"providers": {"moonshotai": {"baseUrl": server.url}}})
    write(isolated_env, "auth.json", {"kimi": {"type": "api_key", "key": "alias-key"}})
    run(server, "moonshotai", "hi")
    assert auth_of(server) == "Bearer alias-key"


def test_models_json_api_key_sources(isolated_env, server, monkeypatch, tmp_path):
    (isolated_env / "key.txt").write_text("from-file\n")
    monkeypatch.setenv("MY_SECRET_VAR", "from-bare-name")
    monkeypatch.setenv("OTHER", "from-env-prefix")
    monkeypatch.setenv("groqkey", "from-lowercase-name")
    monkeypatch.setenv("EMPTY_VAR", "")
    cases = [("!echo from-command", "from-command"), ("file:key.txt", "from-file"),
             ("env:OTHER", "from-env-prefix"), ("MY_SECRET_VAR", "from-bare-name"),
             ("literal-key-123", "literal-key-123"), ("groqkey", "from-lowercase-name"),
             # a bare name with no such variable, or an empty one, is the literal key (both pis)
             ("K_MODELS", "K_MODELS"), ("EMPTY_VAR", "EMPTY_VAR")]
    for n, (source, expected) in enumerate(cases):
        groq_at(isolated_env, server, apiKey=source)
        run(server, "groq", "hi")
        assert auth_of(server, n) == "Bearer " + expected, source


@pytest.mark.parametrize("api_key", ["env:MY_GROQ_KEY", "env: MY_GROQ_KEY"])
def test_models_json_env_api_key_that_is_unset_names_the_variable(isolated_env, server, monkeypatch, api_key):
    (isolated_env / "models.json").write_bytes(
        b'{"providers": {"groq": {"baseUrl": "%s", "apiKey": "%s"}}}' % (server.url.encode(), api_key.encode()))
    with pytest.raises(pi_min.ConfigError, match="MY_GROQ_KEY is not set"):
        pi_min.stream("groq", "hi")
    monkeypatch.setenv("MY_GROQ_KEY", "")
    with pytest.raises(pi_min.ConfigError, match="MY_GROQ_KEY"):
        pi_min.stream("groq", "hi")
    assert server.requests == []
    monkeypatch.setenv("MY_GROQ_KEY", "set-now")
    run(server, "groq", "hi")
    assert auth_of(server) == "Bearer set-now"


def test_missing_key_names_env_vars_and_auth_json(isolated_env, server):
    groq_at(isolated_env, server)
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.stream("groq", "hi")
    text = str(info.value)
    assert "GROQ_API_KEY" in text and str(isolated_env / "auth.json") in text
    write(isolated_env, "models.json", {"providers": {"google": {"baseUrl": server.url,
                                                                 "api": "openai-completions"}}})
    with pytest.raises(pi_min.ConfigError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        pi_min.stream("gemini", "hi")
    assert server.requests == []


def test_stored_keys_stay_on_their_providers_hosts(isolated_env, server, monkeypatch):
    # the loopback server is openai's configured host here; groq's key must never reach it
    write(isolated_env, "models.json", {"providers": {"openai": {"baseUrl": server.url}}})
    monkeypatch.setenv("GROQ_API_KEY", "gsk-groq-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    run(server, "groq", "hi", base_url=server.url)
    assert "authorization" not in server.requests[0].headers
    run(server, pi_min.get_model("groq", baseUrl=server.url + "/v1"), "hi")
    assert "authorization" not in server.requests[1].headers
    run(server, pi_min.get_model("openai", api="openai-completions"), "hi")
    assert auth_of(server, 2) == "Bearer sk-openai-secret"
    everything = json.dumps([r.headers for r in server.requests]) + "".join(r.body.decode() for r in server.requests)
    assert "gsk-groq-secret" not in everything


def test_keyless_local_providers_send_no_auth(server):
    run(server, pi_min.get_model("ollama", baseUrl=server.url + "/v1"), "hi")
    assert auth_of(server) is None
    assert server.requests[0].path == "/v1/chat/completions"


@pytest.mark.parametrize("provider, env", [("lmstudio", "LMSTUDIO_API_KEY"),
                                           ("privatemode-ai", "PRIVATEMODE_API_KEY")])
def test_local_servers_need_no_key_but_send_one_that_is_set(isolated_env, server, monkeypatch, provider, env):
    write(isolated_env, "models.json", {"providers": {provider: {"baseUrl": server.url + "/v1"}}})
    run(server, provider, "hi")
    assert auth_of(server, 0) is None
    monkeypatch.setenv(env, "local-key")
    run(server, provider, "hi")
    assert auth_of(server, 1) == "Bearer local-key"


def test_lmstudio_on_the_cli_needs_no_key(capsys, isolated_env, server):
    write(isolated_env, "models.json", {"providers": {"lm-studio": {"baseUrl": server.url + "/v1"}}})
    server.script([Reply(body=OK)])
    assert pi_min.main(["--provider", "lmstudio", "hi"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == "ok\n"
    assert auth_of(server) is None


def test_env_key_is_never_sent_to_another_providers_host(server, monkeypatch):
    # An http:// URL through an HTTP proxy lets the loopback server see what would have
    # gone to api.openai.com; the groq key must not be in it.
    monkeypatch.setenv("GROQ_API_KEY", "gsk-groq-secret")
    monkeypatch.setenv("HTTP_PROXY", server.url)
    run(server, "groq", "hi", base_url="http://api.openai.com/v1")
    req = server.requests[0]
    assert req.path == "http://api.openai.com/v1/chat/completions"
    assert "authorization" not in req.headers
    assert "gsk-groq-secret" not in json.dumps(req.headers) + req.body.decode()
    # an explicit key goes wherever the caller points it
    run(server, "groq", "hi", base_url="http://api.openai.com/v1", api_key="explicit")
    assert auth_of(server, 1) == "Bearer explicit"


def test_no_proxy_bypasses_the_proxy(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "example.invalid,.other")
    assert pi_min._proxy_for("http", "api.example.invalid") is None
    assert pi_min._proxy_for("http", "x.other") is None
    assert pi_min._proxy_for("http", "example.com") == "http://127.0.0.1:9"
    assert pi_min._proxy_for("https", "example.com") is None  # only HTTP_PROXY set
    run(server, "groq", "hi", base_url=server.url, api_key="k")  # loopback never proxied


def test_new_provider_from_models_json_needs_no_code(isolated_env, server):
    write(isolated_env, "models.json", {"providers": {"my-vllm": {
        "baseUrl": server.url + "/v1", "api": "openai-completions",
        "headers": {"X-Team": "env:TEAM_NAME"},
        "models": [{"id": "qwen3-8b", "reasoning": True, "contextWindow": 32768,
                    "cost": {"input": 1, "output": 2}}]}}})
    model = pi_min.get_model("my-vllm")
    assert (model["id"], model["contextWindow"], model["reasoning"]) == ("qwen3-8b", 32768, True)
    assert "my-vllm" in pi_min.list_providers()
    msg = run(server, "my-vllm", "hi")
    assert msg["provider"] == "my-vllm"
    assert server.requests[0].json["model"] == "qwen3-8b"
    assert auth_of(server) is None
    assert "x-team" not in server.requests[0].headers  # env var unset: header dropped


def test_built_in_provider_with_a_models_list_defaults_to_its_first_model(isolated_env, server):
    groq_at(isolated_env, server, apiKey="k", models=[{"id": "llama-3.3-70b-versatile"}, {"id": "my-finetune"}])
    assert pi_min.get_model("groq")["id"] == "llama-3.3-70b-versatile"
    run(server, "groq", "hi")
    assert server.requests[0].json["model"] == "llama-3.3-70b-versatile"
    assert pi_min.get_model("groq", "my-finetune")["id"] == "my-finetune"


def test_models_json_overrides_headers_and_compat_per_model(isolated_env, server, monkeypatch):
    monkeypatch.setenv("TEAM_NAME", "blue")
    groq_at(isolated_env, server, apiKey="k", headers={"X-Team": "env:TEAM_NAME"},
            models=[{"id": "m1", "compat": {"maxTokensField": "max_completion_tokens",
                                            "supportsUsageInStreaming": False}}])
    run(server, pi_min.get_model("groq", "m1"), "hi", max_tokens=10, headers={"X-Extra": "1"})
    req = server.requests[0]
    assert req.headers["x-team"] == "blue" and req.headers["x-extra"] == "1"
    assert req.json["max_completion_tokens"] == 10 and "max_tokens" not in req.json
    assert "stream_options" not in req.json


def test_option_headers_merge_last_and_can_replace_auth(server):
    run(server, "groq", "hi", base_url=server.url, api_key="k",
        headers={"Authorization": "Bearer other", "User-Agent": "mine"})
    assert auth_of(server) == "Bearer other"
    assert server.requests[0].headers["user-agent"] == "mine"


def test_invalid_options_raise_config_error_synchronously():
    for bad in ({"reasoning": "max"}, {"temperature": "hot"}, {"max_tokens": 0}, {"timeout": -1},
                {"max_retries": -1}, {"signal": object()}, {"cache_retention": "forever"},
                {"unknown_option": 1}, {"on_payload": 3}):
        with pytest.raises(pi_min.ConfigError):
            pi_min.stream("faux", "hi", **bad)
    with pytest.raises(pi_min.ConfigError):
        pi_min.stream("faux", {"messages": "nope"})
    with pytest.raises(pi_min.ConfigError):
        pi_min.complete("no-such-provider", "hi")


def test_broken_config_file_is_a_config_error(isolated_env):
    (isolated_env / "models.json").write_text("{not json")
    with pytest.raises(pi_min.ConfigError, match="models.json"):
        pi_min.get_model("groq")


def test_on_payload_can_replace_the_body(server):
    seen = []

    def hook(body, model):
        seen.append((body["model"], model["provider"]))
        return dict(body, temperature=0.5, extra_field=True)
    run(server, "groq", "hi", base_url=server.url, api_key="k", on_payload=hook)
    assert seen == [(pi_min.get_model("groq")["id"], "groq")]
    assert server.requests[0].json["extra_field"] is True


def test_on_payload_returning_none_keeps_the_body_and_is_documented(server):
    seen = []

    def hook(body, model):
        seen.append((json.loads(json.dumps(body)), model["id"]))
    run(server, "groq/llama-3.3-70b-versatile", "hi", base_url=server.url, api_key="k", on_payload=hook)
    assert seen[0][0]["model"] == seen[0][1] == "llama-3.3-70b-versatile"
    assert server.requests[0].json == seen[0][0]
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = " ".join(f.read().split())
    for doc in (" ".join(pi_min.stream.__doc__.split()), readme):
        assert "on_payload(body, model)" in doc and "None" in doc and "replacement" in doc


def test_secrets_never_reach_errors(server, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_live_0123456789abcdefghij")
    server.script([Reply(401, {"Content-Type": "application/json"},
                         json.dumps({"error": {"message": "Invalid key gsk_live_0123456789abcdefghij given"}}))])
    msg = pi_min.complete("groq", "hi", base_url=server.url)
    assert msg["errorKind"] == "auth" and msg["errorStatus"] == 401
    assert "gsk_live" not in json.dumps(msg) and "***" in msg["errorMessage"]


def test_redaction_patterns():
    text = pi_min._redact("key sk-proj-abcdefghijklmnop1234 and Bearer abcdefghijklmnopq and "
                          "AIzaSyA1234567890abcdefghijklmnopqrstu url?key=secret1&x=1", ["mysecretvalue"])
    for leaked in ("sk-proj-abc", "abcdefghijklmnopq", "AIzaSy", "secret1"):
        assert leaked not in text
    assert pi_min._redact("the mysecretvalue here", ["mysecretvalue"]) == "the *** here"


def test_signal_set_before_start_aborts_without_a_request(server):
    signal = threading.Event()
    signal.set()
    msg = pi_min.complete("groq", "hi", base_url=server.url, api_key="k", signal=signal)
    assert msg["stopReason"] == "aborted" and msg["errorKind"] == "aborted"
    assert server.requests == []


def test_keyless_provider_uses_a_configured_key(isolated_env, server):
    write(isolated_env, "models.json", {"providers": {"ollama": {"baseUrl": server.url + "/v1",
                                                                 "apiKey": "remote-ollama-key"}}})
    run(server, "ollama", "hi")
    assert auth_of(server) == "Bearer remote-ollama-key"


def test_custom_provider_on_a_known_host_inherits_its_quirks(isolated_env, server, monkeypatch):
    # http:// through an HTTP proxy lets the loopback server stand in for api.mistral.ai
    write(isolated_env, "models.json", {"providers": {"my-mistral": {
        "api": "openai-completions", "baseUrl": "http://api.mistral.ai/v1", "apiKey": "mk",
        "models": [{"id": "mistral-small-latest"}]}}})
    monkeypatch.setenv("HTTP_PROXY", server.url)
    run(server, "my-mistral", "hi")
    req = server.requests[0]
    assert req.path == "http://api.mistral.ai/v1/chat/completions"
    assert "stream_options" not in req.json  # mistral's compat, found by host
    assert auth_of(server) == "Bearer mk"


@pytest.mark.parametrize("message", [
    {"role": "user", "content": 5}, {"role": "assistant", "content": "text"},
    {"role": "toolResult", "toolCallId": "x", "content": [1]}, {"role": "system", "content": "x"}, "hi"])
def test_malformed_context_messages_are_config_errors(message):
    with pytest.raises(pi_min.ConfigError, match="context message 0"):
        pi_min.stream("faux", {"messages": [message]})


def test_a_non_string_key_in_auth_json_is_a_config_error(isolated_env):
    (isolated_env / "auth.json").write_text('{"groq": {"type": "api_key", "key": 12345}}')
    with pytest.raises(pi_min.ConfigError, match="groq entry's key must be a string, not int"):
        pi_min.stream("groq", "hi")
