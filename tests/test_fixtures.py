"""Replay the recorded-stream corpus in fixtures/<family>/*.json through the public API.

Each fixture is replayed twice against a real loopback HTTP server:
  whole - Content-Length framing, the body in one write;
  split - chunked framing, the body cut into 1-3 byte pieces, each its own HTTP chunk.
Both replays must satisfy the stream invariants and the fixture's expectations, and
complete() with the same inputs must return the same message (timestamp aside).
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import threading
from typing import Any, Dict, List

import pytest

import pi_min
from invariants import StreamChecker
from loopback import Loopback, Reply

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
RUN_LIMIT = 20.0  # seconds; a stuck generator fails the test instead of hanging the suite
API_KEY = "test-key"


def _load(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _cases():
    cases = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*", "*.json"))):
        family = os.path.basename(os.path.dirname(path))
        name = os.path.splitext(os.path.basename(path))[0]
        fixture = _load(path)
        modes = ["whole"] + (["split"] if fixture.get("split", True) else [])
        for mode in modes:
            cases.append(pytest.param(path, mode, id="%s/%s-%s" % (family, name, mode)))
    return cases


# -- matching -------------------------------------------------------------------------------

ABSENT = "$absent"


def match(expected: Any, actual: Any, path: str = "$") -> List[str]:
    """Subset match: dict keys recursively, lists element-wise with equal length, floats
    approximately. A JSON string in `actual` where `expected` is a dict/list is parsed first
    (tool-call `function.arguments` in request bodies). The value "$absent" asserts that
    a key is not there at all."""
    if isinstance(expected, (dict, list)) and isinstance(actual, str):
        try:
            actual = json.loads(actual)
        except ValueError:
            return ["%s: expected %r, got the string %r" % (path, expected, actual)]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return ["%s: expected an object, got %r" % (path, actual)]
        errors = []
        for key, value in expected.items():
            if value == ABSENT:
                if key in actual:
                    errors.append("%s.%s: expected no such key, got %r" % (path, key, actual[key]))
            elif key not in actual:
                errors.append("%s.%s: missing (expected %r)" % (path, key, value))
            else:
                errors.extend(match(value, actual[key], "%s.%s" % (path, key)))
        return errors
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return ["%s: expected a list, got %r" % (path, actual)]
        if len(expected) != len(actual):
            return ["%s: expected %d items, got %d: %r" % (path, len(expected), len(actual), actual)]
        errors = []
        for i, (e, a) in enumerate(zip(expected, actual)):
            errors.extend(match(e, a, "%s[%d]" % (path, i)))
        return errors
    if isinstance(expected, bool) or expected is None or isinstance(actual, bool):
        return [] if expected is actual else ["%s: expected %r, got %r" % (path, expected, actual)]
    if isinstance(expected, float) or isinstance(actual, float):
        ok = isinstance(actual, (int, float)) and math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-12)
        return [] if ok else ["%s: expected %r, got %r" % (path, expected, actual)]
    if type(expected) is not type(actual) or expected != actual:
        return ["%s: expected %r, got %r" % (path, expected, actual)]
    return []


def assert_match(expected: Any, actual: Any, what: str) -> None:
    errors = match(expected, actual)
    assert not errors, "%s does not match:\n  %s" % (what, "\n  ".join(errors))


def collapse(types: List[str]) -> List[str]:
    out: List[str] = []
    for t in types:
        if not out or out[-1] != t:
            out.append(t)
    return out


# -- running --------------------------------------------------------------------------------

def build_replies(fixture: Dict[str, Any], fixture_dir: str, mode: str) -> List[Reply]:
    replies = []
    for spec in fixture["replies"]:
        if "bodyFile" in spec:
            with open(os.path.join(fixture_dir, spec["bodyFile"]), "rb") as f:
                body = f.read()
            default_ct = "text/event-stream"
        elif "json" in spec:
            body = json.dumps(spec["json"]).encode("utf-8")
            default_ct = "application/json"
        else:
            body = spec.get("body", "").encode("utf-8")
            default_ct = "text/event-stream"
        headers = spec.get("headers", {"Content-Type": default_ct})
        split = mode == "split"
        framing = spec.get("mode") or ("chunked" if split else "length")
        replies.append(Reply(status=spec.get("status", 200), headers=headers, body=body, mode=framing,
                             split=split, hang=spec.get("hang", False), truncate=spec.get("truncate", False)))
    return replies


def run_bounded(fn, limit: float = RUN_LIMIT):
    """Run fn() in a daemon thread; fail (instead of hanging) if it does not finish in time."""
    box: Dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="fixture-run", daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), "the stream did not finish within %.0f s" % limit
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_args(pi_min, fixture: Dict[str, Any], url: str, signal: threading.Event):
    model = pi_min.get_model(fixture.get("provider", "groq"), fixture.get("model"),
                             **fixture.get("modelOverrides", {}))
    options = dict(fixture.get("options", {}))
    options.setdefault("max_retries", 2)
    kwargs = dict(base_url=url + "/v1", api_key=API_KEY, timeout=5, signal=signal, **options)
    return model, copy.deepcopy(fixture.get("context", "hi")), kwargs


def stream_fixture(pi_min, fixture: Dict[str, Any], url: str, strict_partial: bool = False):
    signal = threading.Event()
    model, context, kwargs = call_args(pi_min, fixture, url, signal)
    abort_after = fixture.get("abortAfter")
    checker = StreamChecker(secrets=(API_KEY,), strict_partial=strict_partial)

    def consume():
        for event in pi_min.stream(model, context, **kwargs):
            checker.feed(event)
            if abort_after and event.get("type") == abort_after:
                signal.set()
        return checker.finish()

    message = run_bounded(consume)
    return checker, message


@pytest.mark.parametrize("path, mode", _cases())
def test_fixture(path, mode, server, monkeypatch):
    fixture = _load(path)
    for name, value in fixture.get("env", {}).items():  # e.g. Vertex AI's project and location
        monkeypatch.setenv(name, value)
    fixture_dir = os.path.dirname(path)
    expect = fixture.get("expect", {})

    server.script(build_replies(fixture, fixture_dir, mode))
    checker, message = stream_fixture(pi_min, fixture, server.url)

    # requests
    if "requestCount" in expect:
        assert len(server.requests) == expect["requestCount"], (
            "expected %d request(s), got %d: %r" % (expect["requestCount"], len(server.requests), server.requests))
    req_expect = expect.get("request")
    if req_expect:
        for n, req in enumerate(server.requests):
            actual = {"method": req.method, "path": req.path, "headers": req.headers,
                      "json": req.json if req.json is not None else req.body}
            assert_match(req_expect, actual, "request #%d" % n)

    # events
    if "events" in expect:
        assert checker.types == expect["events"], "event types %s != %s" % (checker.types, expect["events"])
    if "eventsCollapsed" in expect:
        assert collapse(checker.types) == expect["eventsCollapsed"], (
            "event types %s (collapsed %s) != %s" % (checker.types, collapse(checker.types), expect["eventsCollapsed"]))

    # final message
    if "message" in expect:
        assert_match(expect["message"], message, "final message")
    for needle in expect.get("errorMessageContains", []):
        text = message.get("errorMessage") or ""
        assert needle.lower() in text.lower(), "errorMessage %r does not contain %r" % (text, needle)
    if fixture.get("abortAfter"):
        assert message.get("errorKind") != "timeout", "the abort was only noticed by the read timeout"

    if fixture.get("abortAfter"):
        return  # the checks below have no point at which to set the signal mid-stream
    streamed = {k: v for k, v in message.items() if k != "timestamp"}

    # the split replay yields exactly what the whole replay yields
    if mode == "split":
        with Loopback() as whole:
            whole.script(build_replies(fixture, fixture_dir, "whole"))
            whole_checker, whole_message = stream_fixture(pi_min, fixture, whole.url)
        assert checker.types == whole_checker.types, "split %s != whole %s" % (checker.types, whole_checker.types)
        assert {k: v for k, v in whole_message.items() if k != "timestamp"} == streamed

    # complete() on a fresh server with the same script returns the same message
    with Loopback() as again:
        again.script(build_replies(fixture, fixture_dir, mode))
        model, context, kwargs = call_args(pi_min, fixture, again.url, threading.Event())
        completed = run_bounded(lambda: pi_min.complete(model, context, **kwargs))
        assert len(again.requests) == len(server.requests)
    completed = {k: v for k, v in completed.items() if k != "timestamp"}
    assert completed == streamed


@pytest.mark.parametrize("name", ["text", "thinking_reasoning_content", "unicode"])
def test_partial_is_in_step_with_events(name, server):
    """When several SSE events arrive in one read, each event must still be yielded with the
    partial message as it stands after that event, not after the whole read (a consumer
    rendering event["partial"] alongside event["delta"] would otherwise show text twice)."""
    path = os.path.join(FIXTURES, "openai-completions", name + ".json")
    fixture = _load(path)
    server.script(build_replies(fixture, os.path.dirname(path), "whole"))
    stream_fixture(pi_min, fixture, server.url, strict_partial=True)


def test_corpus_is_complete():
    """Every fixture parses, names existing body files, and every .sse file is used."""
    used = set()
    paths = sorted(glob.glob(os.path.join(FIXTURES, "*", "*.json")))
    assert len(paths) >= 40
    for path in paths:
        fixture = _load(path)
        assert fixture.get("description"), path
        assert fixture.get("replies"), path
        assert "expect" in fixture and "message" in fixture["expect"], path
        for spec in fixture["replies"]:
            if "bodyFile" in spec:
                body_path = os.path.join(os.path.dirname(path), spec["bodyFile"])
                assert os.path.isfile(body_path), body_path
                used.add(os.path.abspath(body_path))
    for sse in glob.glob(os.path.join(FIXTURES, "*", "*.sse")):
        assert os.path.abspath(sse) in used, "unused body file %s" % sse


def test_match_helper():
    """The subset matcher itself: it must be able to fail."""
    assert match({"a": 1}, {"a": 1, "b": 2}) == []
    assert match({"a": 1}, {"a": 2})
    assert match({"a": 1}, {})
    assert match([1, 2], [1, 2, 3])
    assert match({"x": [{"k": 1}]}, {"x": [{"k": 1, "z": 0}]}) == []
    assert match({"args": {"city": "Paris"}}, {"args": '{"city": "Paris"}'}) == []
    assert match({"args": {"city": "Paris"}}, {"args": '{"city": "Rome"}'})
    assert match(1, True) and match(True, 1)
    assert match(0.1 + 0.2, 0.3) == []
    assert match("1", 1)
