"""Unit tests of pi_min.parse_partial_json: best-effort parse of streamed tool arguments."""

from __future__ import annotations

import json

import pytest

import pi_min

# Realistic tool-call argument strings, in the spacing styles providers actually send.
FULL = [
    '{"city": "Edinburgh", "country": "GB", "units": "c"}',
    '{"ticker":"AAPL","exchange":"NASDAQ"}',
    '{"path": "src/main.py", "edits": [{"old": "print(\\"hi\\")", "new": "print(\\"bye\\")\\n"}], "dry_run": false}',
    '{"command": "ls -la C:\\\\Users\\\\me && echo \\"done\\"", "timeout": 30.5, "env": null}',
    '{"query": "caf\\u00e9 na\\u00efve \\ud83d\\ude80", "limit": 10, "offset": -3, "score": 1.5e-3, "exact": true}',
    '{"text": "Привет, мир 👋 — «ok»", "tags": ["a", "b", []], "nested": {"deep": {"deeper": [1, [2, [3]]]}}}',
    '{\n  "a": [\n    1,\n    2\n  ],\n  "b": {"c": "line1\\nline2\\tTab"}\n}',
    '{"empty_obj": {}, "empty_arr": [], "empty_str": "", "zero": 0, "neg": -0.25, "big": 12345678901234567890}',
]


def keys_subset(partial, full, path="$"):
    """Every key in `partial` (recursively) exists at the same place in `full`."""
    if isinstance(partial, dict):
        assert isinstance(full, dict), "%s: got an object where the full value is %r" % (path, full)
        for key, value in partial.items():
            assert key in full, "%s: key %r is not in the full object" % (path, key)
            keys_subset(value, full[key], "%s.%s" % (path, key))
    elif isinstance(partial, list) and isinstance(full, list):
        assert len(partial) <= len(full), "%s: %d items, full has %d" % (path, len(partial), len(full))
        for i, item in enumerate(partial):
            keys_subset(item, full[i], "%s[%d]" % (path, i))


@pytest.mark.parametrize("text", FULL)
def test_complete_json_parses_exactly(text):
    assert pi_min.parse_partial_json(text) == json.loads(text)


@pytest.mark.parametrize("text", FULL)
def test_every_prefix_gives_a_dict_with_known_keys(text):
    full = json.loads(text)
    for n in range(len(text) + 1):
        prefix = text[:n]
        got = pi_min.parse_partial_json(prefix)
        assert isinstance(got, dict), "prefix %r gave %r" % (prefix, got)
        keys_subset(got, full)
    assert pi_min.parse_partial_json(text) == full


@pytest.mark.parametrize("text", FULL)
def test_prefixes_ending_after_a_complete_member_keep_it(text):
    """Once a top-level member's value is complete and a comma follows, it is in the parse."""
    full = json.loads(text)
    decoder = json.JSONDecoder()
    for n in range(1, len(text)):
        if text[n - 1] != "," or text[:n].count("{") - text[:n].count("}") != 1:
            continue
        # Only top-level commas outside strings: re-parse the prefix closed with "}".
        try:
            closed = decoder.decode(text[:n - 1] + "}")
        except ValueError:
            continue
        got = pi_min.parse_partial_json(text[:n])
        for key, value in closed.items():
            assert got.get(key) == value == full[key], "prefix %r lost %r" % (text[:n], key)


@pytest.mark.parametrize("text, expected", [
    ('{"a":"hel', {"a": "hel"}),
    ('{"a":1,"b', {"a": 1}),
    ('{"a":1,"b":', {"a": 1}),
    ('{"a": [1, 2', {"a": [1, 2]}),
    ('{"a": {"b": "c"', {"a": {"b": "c"}}),
    ('{"a": "x\\"y', {"a": 'x"y'}),
    ('{"a": "C:\\\\dir', {"a": "C:\\dir"}),
    ('{"a": "line\\nnext', {"a": "line\nnext"}),
    ('{"a": "caf\\u00e9', {"a": "caf\u00e9"}),
    ('{"a": "Привет', {"a": "Привет"}),
    ('{"a": true, "b": null, "c": false', {"a": True, "b": None, "c": False}),
    ("{", {}),
    ("   {  ", {}),
])
def test_known_prefixes(text, expected):
    assert pi_min.parse_partial_json(text) == expected


@pytest.mark.parametrize("text", ['{"a": "x\\', '{"a": "x\\u', '{"a": "x\\u00', '{"a": "x\\u00e'])
def test_incomplete_escape_is_dropped_not_garbled(text):
    got = pi_min.parse_partial_json(text)
    assert got in ({}, {"a": "x"}), got


@pytest.mark.parametrize("text", ["", " ", "\n\t ", "[1]", '"x"', "42", "true", "null", "[{\"a\": 1}]", "[", '"abc'])
def test_empty_and_non_object_give_empty_dict(text):
    assert pi_min.parse_partial_json(text) == {}


@pytest.mark.parametrize("text", ["}", "{]", '{"a" 1}', '{"a":1}}', "{,}", "nonsense", '{"a":1} trailing'])
def test_garbage_never_raises(text):
    assert isinstance(pi_min.parse_partial_json(text), dict)


def test_long_argument_prefixes_are_cheap_enough():
    # A large streamed argument (e.g. a file body) parsed at many prefixes must not explode.
    body = json.dumps({"path": "big.txt", "content": "x\\n" * 20000})
    for n in range(0, len(body), 997):
        assert isinstance(pi_min.parse_partial_json(body[:n]), dict)
    assert pi_min.parse_partial_json(body) == json.loads(body)
