"""The stream checker must reject broken streams (otherwise the fixture tests prove nothing)."""

from __future__ import annotations

import pytest

from invariants import StreamChecker, check_stream


def usage(i=1, o=2, cr=0, cw=0, total=None):
    return {"input": i, "output": o, "cacheRead": cr, "cacheWrite": cw,
            "totalTokens": i + o + cr + cw if total is None else total,
            "cost": {"input": 0.1, "output": 0.2, "cacheRead": 0.0, "cacheWrite": 0.0, "total": 0.3}}


def message():
    return {"role": "assistant", "content": [], "api": "openai-completions", "provider": "groq",
            "model": "m", "usage": usage(), "stopReason": "stop", "timestamp": 1}


def good_text_stream():
    """Yield events lazily, mutating the partial between them like a real stream."""
    msg = message()
    yield {"type": "start", "partial": msg}
    msg["content"].append({"type": "text", "text": ""})
    yield {"type": "text_start", "contentIndex": 0, "partial": msg}
    for piece in ("Hel", "lo"):
        msg["content"][0]["text"] += piece
        yield {"type": "text_delta", "contentIndex": 0, "delta": piece, "partial": msg}
    yield {"type": "text_end", "contentIndex": 0, "content": "Hello", "partial": msg}
    yield {"type": "done", "reason": "stop", "message": msg}


def good_tool_stream(final_stop="toolUse", args_during=None):
    msg = message()
    yield {"type": "start", "partial": msg}
    call = {"type": "toolCall", "id": "c1", "name": "f", "arguments": {}}
    msg["content"].append(call)
    yield {"type": "toolcall_start", "contentIndex": 0, "partial": msg}
    for piece, parsed in (('{"a": ', {}), ('1}', {"a": 1})):
        call["arguments"] = parsed if args_during is None else args_during
        yield {"type": "toolcall_delta", "contentIndex": 0, "delta": piece, "partial": msg}
    call["arguments"] = {"a": 1}
    yield {"type": "toolcall_end", "contentIndex": 0, "toolCall": dict(call), "partial": msg}
    msg["stopReason"] = final_stop
    yield {"type": "done", "reason": final_stop, "message": msg}


def cut_tool_stream(final_stop="length"):
    """A tool call whose arguments were cut by the token limit, ended with a best-effort parse."""
    msg = message()
    yield {"type": "start", "partial": msg}
    call = {"type": "toolCall", "id": "c1", "name": "f", "arguments": {}}
    msg["content"].append(call)
    yield {"type": "toolcall_start", "contentIndex": 0, "partial": msg}
    call["arguments"] = {"a": "x"}
    yield {"type": "toolcall_delta", "contentIndex": 0, "delta": '{"a": "x', "partial": msg}
    yield {"type": "toolcall_end", "contentIndex": 0, "toolCall": dict(call), "partial": msg}
    msg["stopReason"] = final_stop
    yield {"type": "done", "reason": final_stop, "message": msg}


def test_good_streams_pass():
    assert check_stream(good_text_stream())["content"][0]["text"] == "Hello"
    checker = StreamChecker(strict_partial=True)
    for e in good_text_stream():
        checker.feed(e)
    checker.finish()
    check_stream(good_tool_stream())


def test_rejects_missing_start():
    events = list(good_text_stream())[1:]
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_two_terminals_and_missing_terminal():
    events = list(good_text_stream())
    with pytest.raises(AssertionError):
        check_stream(events + [events[-1]])
    with pytest.raises(AssertionError):
        check_stream(events[:-1])


def test_rejects_delta_before_start():
    events = list(good_text_stream())
    del events[1]
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_deltas_not_matching_final_text():
    events = list(good_text_stream())
    events[2] = dict(events[2], delta="Hxl")
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_block_not_ended_before_done():
    events = list(good_text_stream())
    del events[4]
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_other_partial_object():
    events = list(good_text_stream())
    events[2] = dict(events[2], partial=dict(events[2]["partial"]))
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_secret_anywhere():
    events = list(good_text_stream())
    events[-1]["message"]["errorMessage"] = ""
    events[-1]["message"]["note"] = "key=test-key"
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_bad_usage():
    events = list(good_text_stream())
    events[-1]["message"]["usage"] = usage(total=99)
    with pytest.raises(AssertionError):
        check_stream(events)
    events[-1]["message"]["usage"] = usage()
    events[-1]["message"]["usage"]["cost"]["total"] = 1.0
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_wrong_stop_reasons():
    with pytest.raises(AssertionError):
        check_stream(good_tool_stream(final_stop="stop"))
    events = list(good_text_stream())
    events[-1]["message"]["stopReason"] = "toolUse"
    events[-1] = dict(events[-1], reason="toolUse")
    with pytest.raises(AssertionError):
        check_stream(events)


def test_rejects_non_dict_arguments_during_deltas():
    checker = StreamChecker()
    with pytest.raises(AssertionError):
        for e in good_tool_stream(args_during='{"a": '):
            checker.feed(e)


def test_strict_partial_rejects_partial_ahead_of_events():
    events = list(good_text_stream())  # generator fully run: partial already holds "Hello"
    checker = StreamChecker(strict_partial=True)
    with pytest.raises(AssertionError):
        for e in events:
            checker.feed(e)


def test_unfinished_tool_arguments_only_in_a_turn_cut_for_length():
    check_stream(cut_tool_stream("length"))
    for stop in ("toolUse", "stop"):
        with pytest.raises(AssertionError):
            check_stream(cut_tool_stream(stop))
    events = list(cut_tool_stream("length"))
    msg = events[-1]["message"]
    msg.update(stopReason="error", errorMessage="boom")
    with pytest.raises(AssertionError):
        check_stream(events[:-1] + [{"type": "error", "reason": "error", "error": msg}])
    # a complete call in a length turn still has to match its deltas
    events = list(good_tool_stream(final_stop="length"))
    check_stream(events)
    events[3] = dict(events[3], delta="2}")
    with pytest.raises(AssertionError):
        check_stream(events)
