#!/usr/bin/env python3
"""Generate ``providers_table.py`` from the reference catalogs in ``shared/spec``.

Inputs (read only):
  providers.json          one row per provider id: api family, base URL, env keys, auth
  models-catalog.json     pi-ai's model registry (23 providers) with a default model each
  modelsdev-catalog.json  the wider models.dev snapshot (147 providers)

Everything that is a judgement call lives in the literal dicts below (default models,
auth mapping, URL variables, compat flags, headers, provider id mappings), so a review
of this file is a review of the table.  The output is deterministic: running the script
twice gives byte-identical output.

Usage:  python3 tools/gen_providers_table.py [--check] [--report]
  --check   exit 1 if providers_table.py on disk differs from what would be written
  --report  print, per provider, the default model and the top ranked candidates
"""

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
SPEC = HERE.parents[2] / "shared" / "spec"
OUT = REPO / "providers_table.py"

MAX_MODELS = 25  # per provider, default model included
SKIP_IDS = {
    "v0",  # no API endpoint published
    # no sibling supports these any more and their protocols are not public
    # (Cloud Code Assist behind Gemini CLI / Antigravity OAuth; Cursor's agent RPC)
    "google-gemini-cli", "google-antigravity", "cursor",
}

# ---------------------------------------------------------------------------
# Provider id mappings between our ids and the two catalogs
# ---------------------------------------------------------------------------

# our id -> pi-ai (models-catalog.json) id, where they differ
PI_AI_IDS = {
    "vercel": "vercel-ai-gateway",
    "kimi-for-coding": "kimi-coding",
    "azure-openai": "azure-openai-responses",
}

# our id -> models.dev provider keys, where they differ (default: [our id])
MODELSDEV_IDS = {
    "fireworks": ["fireworks-ai"],
    "azure-openai": ["azure"],
    # Our row (env UMANS_AI_CODING_PLAN_API_KEY, "Umans AI Coding Plan") is the coding
    # plan; models.dev's umans-ai-coding-plan lists a superset of umans-ai.
    "umans": ["umans-ai-coding-plan", "umans-ai"],
    "wafer": ["wafer.ai"],
    "gmi": ["gmicloud"],
    "google-vertex": ["google-vertex", "google-vertex-anthropic"],
    # CoreWeave serverless inference is served from the W&B inference endpoint
    # (same base URL as our `wandb` row), so it shares that model list.
    "coreweave": ["wandb"],
    # providers with no models.dev entry
    "alibaba-us": [],
    "atlascloud": [],
    "firmware": [],
    "qianfan": [],
    "ollama": [],
    "llamacpp": [],
    "mistralrs": [],
}

# ---------------------------------------------------------------------------
# Row-level settings
# ---------------------------------------------------------------------------

# providers.json `api` is a per-model list for Copilot: its models carry their own "api"
# (MODEL_API below); the row's is the family of an id that no MODEL_API rule matches.
API_OVERRIDES = {"github-copilot": "openai-completions"}

# base URLs that differ from providers.json on purpose
BASE_URL_OVERRIDES = {
    # CO_API_URL moves Cohere's SDK to a private deployment or proxy; it does the same here
    "cohere": "{co_api_url}/v2",
    # SAP's own SDKs send an api-version: the Azure OpenAI deployments behind AI Core want one
    "sap-ai-core": "{service_url}/v2/inference/deployments/{deployment_id}/chat/completions"
                   "?api-version={api_version}",
    # a self-managed instance comes from GITLAB_URL / GITLAB_HOST
    "gitlab": "{gitlab_url}/api/v4/chat/completions",
}

# providers.json leaves these null: (reasoning, input, contextWindow, maxTokens)
ROW_FALLBACKS = {
    "azure-openai": (True, ["text", "image"], 128000, 16384),
    "github-copilot": (True, ["text", "image"], 128000, 16384),
    "gitlab": (False, ["text"], 128000, 4096),
}

# providers.json `auth` text prefix -> auth style; first match wins.
AUTH_PREFIXES = [
    ("x-api-key", "x-api-key"),
    ("x-goog-api-key", "x-goog-api-key"),
    ("api-key", "api-key"),
    ("oauth-bearer", "oauth"),
    ("oauth2-client-credentials", "sap"),
    ("github-token-exchange", "copilot"),
    ("sigv4", "sigv4"),
    ("none", "none"),
    ("bearer", "bearer"),
]
AUTH_STYLES = {"bearer", "x-api-key", "api-key", "x-goog-api-key", "none", "oauth",
               "sigv4", "copilot", "sap", "google-cloud", "azure"}
# rows whose credential is more than a header providers.json can describe: Vertex
# takes an API key, an access token, Application Default Credentials or the
# metadata server (pi_min's "google-cloud" style picks one per stream); Azure takes an
# api-key header or an Entra ID bearer token (AZURE_OPENAI_AD_TOKEN)
AUTH_OVERRIDES = {"google-vertex": "google-cloud", "azure-openai": "azure"}
# env vars tried after providers.json's, in order
ENV_KEYS_EXTRA = {"google-vertex": ["GOOGLE_CLOUD_ACCESS_TOKEN"], "azure-openai": ["AZURE_OPENAI_AD_TOKEN"],
                  # the GitHub tokens gh and GitHub's own Copilot CLI read (exchanged by pi_min)
                  "github-copilot": ["GH_TOKEN", "COPILOT_GITHUB_TOKEN"]}
# base URLs that differ from providers.json's: Vertex's is Google's host alone; the
# family picks the location's host ({location}-aiplatform..., or this one for global)
# and appends /v1/projects/{project}/locations/{location}/publishers/... itself, so a
# base URL override (a proxy, a VPC endpoint) keeps that path.
BASE_URL_OVERRIDES["google-vertex"] = "https://aiplatform.googleapis.com"

# template var -> env vars tried in order
URL_VARS = {
    "cloudflare-ai-gateway": {"account_id": ["CLOUDFLARE_ACCOUNT_ID"],
                              "gateway_id": ["CLOUDFLARE_GATEWAY_ID"]},
    "cloudflare-workers-ai": {"account_id": ["CLOUDFLARE_ACCOUNT_ID"]},
    # {deployment} is the model's (pi_min maps it through models.json "deployment")
    "azure-openai": {"resource": ["AZURE_OPENAI_RESOURCE_NAME", "AZURE_OPENAI_RESOURCE",
                                  "AZURE_RESOURCE_NAME"],
                     "api_version": ["AZURE_OPENAI_API_VERSION", "OPENAI_API_VERSION"]},
    "amazon-bedrock": {"region": ["AWS_REGION", "AWS_DEFAULT_REGION"]},
    "sap-ai-core": {"service_url": ["SAP_AI_CORE_SERVICE_URL"],  # else the service key's (pi_min's code)
                    "api_version": ["SAP_AI_CORE_API_VERSION"]},
    "gitlab": {"gitlab_url": ["GITLAB_URL", "GITLAB_HOST"]},  # a bare host name gets https://
    "cohere": {"co_api_url": ["CO_API_URL"]},
}
# template var -> value used when none of its env vars is set
URL_DEFAULTS = {
    "azure-openai": {"api_version": "2025-04-01-preview"},  # = pi_min's _AZ_API_VERSION
    "amazon-bedrock": {"region": "us-east-1"},
    "sap-ai-core": {"api_version": "2024-10-21"},  # the default of SAP's AI SDK
    "gitlab": {"gitlab_url": "https://gitlab.com"},
    "cohere": {"co_api_url": "https://api.cohere.com"},
}
# env vars whose value is a whole endpoint, replacing the template's scheme and host
URL_ORIGIN = {"azure-openai": ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_BASE_URL"]}
# placeholders filled by code from the model id (never listed in urlVars/urlDefaults)
CODE_FILLED_PLACEHOLDERS = {"model", "deployment", "deployment_id",
                            "streamGenerateContent|streamRawPredict"}

COMPAT = {
    "openai": {"supportsStore": True, "supportsDeveloperRole": True,
               "maxTokensField": "max_completion_tokens"},
    # deployment chat completions: reasoning models need both (api-version 2024-12-01-preview on)
    "azure-openai": {"supportsDeveloperRole": True, "maxTokensField": "max_completion_tokens"},
    "xai": {"supportsReasoningEffort": False},
    # pi-ai's Copilot chat-completions models: no reasoning_effort on that surface
    "github-copilot": {"supportsReasoningEffort": False},
    "zai": {"thinkingFormat": "zai"},
    "zai-coding-plan": {"thinkingFormat": "zai"},
    "zhipuai": {"thinkingFormat": "zai"},
    "zhipuai-coding-plan": {"thinkingFormat": "zai"},
    "alibaba": {"thinkingFormat": "qwen"},
    "alibaba-cn": {"thinkingFormat": "qwen"},
    "alibaba-us": {"thinkingFormat": "qwen"},
    "deepseek": {"thinkingFormat": "deepseek"},
    "openrouter": {"thinkingFormat": "openrouter", "cacheControlFor": "anthropic/"},
    # Mistral rejects unknown fields (422 extra_forbidden), stream_options included; usage comes anyway
    "mistral": {"requiresToolResultName": True, "toolIdFormat": "mistral", "supportsUsageInStreaming": False,
                "thinkingFormat": "mistral"},
}

# (provider, model id) -> model-level compat, applied only if the model is in the table
_ALL_DEFAULT = {"minimal": "default", "low": "default", "medium": "default",
                "high": "default", "xhigh": "default"}
MODEL_COMPAT = {
    ("groq", "qwen/qwen3-32b"): {"reasoningEffortMap": _ALL_DEFAULT},
}

HEADERS = {
    "openrouter": {"HTTP-Referer": "https://github.com/pi-min/pi_min", "X-Title": "pi_min"},
}

# fields forced on every model of a row whose wire family cannot do more
# (GitLab Duo chat is text-only and returns no thinking)
MODEL_FORCE = {
    "gitlab": {"input": ["text"], "reasoning": False},
}
# provider -> [(model id regex, api), ...]: models served only by another family of the
# provider; the first rule that matches (re.search) wins. Azure deploys the codex and pro
# models for its v1 Responses API alone. Copilot serves Claude on its Messages API and
# OpenAI's gpt-5 family and codex models on /responses only (never /chat/completions);
# a model pi-ai's catalog lists keeps the catalog's api (CATALOG_MODEL_API), and the
# rules must agree with it (checked). Copilot's rules go into its row as "modelApis",
# where pi_min routes a model id the table does not list by them.
MODEL_API = {
    "azure-openai": [(r"codex|-pro$", "azure-openai-responses")],
    "github-copilot": [(r"^claude-", "anthropic-messages"), (r"^gpt-5|codex", "openai-responses")],
}
# providers whose pi-ai catalog models keep the catalog's per-model api
CATALOG_MODEL_API = {"github-copilot"}
# providers whose MODEL_API rules are written into the row (modelApis)
ROW_MODEL_APIS = {"github-copilot"}

# ---------------------------------------------------------------------------
# Model selection
# ---------------------------------------------------------------------------

# pi-ai catalog rows whose api our row's wire family cannot reach
CATALOG_SKIP_APIS = {
    # OpenCode Zen/Go: Claude goes to /messages, GPT to /responses, Gemini to
    # /models; only the rest is served on /chat/completions
    "opencode": {"anthropic-messages", "openai-responses", "google-generative-ai"},
    "opencode-go": {"anthropic-messages", "openai-responses", "google-generative-ai"},
}
# model id rewrites applied first: provider -> (regex, replacement)
MODEL_ID_REWRITE = {
    # our base URL is the gateway's OpenAI passthrough (.../openai), which takes
    # plain OpenAI model ids; models.dev lists the unified "openai/<id>" form
    "cloudflare-ai-gateway": (r"^openai/", ""),
}
# only model ids matching this regex are kept (re.search)
MODEL_INCLUDE = {
    "cloudflare-ai-gateway": r"^(gpt-|o\d)",           # OpenAI models only (see above)
    "azure-openai": r"^(gpt-|o\d|codex-)",             # Azure OpenAI deployments
    # SAP AI Core serves OpenAI models on /chat/completions; Claude and Gemini
    # deployments use other APIs
    "sap-ai-core": r"^gpt-",
}
# model ids dropped per provider (re.search)
MODEL_EXCLUDE = {
    # Responses-only OpenAI models
    "cloudflare-ai-gateway": r"codex|-pro$|-deep-research",
    # cross-region inference profiles that only work outside the default region
    # (us-east-1); "us." and "global." profiles and bare ids are kept
    "amazon-bedrock": r"^(eu|jp|au|apac|ca|us-gov)\.",
    # Vertex Model Garden MaaS models use an OpenAI-compatible endpoint
    "google-vertex": r"-maas$",
}
# pi-ai (March) models that the newer models.dev snapshot no longer lists for the
# provider are kept only when released on or after this date
UNLISTED_SINCE = "2025-07-01"
# providers whose models.dev default endpoint is not ours: keep only models that
# models.dev routes to our endpoint with a per-model override
OVERRIDE_ONLY = {"zenmux"}  # our row is ZenMux's Anthropic endpoint
# providers whose models.dev entries are all partial (no capability flags) and have
# no base model elsewhere: keep them with the row defaults
TRUST_PARTIAL = {"umans"}
# providers with no tool-capable chat model at all: keep their chat models
NO_TOOLS_OK = {"perplexity", "morph"}  # Sonar; Morph fast-apply

NON_CHAT = re.compile(r"embed|rerank|whisper|tts|transcri|guard|moderation|ocr|"
                      r"image-gen|imagine|realtime|audio|speech|-search", re.I)

# npm package of a models.dev (per-model) provider override -> wire family
NPM_FAMILY = {
    "@ai-sdk/anthropic": "anthropic-messages",
    "@ai-sdk/openai": "openai-responses",
    "@ai-sdk/openai-compatible": "openai-completions",
    "@ai-sdk/google": "google-generative-ai",
    "@ai-sdk/google-vertex/anthropic": "google-vertex",
    "@ai-sdk/google-vertex": "google-vertex",
}
# row api -> wire families of a per-model override it can still serve
FAMILY_OK = {
    "openai-completions": {"openai-completions"},
    "openai-responses": {"openai-responses", "openai-completions"},
    "anthropic-messages": {"anthropic-messages"},
    "google-vertex": {"google-vertex"},
}

# models.dev providers whose full entries serve as base records for partial
# (override-only) entries elsewhere, most authoritative first
ORIGIN_PROVIDERS = ["anthropic", "openai", "google", "xai", "deepseek", "moonshotai",
                    "zai", "zhipuai", "alibaba", "minimax", "mistral", "groq",
                    "amazon-bedrock", "google-vertex", "openrouter", "vercel"]

# ---------------------------------------------------------------------------
# Default models
# ---------------------------------------------------------------------------
# Rule 1 (automatic): pi-ai's default when models.dev still lists it for the
# provider (or the provider is absent from models.dev) and our row can reach it.
# Everything else is chosen here by hand: a current, widely used, tool-capable
# general chat model of that provider.
DEFAULT_MODELS = {
    # first-party APIs
    "cohere": "command-a-03-2025",  # Command A: the general flagship
    "mistral": "mistral-medium-latest",  # pi-ai's devstral-medium-latest is deprecated
    "moonshotai": "kimi-k2.6",
    "moonshotai-cn": "kimi-k2.6",
    "alibaba": "qwen-plus",  # evergreen alias of the current Qwen Plus
    "alibaba-cn": "qwen-plus",
    "alibaba-us": "qwen-plus",
    "deepseek": "deepseek-v4-pro",
    "xai": "grok-4.3",  # pi-ai's grok-4-fast-non-reasoning is no longer listed
    "perplexity": "sonar-pro",  # Sonar models have no tool calling
    "cerebras": "gpt-oss-120b",  # pi-ai's zai-glm-4.6 is gone; zai-glm-4.7 is beta
    "inception": "mercury-2",
    "bailing": "Ling-1T",
    "morph": "morph-v3-large",  # fast-apply models, no tool calling
    "nova": "nova-2-lite-v1",  # Nova 2 Pro is preview
    "xiaomi": "mimo-v2.5-pro",
    "upstage": "solar-pro3",
    "lucidquery": "lucidquery-agi-01-frontier",
    "sakana": "fugu-ultra",
    "llama": "llama-4-maverick-17b-128e-instruct-fp8",
    "minimax-coding-plan": "MiniMax-M2.7",
    "minimax-cn-coding-plan": "MiniMax-M2.7",
    "zai-coding-plan": "glm-5.1",
    "zhipuai": "glm-5.1",
    "zhipuai-coding-plan": "glm-5.1",
    "umans": "umans-coder",
    "qianfan": "ernie-4.5-turbo-128k",
    "gitlab": "duo-chat-sonnet-4-6",  # the GitLab chat API ignores the model id
    "github-copilot": "gpt-4.1",  # included in every plan (chat completions)
    "github-models": "openai/gpt-4.1",
    "google-vertex": "gemini-2.5-pro",  # pi-ai's gemini-3-pro-preview is retired
    # {deployment_id} comes from the model id, so this is only a label
    "sap-ai-core": "gpt-5.4",
    "cloudflare-ai-gateway": "gpt-5.4",
    "cloudflare-workers-ai": "@cf/openai/gpt-oss-120b",
    # open-model hosts: Kimi K2.6 where served (current, widely used, tool-capable)
    "deepinfra": "moonshotai/Kimi-K2.6",
    "togetherai": "moonshotai/Kimi-K2.6",
    "fireworks": "accounts/fireworks/models/kimi-k2p6",
    "berget": "moonshotai/Kimi-K2.6",
    "cortecs": "kimi-k2.6",
    "novita-ai": "moonshotai/kimi-k2.6",
    "nvidia": "moonshotai/kimi-k2.6",
    "synthetic": "hf:moonshotai/Kimi-K2.6",
    "vultr": "moonshotai/Kimi-K2.6",
    "siliconflow": "moonshotai/Kimi-K2.6",
    "siliconflow-cn": "Pro/moonshotai/Kimi-K2.6",
    "baseten": "moonshotai/Kimi-K2.6",
    "gmi": "moonshotai/Kimi-K2.6",
    "wafer": "Kimi-K2.6",
    "ollama-cloud": "kimi-k2.6",
    "opencode": "kimi-k2.6",  # Claude/GPT/Gemini are not on Zen's /chat/completions
    "opencode-go": "kimi-k2.6",  # pi-ai's kimi-k2.5 is deprecated there
    "venice": "kimi-k2-6",
    "friendli": "zai-org/GLM-5.1",
    "wandb": "zai-org/GLM-5.1",
    "coreweave": "zai-org/GLM-5.1",
    "nebius": "deepseek-ai/DeepSeek-V4-Pro",
    "chutes": "deepseek-ai/DeepSeek-V3.2-TEE",
    "submodel": "deepseek-ai/DeepSeek-V3.1",
    "moark": "GLM-4.7",
    "modelscope": "Qwen/Qwen3-235B-A22B-Instruct-2507",
    "iflowcn": "qwen3-max",
    "io-net": "openai/gpt-oss-120b",
    "ovhcloud": "gpt-oss-120b",
    "scaleway": "gpt-oss-120b",
    "stackit": "openai/gpt-oss-120b",
    "inference": "meta/llama-3.1-8b-instruct",  # its catalog has only small open models
    # gateways and routers: Claude Sonnet 4.6 in each one's spelling
    "vercel": "anthropic/claude-opus-4.6",  # pi-ai's default, in Vercel's dotted spelling
    "kilo": "anthropic/claude-sonnet-4.6",
    "zenmux": "anthropic/claude-sonnet-4.6",
    "fastrouter": "anthropic/claude-sonnet-4.6",
    "nano-gpt": "anthropic/claude-sonnet-4.6",
    "poe": "anthropic/claude-sonnet-4.6",
    "requesty": "anthropic/claude-sonnet-4-6",
    "302ai": "claude-sonnet-4-6",
    "abacus": "claude-sonnet-4-6",
    "aihubmix": "claude-sonnet-4-6",
    "jiekou": "claude-sonnet-4-5-20250929",
    "helicone": "claude-4.5-sonnet",  # its catalog stops at the 4.5 generation
    "vivgrid": "gpt-5.4",
    # local servers
    "lmstudio": "openai/gpt-oss-20b",
    "privatemode-ai": "gpt-oss-120b",
    "ollama": "llama3.2",
    "llamacpp": "default",  # llama-server answers with whatever model it loaded
    "mistralrs": "default",
    # providers absent from both catalogs (see FALLBACK_MODELS)
    "atlascloud": "deepseek-ai/DeepSeek-V3.1",
    "firmware": "claude-sonnet-4-5",
}

_ZERO = {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}
# Models for providers the catalogs do not cover; cost 0 = unknown.
# {"borrow": pid} copies name/limits/modalities from that models.dev provider's entry.
FALLBACK_MODELS = {
    "ollama": {"llama3.2": {"name": "Llama 3.2", "reasoning": False, "input": ["text"],
                            "contextWindow": 131072, "maxTokens": 16384}},
    "llamacpp": {"default": {"name": "Loaded model", "reasoning": True, "input": ["text"],
                             "contextWindow": 131072, "maxTokens": 32768}},
    "mistralrs": {"default": {"name": "Loaded model", "reasoning": True, "input": ["text"],
                              "contextWindow": 131072, "maxTokens": 32768}},
    # same Model Studio model as the international endpoint; US prices unknown here
    "alibaba-us": {"qwen-plus": {"borrow": "alibaba"}},
    # Baidu Qianfan v2 (OpenAI-compatible); ERNIE 4.5 Turbo 128K, output up to 12K
    "qianfan": {"ernie-4.5-turbo-128k": {"name": "ERNIE 4.5 Turbo 128K", "reasoning": False,
                                         "input": ["text"], "contextWindow": 131072,
                                         "maxTokens": 12288}},
    # Atlas Cloud's documented example model (HF-style ids)
    "atlascloud": {"deepseek-ai/DeepSeek-V3.1": {"name": "DeepSeek V3.1", "reasoning": True,
                                                 "input": ["text"], "contextWindow": 131072,
                                                 "maxTokens": 16384}},
    # Firmware routes first-party models under their vendor ids; unsure of its
    # current list, Claude Sonnet 4.5 was in it
    "firmware": {"claude-sonnet-4-5": {"name": "Claude Sonnet 4.5", "reasoning": True,
                                       "input": ["text", "image"], "contextWindow": 200000,
                                       "maxTokens": 64000}},
}

FAUX_ROW = {
    "name": "Faux (offline)", "api": "faux", "baseUrl": "faux://local", "envKeys": [],
    "auth": "none", "defaultModel": "faux-1", "reasoning": True,
    "input": ["text", "image"], "contextWindow": 128000, "maxTokens": 16384,
    "baseline": False,
    "models": {"faux-1": {"name": "Faux 1", "reasoning": True, "input": ["text", "image"],
                          "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                          "contextWindow": 128000, "maxTokens": 16384}},
}
EXTRA_ALIASES = {"demo": "faux"}


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def load(name):
    with open(SPEC / name, encoding="utf-8") as f:
        return json.load(f)


def clean_num(v):
    """Ints stay ints; floats lose binary noise (0.30000000000000004 -> 0.3)."""
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(repr(v))
    if isinstance(v, int):
        return v
    return float("%.7g" % v)


def cost_from_modelsdev(c):
    c = c or {}
    read = c.get("cache_read", c.get("cached_input", c.get("cache_input")))
    write = c.get("cache_write", c.get("cached_write"))
    return {"input": clean_num(c.get("input")), "output": clean_num(c.get("output")),
            "cacheRead": clean_num(read), "cacheWrite": clean_num(write)}


def cost_from_catalog(c):
    return {k: clean_num(c.get(k)) for k in ("input", "output", "cacheRead", "cacheWrite")}


def norm_key(mid):
    """Loose identity of a model id across providers (for partial entries)."""
    k = mid.lower().split("/")[-1].split("@")[0]
    k = re.sub(r"^(us|eu|global|jp|au|apac|ca|us-gov)\.", "", k)
    k = re.sub(r"^(anthropic|openai|xai|meta|deepseek|mistral|amazon|cohere|qwen|"
               r"moonshotai|minimax|zai|google|writer)\.", "", k)
    k = re.sub(r"(-v\d+)?(:\d+)?$", "", k)
    return k.replace(".", "-")


def is_full(x):
    return "name" in x and "limit" in x and "modalities" in x and "tool_call" in x


def build_base_index(md):
    exact, loose = {}, {}
    order = ORIGIN_PROVIDERS + sorted(p for p in md if p not in ORIGIN_PROVIDERS)
    for pid in order:
        for mid, x in md[pid]["models"].items():
            if is_full(x):
                exact.setdefault(mid.lower(), x)
                loose.setdefault(norm_key(mid), x)
    return exact, loose


def resolve(x, mid, index):
    """Fill a partial models.dev entry from a full entry of the same model elsewhere."""
    if is_full(x):
        return x
    exact, loose = index
    base = exact.get(mid.lower()) or loose.get(norm_key(mid))
    if base is None:
        return None
    merged = dict(base)
    for k, v in x.items():
        if k in ("limit", "modalities") and isinstance(v, dict):
            merged[k] = {**base.get(k, {}), **v}
        else:
            merged[k] = v  # own cost, name, status, provider override
    return merged


def placeholders(url):
    return set(re.findall(r"\{([^}]*)\}", url or ""))


def fmt(v):
    """Compact Python literal, double-quoted strings, ASCII only."""
    if v is True:
        return "True"
    if v is False:
        return "False"
    if v is None:
        return "None"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(json.dumps(k) + ": " + fmt(x) for k, x in v.items()) + "}"
    raise TypeError(type(v))


# ---------------------------------------------------------------------------
# Building rows
# ---------------------------------------------------------------------------

def auth_style(row):
    text = (row.get("auth") or "").strip().lower()
    for prefix, style in AUTH_PREFIXES:
        if text.startswith(prefix):
            return style
    raise SystemExit("no auth style for %s: %r" % (row["id"], row.get("auth")))


def modelsdev_candidates(pid, row_api, base_url, md, index, row_defaults):
    """Tool-capable chat models of models.dev provider(s) for our row `pid`."""
    out = {}
    for mdid in MODELSDEV_IDS.get(pid, [pid]):
        prov = md.get(mdid)
        if prov is None:
            continue
        for mid, raw in prov["models"].items():
            if mid in out:
                continue
            x = resolve(raw, mid, index)
            if x is None:
                if pid not in TRUST_PARTIAL or "name" not in raw:
                    continue
                x = dict(raw)
                x.setdefault("tool_call", True)
                x.setdefault("reasoning", row_defaults["reasoning"])
                lim = dict(x.get("limit") or {})
                lim.setdefault("context", row_defaults["contextWindow"])
                x["limit"] = lim
                mods = dict(x.get("modalities") or {})
                mods.setdefault("input", row_defaults["input"])
                mods.setdefault("output", ["text"])
                x["modalities"] = mods
            if x.get("status") == "deprecated":
                continue
            mods = x.get("modalities") or {}
            if "text" not in (mods.get("input") or []) or set(mods.get("output") or []) != {"text"}:
                continue
            if NON_CHAT.search(mid) or NON_CHAT.search(x.get("name", "")):
                continue
            if not x.get("tool_call") and pid not in NO_TOOLS_OK:
                continue
            ov = raw.get("provider") or {}
            if ov.get("api"):
                if not base_url.startswith(ov["api"].rstrip("/")):
                    continue
            elif ov.get("npm") or ov.get("shape"):
                fam = NPM_FAMILY.get(ov.get("npm"), "openai-completions")
                if ov.get("shape") == "responses":
                    fam = "openai-responses"
                if fam not in FAMILY_OK.get(row_api, {fam}):
                    continue
            elif pid in OVERRIDE_ONLY:
                continue
            lim = x.get("limit") or {}
            ctx = int(lim.get("context") or row_defaults["contextWindow"])
            mx = int(lim.get("output") or 0) or min(ctx, 16384)
            inp = ["text"] + (["image"] if "image" in mods.get("input", []) else [])
            out[mid] = {
                "rec": {"name": x.get("name") or mid, "reasoning": bool(x.get("reasoning")),
                        "input": inp, "cost": cost_from_modelsdev(x.get("cost")),
                        "contextWindow": ctx, "maxTokens": mx},
                "date": x.get("release_date") or "",
                "listed": True,
            }
    return out


def model_api(pid, mid, row_api):
    """The family of a model id by its provider's MODEL_API rules, else the row's."""
    for pattern, api in MODEL_API.get(pid, ()):
        if re.search(pattern, mid):
            return api
    return row_api


def catalog_candidates(pid, cat, md_dates):
    out = {}
    skip = CATALOG_SKIP_APIS.get(pid, set())
    for m in cat["providers"].get(PI_AI_IDS.get(pid, pid), []):
        if m["api"] in skip:
            continue
        out[m["id"]] = {
            "rec": {"name": m["name"], "reasoning": bool(m["reasoning"]),
                    "input": ["text"] + (["image"] if "image" in m["input"] else []),
                    "cost": cost_from_catalog(m["cost"]),
                    "contextWindow": int(m["contextWindow"]), "maxTokens": int(m["maxTokens"])},
            "date": md_dates.get(norm_key(m["id"]), ""),
            "listed": False,
            "api": m["api"],
        }
    return out


def pick_default(pid, cands, cat, md_listed):
    if pid in DEFAULT_MODELS:
        return DEFAULT_MODELS[pid], "explicit"
    pi_default = cat["defaultModel"].get(PI_AI_IDS.get(pid, pid))
    if pi_default and pi_default in cands and (md_listed is None or pi_default in md_listed):
        return pi_default, "pi-ai"
    return None, "missing"


def build(report=False):
    rows = load("providers.json")
    cat = load("models-catalog.json")
    md = load("modelsdev-catalog.json")["providers"]
    index = build_base_index(md)
    # release dates by loose key, for ranking catalog-only models
    md_dates = {}
    for pid in ORIGIN_PROVIDERS + sorted(md):
        for mid, x in md[pid]["models"].items():
            if x.get("release_date"):
                md_dates.setdefault(norm_key(mid), x["release_date"])

    providers, aliases, problems = {}, {}, []
    for row in rows:
        pid = row["id"]
        if pid in SKIP_IDS:
            continue
        fb = ROW_FALLBACKS.get(pid)
        reasoning = row["reasoning"] if row["reasoning"] is not None else fb[0]
        inp = row["input"] if row["input"] is not None else fb[1]
        ctx = row["context_window"] if row["context_window"] is not None else fb[2]
        mx = row["max_tokens"] if row["max_tokens"] is not None else fb[3]
        api = API_OVERRIDES.get(pid, row["api"])
        base_url = BASE_URL_OVERRIDES.get(pid, row["base_url"])
        defaults = {"reasoning": reasoning, "input": list(inp), "contextWindow": ctx,
                    "maxTokens": mx}

        # every listed id of the provider in models.dev, for rule 1
        md_keys = MODELSDEV_IDS.get(pid, [pid])
        md_listed = None
        if any(k in md for k in md_keys):
            md_listed = {mid for k in md_keys if k in md
                         for mid, x in md[k]["models"].items() if x.get("status") != "deprecated"}

        cands = modelsdev_candidates(pid, api, base_url, md, index, defaults)
        for mid, c in catalog_candidates(pid, cat, md_dates).items():
            if md_listed is None or mid in md_listed:
                c["listed"] = True
                c["date"] = cands.get(mid, c)["date"] or c["date"]
            elif any(mid in md[k]["models"] for k in md_keys if k in md):
                continue  # deprecated in models.dev
            elif c["date"] < UNLISTED_SINCE:
                continue  # gone from models.dev and old (or undated): most likely retired
            cands[mid] = c  # pi-ai values win
        if pid in MODEL_ID_REWRITE:
            pat, repl = MODEL_ID_REWRITE[pid]
            cands = {re.sub(pat, repl, k): v for k, v in sorted(cands.items())
                     if re.search(pat, k)}
        include, exclude = MODEL_INCLUDE.get(pid), MODEL_EXCLUDE.get(pid)
        cands = {k: v for k, v in cands.items()
                 if (not include or re.search(include, k))
                 and not (exclude and re.search(exclude, k))}
        for mid, spec in FALLBACK_MODELS.get(pid, {}).items():
            rec = dict(spec)
            if "borrow" in rec:
                src_pid = rec.pop("borrow")
                src = md[src_pid]["models"][mid]
                rec = {"name": src["name"], "reasoning": bool(src.get("reasoning")),
                       "input": ["text"] + (["image"] if "image" in src["modalities"]["input"] else []),
                       "contextWindow": src["limit"]["context"],
                       "maxTokens": src["limit"].get("output") or min(src["limit"]["context"], 16384),
                       **rec}
            rec.setdefault("cost", dict(_ZERO))
            order = ("name", "reasoning", "input", "cost", "contextWindow", "maxTokens")
            cands[mid] = {"rec": {k: rec[k] for k in order}, "date": "9999", "listed": True}

        default, how = pick_default(pid, cands, cat, md_listed)
        if default is None or default not in cands:
            problems.append("%s: default %r (%s) not among candidates" % (pid, default, how))

        ranked = sorted(cands, key=lambda m: (m != default, not cands[m]["listed"],
                                              _neg(cands[m]["date"]), m))
        chosen = sorted(ranked[:MAX_MODELS])
        models = {}
        for mid in chosen:
            rec = dict(cands[mid]["rec"])
            rec.update(MODEL_FORCE.get(pid, {}))
            api_of = model_api(pid, mid, api)
            if cands[mid].get("api") and pid in CATALOG_MODEL_API:
                if cands[mid]["api"] != api_of:
                    problems.append("%s: %s is %s in pi-ai's catalog, %s by MODEL_API"
                                    % (pid, mid, cands[mid]["api"], api_of))
                api_of = cands[mid]["api"]
            if api_of != api:
                rec["api"] = api_of
            mc = MODEL_COMPAT.get((pid, mid))
            if mc:
                rec["compat"] = mc
            models[mid] = rec

        entry = {
            "name": row["display_name"], "api": api, "baseUrl": base_url,
            "envKeys": list(row["env_keys"]) + ENV_KEYS_EXTRA.get(pid, []),
            "auth": AUTH_OVERRIDES.get(pid) or auth_style(row),
            "defaultModel": default, "reasoning": reasoning, "input": list(inp),
            "contextWindow": ctx, "maxTokens": mx,
            "baseline": bool(row["in_85_id_baseline_docs"]),
        }
        if pid in URL_VARS:
            entry["urlVars"] = URL_VARS[pid]
        if pid in URL_DEFAULTS:
            entry["urlDefaults"] = URL_DEFAULTS[pid]
        if pid in URL_ORIGIN:
            entry["urlOrigin"] = URL_ORIGIN[pid]
        if pid in COMPAT:
            entry["compat"] = COMPAT[pid]
        if pid in HEADERS:
            entry["headers"] = HEADERS[pid]
        if pid in ROW_MODEL_APIS:
            entry["modelApis"] = [list(rule) for rule in MODEL_API[pid]]
        entry["models"] = models
        providers[pid] = entry
        for a in row["aliases"]:
            aliases[a.lower()] = pid

        if report:
            print("== %-24s default=%-40s (%s) %d cands" % (pid, default, how, len(cands)))
            for mid in ranked[:12]:
                c = cands[mid]
                print("     %-50s %-10s %s %s" % (mid, c["date"], "L" if c["listed"] else "-",
                                               c["rec"]["name"]))

    providers["faux"] = FAUX_ROW
    aliases.update(EXTRA_ALIASES)
    check(rows, providers, aliases, problems)
    return providers, aliases, problems


def _neg(date):
    """Sort key for newest first: invert each character of an ISO-ish date."""
    return "".join(chr(0x7F - ord(ch)) for ch in date) if date else "\x7f"


def check(rows, providers, aliases, problems):
    ids = {r["id"] for r in rows} - SKIP_IDS
    missing = ids - set(providers)
    if missing:
        problems.append("missing rows: %s" % sorted(missing))
    by_id = {r["id"]: r for r in rows}
    for a, target in aliases.items():
        if a in providers:
            problems.append("alias %r equals a canonical id" % a)
        if target not in providers:
            problems.append("alias %r -> unknown %r" % (a, target))
    seen = {}
    for r in rows:
        for a in r["aliases"]:
            if a.lower() in seen and seen[a.lower()] != r["id"]:
                problems.append("alias %r claimed by %s and %s" % (a, seen[a.lower()], r["id"]))
            seen[a.lower()] = r["id"]
    for pid, p in providers.items():
        if p["auth"] not in AUTH_STYLES:
            problems.append("%s: bad auth %r" % (pid, p["auth"]))
        if p["defaultModel"] not in p["models"]:
            problems.append("%s: defaultModel not in models" % pid)
        if pid != "faux" and p["baseUrl"] != BASE_URL_OVERRIDES.get(pid, by_id[pid]["base_url"]):
            problems.append("%s: baseUrl differs from providers.json" % pid)
        listed = set(p.get("urlVars", {})) | set(p.get("urlDefaults", {}))
        for ph in placeholders(p["baseUrl"]) - listed - CODE_FILLED_PLACEHOLDERS:
            problems.append("%s: placeholder {%s} has no urlVars/urlDefaults" % (pid, ph))
        for var in listed - placeholders(p["baseUrl"]):
            problems.append("%s: urlVars/urlDefaults %r not in baseUrl" % (pid, var))
        if p["api"] == "anthropic-messages" and p["auth"] != "x-api-key":
            problems.append("%s: anthropic-messages row without x-api-key" % pid)
        if len(p["models"]) > MAX_MODELS:
            problems.append("%s: too many models" % pid)


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

HEADER = '''\
# SPDX-License-Identifier: MIT
"""Provider table for pi_min: data only, generated by tools/gen_providers_table.py.

Do not edit by hand; change the generator (or its inputs) and run it again.

PROVIDERS maps a canonical provider id to a row:
  name            display name
  api             API family: openai-completions, openai-responses, anthropic-messages,
                  google-generative-ai, google-vertex, bedrock-converse-stream, ...
  baseUrl         endpoint base; "{var}" placeholders are filled from urlVars/urlDefaults,
                  {model} and {deployment_id} from the model id
  envKeys         env vars tried in order for the credential
  auth            bearer | x-api-key | api-key | x-goog-api-key | none | oauth | sigv4 |
                  copilot | sap | google-cloud (an API key, an access token, Application
                  Default Credentials or the metadata server) | azure (api-key, or bearer
                  for an Entra ID token)
  defaultModel    model used when only the provider is given (listed in MODELS)
  contextWindow, maxTokens
                  limits for model ids not listed in MODELS
  reasoning, input
                  what the provider's models typically do; a model id not listed in
                  MODELS gets reasoning false and text input, not these
  baseline        true for the 85 canonical ids of the original provider baseline
  urlVars         optional: placeholder -> env vars tried in order
  urlDefaults     optional: placeholder -> value when no env var is set
  urlOrigin       optional: env vars whose value (a whole endpoint) replaces the
                  template's scheme and host
  compat          optional: openai-completions quirks (thinkingFormat, supportsStore, ...)
  headers         optional: static extra request headers
  modelApis       optional: [[model id regex, api], ...]: the family of a model id not
                  listed in MODELS, by the first regex it matches (else the row's api)

MODELS maps a provider id to its known models as JSON lines, one model a line:
  {"id", "name", "reasoning", "input", "cost", "contextWindow", "maxTokens", "compat"?, "api"?}
  cost is USD per million tokens {input, output, cacheRead, cacheWrite}, 0 where
  unknown. Strings, not dict literals, so importing this module compiles in a few
  milliseconds; pi_min parses only the provider it is asked for.

ALIASES maps a lowercase alias to its canonical provider id.
"""
'''

ROW_KEYS = ("name", "api", "baseUrl", "envKeys", "auth", "defaultModel", "reasoning",
            "input", "contextWindow", "maxTokens", "baseline", "urlVars", "urlDefaults",
            "urlOrigin", "compat", "headers", "modelApis")


def render(providers, aliases):
    out = [HEADER, "PROVIDERS = {\n"]
    for pid, p in providers.items():
        out.append("    %s: {\n" % json.dumps(pid))
        for k in ROW_KEYS:
            if k in p:
                v = p[k]
                if isinstance(v, dict):
                    v = {kk: v[kk] for kk in sorted(v)}
                out.append("        %s: %s,\n" % (json.dumps(k), fmt(v)))
        out.append("    },\n")
    out.append("}\n\nMODELS = {\n")
    for pid, p in providers.items():
        out.append('    %s: r"""\n' % json.dumps(pid))
        for mid in sorted(p["models"]):
            line = json.dumps(dict({"id": mid}, **p["models"][mid]), ensure_ascii=False)
            assert '"""' not in line and "\n" not in line
            out.append(line + "\n")
        out.append('""",\n')
    out.append("}\n\nALIASES = {\n")
    for a in sorted(aliases):
        out.append("    %s: %s,\n" % (json.dumps(a), json.dumps(aliases[a])))
    out.append("}\n")
    return "".join(out)


def main(argv):
    report = "--report" in argv
    providers, aliases, problems = build(report=report)
    if problems:
        for p in problems:
            print("problem:", p, file=sys.stderr)
        return 1
    text = render(providers, aliases)
    if "--check" in argv:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("providers_table.py is %s" % ("up to date" if same else "STALE"))
        return 0 if same else 1
    if not report:
        OUT.write_text(text, encoding="utf-8")
        n = sum(len(p["models"]) for p in providers.values())
        print("wrote %s: %d providers, %d aliases, %d models, %d bytes"
              % (OUT.name, len(providers), len(aliases), n, len(text.encode())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
