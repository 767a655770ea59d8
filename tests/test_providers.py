"""Provider table and resolution: every baseline id and alias, pitfalls, get_model."""

import ast
import json
import os

import pytest

import pi_min
import providers_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "..", "shared", "spec", "providers.json")


# baseline rows we no longer ship (no sibling supports them; their protocols are not public)
DROPPED = {"google-gemini-cli": ["gemini-cli"], "google-antigravity": ["antigravity"], "cursor": ["cursor-agent"]}
# base URLs that say more than the spec row: SAP's api-version; the Cohere and GitLab hosts from the
# environment (CO_API_URL, GITLAB_URL)
WIDENED = {"cohere": "{co_api_url}/v2",
           "sap-ai-core": "{service_url}/v2/inference/deployments/{deployment_id}/chat/completions"
                          "?api-version={api_version}",
           "gitlab": "{gitlab_url}/api/v4/chat/completions",
           "google-vertex": "https://aiplatform.googleapis.com"}  # the path is built per model and location


def _spec_rows():
    if not os.path.exists(SPEC):
        pytest.skip("shared/spec/providers.json is not beside the repository")
    with open(SPEC, encoding="utf-8") as f:
        return [r for r in json.load(f) if r["api"] and r["id"] not in DROPPED]


def test_table_is_data_only():
    with open(os.path.join(ROOT, "providers_table.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        assert isinstance(node, (ast.Assign, ast.Expr)), ast.dump(node)[:80]
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant)  # the docstring


# rows whose base URL is not the spec's: Vertex's is Google's host; the family picks the
# location's host and builds the path the spec's template spells out


def test_every_spec_provider_resolves_with_its_family_and_base_url():
    rows = _spec_rows()
    assert len(rows) + len(DROPPED) >= 100
    for row in rows:
        model = pi_min.get_model(row["id"])
        assert model["provider"] == row["id"]
        base = WIDENED.get(row["id"], row["base_url"])
        assert model["baseUrl"] == base, row["id"]
        if "|" not in row["api"]:  # github-copilot lists one family per model
            assert model["api"] == row["api"], row["id"]
        for alias in row["aliases"]:
            for spelling in (alias, alias.upper()):
                aliased = pi_min.get_model(spelling)
                assert aliased["provider"] == row["id"], alias
                assert aliased["baseUrl"] == base
                assert aliased["api"] == model["api"]


def test_dropped_rows_and_their_families_are_gone():
    for pid, aliases in DROPPED.items():
        assert pid not in pi_min.list_providers()
        for name in [pid] + aliases:
            with pytest.raises(pi_min.ConfigError, match="unknown provider"):
                pi_min.get_model(name)
    for name in ("pi_min.py", "providers_table.py", "README.md"):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read().lower()
        for family in ("google-gemini-cli", "cursor-agent", "antigravity", "cursor.sh"):
            assert family not in text, (name, family)


# env vars a row adds after the baseline's (Vertex also takes an access token; Copilot the
# GitHub tokens of gh and of GitHub's Copilot CLI)
EXTRA_ENV_KEYS = {"google-vertex": ["GOOGLE_CLOUD_ACCESS_TOKEN"], "azure-openai": ["AZURE_OPENAI_AD_TOKEN"],
                  "github-copilot": ["GH_TOKEN", "COPILOT_GITHUB_TOKEN"]}


def test_baseline_env_keys_in_order():
    for row in _spec_rows():  # the baseline's first, in its order; a row may add more after them
        keys = providers_table.PROVIDERS[row["id"]]["envKeys"]
        assert keys == row["env_keys"] + EXTRA_ENV_KEYS.get(row["id"], []), row["id"]


@pytest.mark.parametrize("name, canonical, api, host", [
    ("kimi", "moonshotai", "openai-completions", "api.moonshot.ai"),
    ("moonshot", "moonshotai", "openai-completions", "api.moonshot.ai"),
    ("kimi-for-coding", "kimi-for-coding", "anthropic-messages", "api.kimi.com"),
    ("moonshotai-cn", "moonshotai-cn", "openai-completions", "api.moonshot.cn"),
    ("alibaba", "alibaba", "openai-completions", "dashscope-intl.aliyuncs.com"),
    ("dashscope", "alibaba", "openai-completions", "dashscope-intl.aliyuncs.com"),
    ("qwen", "alibaba", "openai-completions", "dashscope-intl.aliyuncs.com"),
    ("alibaba-cn", "alibaba-cn", "openai-completions", "dashscope.aliyuncs.com"),
    ("fireworks-ai", "fireworks", "openai-completions", "api.fireworks.ai"),
    ("gemini", "google", "google-generative-ai", "generativelanguage.googleapis.com"),
    ("GROQ", "groq", "openai-completions", "api.groq.com"),
    ("demo", "faux", "faux", None),
])
def test_common_pitfalls_resolve_as_the_baseline_says(name, canonical, api, host):
    model = pi_min.get_model(name)
    assert (model["provider"], model["api"]) == (canonical, api)
    if host:
        assert pi_min._host_of(model["baseUrl"]) == host


def test_aliases_never_shadow_a_canonical_id():
    assert not set(providers_table.ALIASES) & set(providers_table.PROVIDERS)
    assert set(providers_table.ALIASES.values()) <= set(providers_table.PROVIDERS)


def test_every_row_has_a_known_default_model_and_complete_fields():
    for pid, row in providers_table.PROVIDERS.items():
        assert row["defaultModel"] in pi_min._known_models(pid), pid
        model = pi_min.get_model(pid)
        assert model["id"] == row["defaultModel"]
        for field in ("id", "name", "api", "provider", "baseUrl", "reasoning", "input", "cost",
                      "contextWindow", "maxTokens"):
            assert field in model, (pid, field)
        assert set(model["cost"]) >= {"input", "output", "cacheRead", "cacheWrite"}
        assert "text" in model["input"]


def test_list_providers_is_sorted_canonical_ids():
    ids = pi_min.list_providers()
    assert ids == sorted(ids)
    assert "groq" in ids and "faux" in ids and "kimi" not in ids and "v0" not in ids


def test_unknown_provider_suggests_close_names():
    with pytest.raises(pi_min.ConfigError) as info:
        pi_min.get_model("grok-ai")
    assert "unknown provider" in str(info.value)
    with pytest.raises(pi_min.ConfigError, match="Did you mean.*groq"):
        pi_min.get_model("gorq")


@pytest.mark.parametrize("provider", ["groq", "anthropic", "openrouter", "llamacpp"])
def test_unknown_model_id_gets_table_limits_and_neutral_capabilities(provider):
    # the rows of these providers (and their default models) say reasoning: true
    row = providers_table.PROVIDERS[provider]
    assert row["reasoning"] is True and pi_min.get_model(provider)["reasoning"] is True
    unknown = pi_min.get_model(provider, "some-new-model")
    assert unknown == dict({"id": "some-new-model", "name": "some-new-model", "api": row["api"],
                            "provider": provider, "baseUrl": row["baseUrl"], "reasoning": False,
                            "input": ["text"], "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                            "contextWindow": row["contextWindow"], "maxTokens": row["maxTokens"]},
                           **{k: row[k] for k in ("headers", "compat") if k in row})
    assert pi_min.get_model(provider, "some-new-model", reasoning=True)["reasoning"] is True


def test_a_row_with_model_apis_routes_ids_it_does_not_list_by_their_shape(isolated_env):
    """Copilot serves Claude on Messages and the gpt-5 family and codex on Responses only;
    a listed model keeps the table's api, an unlisted one goes by the row's rules."""
    rules = providers_table.PROVIDERS["github-copilot"]["modelApis"]
    assert rules and all(api in pi_min._FAMILIES for _, api in rules)
    for mid, api in [("gpt-5.9", "openai-responses"), ("gpt-5.9-codex-max", "openai-responses"),
                     ("my-codex", "openai-responses"), ("claude-opus-9", "anthropic-messages"),
                     ("gemini-9-pro", "openai-completions"), ("gpt-4.5", "openai-completions")]:
        assert mid not in pi_min._known_models("github-copilot")
        assert pi_min.get_model("copilot", mid)["api"] == api, mid
    known = pi_min._known_models("github-copilot")
    assert {m: e.get("api") for m, e in known.items() if m.startswith("gpt-5")} and all(
        e.get("api") == "openai-responses" for m, e in known.items() if m.startswith("gpt-5") or "codex" in m)
    assert pi_min.get_model("copilot", "gpt-4.1")["api"] == "openai-completions"
    # models.json says more than the rules
    (isolated_env / "models.json").write_text(json.dumps({"providers": {"github-copilot": {
        "models": [{"id": "gpt-5.9", "api": "openai-completions"}]}}}))
    assert pi_min.get_model("copilot", "gpt-5.9")["api"] == "openai-completions"
    assert pi_min.get_model("groq", "gpt-5.9")["api"] == "openai-completions"  # rows without rules: the row's


def test_known_model_has_its_own_prices():
    row = providers_table.PROVIDERS["groq"]
    known = pi_min.get_model("groq", row["defaultModel"])
    assert known["cost"]["input"] == pi_min._known_models("groq")[row["defaultModel"]]["cost"]["input"]
    assert known["cost"]["input"] > 0


def test_get_model_overrides_and_returned_dicts_are_private_copies():
    a = pi_min.get_model("groq", baseUrl="http://127.0.0.1:9/v1", headers={"X-A": "1"}, compat={"supportsStore": True})
    assert a["baseUrl"] == "http://127.0.0.1:9/v1" and a["headers"] == {"X-A": "1"}
    a["input"].append("image")
    a["cost"]["input"] = 99
    b = pi_min.get_model("groq")
    assert "image" not in b["input"] and b["cost"]["input"] != 99
    with pytest.raises(pi_min.ConfigError, match="unknown field"):
        pi_min.get_model("groq", bogus=1)


def test_model_strings_split_at_the_first_slash(server):
    from loopback import Reply
    server.script([Reply(body=b'data: {"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":"stop"}]}\n\n'
                              b"data: [DONE]\n\n")])
    msg = pi_min.complete("openrouter/openai/gpt-4o", "hi", base_url=server.url, api_key="k")
    assert (msg["provider"], msg["model"]) == ("openrouter", "openai/gpt-4o")
    assert server.requests[0].json["model"] == "openai/gpt-4o"


def unbuilt():
    """Table providers whose API family or auth style is not built yet (fewer as families land)."""
    return [pid for pid, row in providers_table.PROVIDERS.items()
            if row["api"] not in pi_min._FAMILIES or not pi_min._auth_built(row.get("auth") or "bearer")]


def test_families_not_built_yet_resolve_but_stream_raises_config_error(monkeypatch):
    for provider in unbuilt():
        model = pi_min.get_model(provider)
        row = providers_table.PROVIDERS[provider]
        what = (f"the {row['api']} API family" if row["api"] not in pi_min._FAMILIES
                else f"{row.get('auth')} authentication")
        # before the key check: no key set, yet the error is about the family, not the key
        with pytest.raises(pi_min.ConfigError, match=f"^{provider}: {what} is not built yet"):
            pi_min.stream(model, "hi")
        for env in row.get("envKeys") or ():
            monkeypatch.setenv(env, "key-for-" + provider)
        with pytest.raises(pi_min.ConfigError, match="planned"):
            pi_min.complete(provider, "hi")


def test_models_json_provider_of_a_family_not_built(isolated_env):
    (isolated_env / "models.json").write_bytes(b'{"providers": {"my-own": {"api": "imaginary-api", '
                                               b'"baseUrl": "http://127.0.0.1:9/v2", "models": [{"id": "c1"}]}}}')
    assert pi_min.get_model("my-own")["api"] == "imaginary-api"
    with pytest.raises(pi_min.ConfigError, match="my-own: the imaginary-api API family is not built"):
        pi_min.stream("my-own", "hi")


def test_templated_base_url_names_the_missing_variable(monkeypatch):
    with pytest.raises(pi_min.ConfigError, match="CLOUDFLARE_ACCOUNT_ID"):
        pi_min.stream("cloudflare-workers-ai", "hi", api_key="k")
    monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", "acct")
    with pytest.raises(pi_min.ConfigError, match="CLOUDFLARE_GATEWAY_ID"):
        pi_min.stream("cloudflare-ai-gateway", "hi", api_key="k")
    row = providers_table.PROVIDERS["cloudflare-workers-ai"]
    model = pi_min.get_model("cloudflare-workers-ai")
    assert pi_min._fill_url(row["baseUrl"], row, model) == \
        "https://api.cloudflare.com/client/v4/accounts/acct/ai/v1"


def test_readme_provider_list_is_generated_from_the_table():
    import subprocess
    import sys
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_readme.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_table_is_what_its_generator_makes():
    """providers_table.py is generated: the generator's own consistency checks pass and
    its output is the committed file (needs shared/spec beside the repository)."""
    import subprocess
    import sys
    if not os.path.exists(SPEC):
        pytest.skip("shared/spec/providers.json is not beside the repository")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gen_providers_table.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
