"""Shared pytest fixtures: a fresh loopback server per test and an isolated environment."""

from __future__ import annotations

import gc
import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS_DIR)
for _path in (ROOT, TESTS_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from loopback import Loopback  # noqa: E402

_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
_SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_API_TOKEN")
_DROP_PREFIXES = ("PI_", "AWS_", "SAP_AI_CORE_", "AICORE_", "GITLAB_", "CO_API_")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No real credentials, proxies or user config can leak into a test."""
    for name in list(os.environ):
        upper = name.upper()
        if (upper.endswith(_SECRET_SUFFIXES) or upper.startswith(_DROP_PREFIXES)
                or upper in _PROXY_VARS):
            monkeypatch.delenv(name, raising=False)
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    agent_dir = tmp_path / "pi-agent"
    agent_dir.mkdir()
    monkeypatch.setenv("PI_CODING_AGENT_DIR", str(agent_dir))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return agent_dir


@pytest.fixture
def server():
    srv = Loopback()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def collect_garbage():
    """Empty the connection pool and collect after every test, so a socket left open
    fails the test that leaked it (ResourceWarnings are errors), not a later one."""
    yield
    import pi_min
    for idle in list(pi_min._POOL.values()):  # no keep-alive socket outlives its test's server
        for conn, _ in idle:
            conn.close()
    pi_min._POOL.clear()
    gc.collect()
