"""Checks of the event-stream invariants (CONTRACT.md §4) on a live stream.

Feed events one by one as they arrive: the `partial` message is mutated as the stream goes
on, so the checker snapshots what it needs at the moment each event is received.

    checker = StreamChecker(secrets=("test-key",))
    for event in pi_min.stream(...):
        checker.feed(event)
    message = checker.finish()
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any, Dict, Iterable, List, Optional

TERMINAL = ("done", "error")
BLOCK_TYPES = {"text": "text", "thinking": "thinking", "toolcall": "toolCall"}
DONE_REASONS = ("stop", "length", "toolUse")
ERROR_REASONS = ("error", "aborted")
ERROR_KINDS = ("auth", "rate_limit", "context_overflow", "invalid_request", "not_found",
               "server", "network", "timeout", "protocol", "aborted")
USAGE_KEYS = ("input", "output", "cacheRead", "cacheWrite", "totalTokens")
COST_KEYS = ("input", "output", "cacheRead", "cacheWrite")


class _Block:
    def __init__(self, kind: str):
        self.kind = kind  # "text" | "thinking" | "toolcall"
        self.deltas: List[str] = []
        self.ended = False
        self.cut = False  # a tool call ended with unfinished arguments (only allowed in a turn cut for length)
        self.end_event: Optional[Dict[str, Any]] = None

    @property
    def joined(self) -> str:
        return "".join(self.deltas)


class StreamChecker:
    """strict_partial: also require that, when a text/thinking delta arrives, the partial's
    block text equals the deltas received so far (the partial is not ahead of the events)."""

    def __init__(self, secrets: Iterable[str] = ("test-key",), strict_partial: bool = False):
        self.secrets = tuple(s for s in secrets if s)
        self.strict_partial = strict_partial
        self.events: List[Dict[str, Any]] = []
        self.types: List[str] = []
        self.msg: Optional[Dict[str, Any]] = None
        self.blocks: Dict[int, _Block] = {}
        self.terminal: Optional[Dict[str, Any]] = None

    # -- helpers --------------------------------------------------------------------------

    def _where(self) -> str:
        return "event #%d %s (types so far: %s)" % (len(self.types) - 1, self.types[-1], self.types)

    def _check_secrets(self, event: Dict[str, Any]) -> None:
        try:
            text = json.dumps(event, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise AssertionError("event is not JSON-serialisable at %s: %s" % (self._where(), exc))
        for secret in self.secrets:
            assert secret not in text, "secret %r leaked in %s" % (secret, self._where())

    def _content(self) -> List[Dict[str, Any]]:
        content = self.msg.get("content")
        assert isinstance(content, list), "partial['content'] is not a list at %s" % self._where()
        return content

    def _index(self, event: Dict[str, Any]) -> int:
        i = event.get("contentIndex")
        assert isinstance(i, int) and not isinstance(i, bool), "contentIndex missing at %s" % self._where()
        assert 0 <= i < len(self._content()), (
            "contentIndex %d out of range (len %d) at %s" % (i, len(self._content()), self._where()))
        return i

    # -- feeding --------------------------------------------------------------------------

    def feed(self, event: Dict[str, Any]) -> None:
        assert isinstance(event, dict), "event is not a dict: %r" % (event,)
        etype = event.get("type")
        self.types.append(str(etype))
        self.events.append({k: v for k, v in event.items() if k not in ("partial", "message", "error")})
        assert self.terminal is None, "event after the terminal event: %s" % self._where()
        self._check_secrets(event)

        if len(self.types) == 1:
            assert etype == "start", "first event must be start, got %r" % (etype,)
            msg = event.get("partial")
            assert isinstance(msg, dict), "start.partial is not a dict"
            assert msg.get("role") == "assistant", "partial role is %r" % (msg.get("role"),)
            self.msg = msg
            self._content()
            return
        assert etype != "start", "second start event at %s" % self._where()

        if etype in TERMINAL:
            self._terminal(event)
            return

        assert event.get("partial") is self.msg, "partial is not the same object at %s" % self._where()
        kind, _, phase = str(etype).rpartition("_")
        assert kind in BLOCK_TYPES and phase in ("start", "delta", "end"), "unknown event type %r" % etype
        i = self._index(event)
        block_dict = self._content()[i]
        assert isinstance(block_dict, dict) and block_dict.get("type") == BLOCK_TYPES[kind], (
            "content[%d] is %r, expected type %s at %s" % (i, block_dict, BLOCK_TYPES[kind], self._where()))

        if phase == "start":
            assert i not in self.blocks, "block %d started twice at %s" % (i, self._where())
            for j, other in self.blocks.items():
                assert j < i, "block %d started after block %d at %s" % (i, j, self._where())
            self.blocks[i] = _Block(kind)
            if kind == "toolcall":
                assert isinstance(block_dict.get("arguments"), dict), "toolCall arguments not a dict at start"
            return

        block = self.blocks.get(i)
        assert block is not None, "%s before %s_start for index %d" % (etype, kind, i)
        assert block.kind == kind, "%s on a %s block" % (etype, block.kind)
        assert not block.ended, "%s after %s_end for index %d" % (etype, kind, i)

        if phase == "delta":
            delta = event.get("delta")
            assert isinstance(delta, str), "delta is not a str at %s" % self._where()
            block.deltas.append(delta)
            if kind == "toolcall":
                args = block_dict.get("arguments")
                assert isinstance(args, dict), (
                    "toolCall arguments during deltas must be a dict, got %r at %s" % (args, self._where()))
            elif self.strict_partial:
                # The partial message describes the stream up to this event, not beyond it.
                field = "text" if kind == "text" else "thinking"
                assert block_dict.get(field) == block.joined, (
                    "content[%d].%s is %r but deltas so far join to %r at %s"
                    % (i, field, block_dict.get(field), block.joined, self._where()))
            return

        # phase == "end"
        block.ended = True
        block.end_event = copy.deepcopy({k: v for k, v in event.items() if k != "partial"})
        if kind == "toolcall":
            call = event.get("toolCall")
            assert isinstance(call, dict) and call.get("type") == "toolCall", "toolcall_end.toolCall: %r" % (call,)
            assert isinstance(call.get("id"), str) and isinstance(call.get("name"), str)
            assert isinstance(call.get("arguments"), dict)
            assert call == block_dict, "toolcall_end.toolCall %r differs from content[%d] %r" % (call, i, block_dict)
            block.cut = not isinstance(_parse(block.joined), dict)
            if not block.cut:
                self._check_arguments(block, call, "toolcall_end")
        else:
            field = "text" if kind == "text" else "thinking"
            assert event.get("content") == block.joined, (
                "%s.content %r != joined deltas %r" % (etype, event.get("content"), block.joined))
            assert block_dict.get(field) == block.joined

    def _check_arguments(self, block: _Block, call: Dict[str, Any], where: str) -> None:
        raw = block.joined
        expected = json.loads(raw) if raw.strip() else {}
        assert call.get("arguments") == expected, (
            "%s: toolCall arguments %r != json.loads(joined deltas %r)" % (where, call.get("arguments"), raw))

    def _terminal(self, event: Dict[str, Any]) -> None:
        etype = event["type"]
        key = "message" if etype == "done" else "error"
        msg = event.get(key)
        assert msg is self.msg, "%s.%s is not the partial object" % (etype, key)
        self.terminal = event
        content = self._content()
        reason = event.get("reason")
        stop = msg.get("stopReason")
        assert reason == stop, "%s.reason %r != stopReason %r" % (etype, reason, stop)
        for field in ("api", "provider", "model"):
            assert isinstance(msg.get(field), str) and msg.get(field), "message.%s missing" % field
        assert isinstance(msg.get("timestamp"), int), "message.timestamp must be int ms"
        assert sorted(self.blocks) == list(range(len(content))), (
            "content has %d blocks but blocks %s were announced" % (len(content), sorted(self.blocks)))

        cut = [i for i, b in self.blocks.items() if b.cut]
        assert not cut or (etype == "done" and reason == "length"), (
            "tool calls %s ended with unfinished arguments %r, but the turn ended with %s %r, not done 'length'"
            % (cut, [self.blocks[i].joined for i in cut], etype, reason))
        for i, block in self.blocks.items():
            block_dict = content[i]
            if block.kind == "toolcall":
                if etype == "done" and not block.cut:
                    self._check_arguments(block, block_dict, "done")
            else:
                field = "text" if block.kind == "text" else "thinking"
                assert block_dict.get(field) == block.joined, (
                    "final content[%d].%s %r != joined deltas %r" % (i, field, block_dict.get(field), block.joined))

        if etype == "done":
            assert reason in DONE_REASONS, "done.reason %r" % (reason,)
            unended = [i for i, b in self.blocks.items() if not b.ended]
            assert not unended, "blocks %s never ended before done" % unended
            has_calls = any(b.get("type") == "toolCall" for b in content)
            # a turn cut for length may hold tool calls (CONTRACT §4.3) and is never a toolUse
            assert (stop == "toolUse") == has_calls or (stop == "length" and has_calls), (
                "stopReason %r but toolCall blocks present: %s" % (stop, has_calls))
            assert "errorMessage" not in msg or not msg["errorMessage"], "done with errorMessage"
        else:
            assert reason in ERROR_REASONS, "error.reason %r" % (reason,)
            assert isinstance(msg.get("errorMessage"), str) and msg["errorMessage"], "error without errorMessage"
            if "errorKind" in msg:
                assert msg["errorKind"] in ERROR_KINDS, "errorKind %r" % (msg["errorKind"],)
            if "errorStatus" in msg:
                assert isinstance(msg["errorStatus"], int) and not isinstance(msg["errorStatus"], bool)
        check_usage(msg.get("usage"))

    def finish(self) -> Dict[str, Any]:
        assert self.types, "the stream yielded no events"
        assert self.terminal is not None, "no terminal event; types: %s" % self.types
        return self.msg


def _parse(raw: str) -> Any:
    """The JSON value of a tool call's joined argument deltas ({} for none), None if it is not JSON."""
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_usage(usage: Any) -> None:
    assert isinstance(usage, dict), "usage missing: %r" % (usage,)
    for key in USAGE_KEYS:
        assert _is_int(usage.get(key)) and usage[key] >= 0, "usage.%s = %r" % (key, usage.get(key))
    total = usage["input"] + usage["output"] + usage["cacheRead"] + usage["cacheWrite"]
    assert usage["totalTokens"] == total, "usage.totalTokens %d != sum of parts %d" % (usage["totalTokens"], total)
    cost = usage.get("cost")
    assert isinstance(cost, dict), "usage.cost missing"
    for key in COST_KEYS + ("total",):
        assert _is_num(cost.get(key)) and cost[key] >= 0, "usage.cost.%s = %r" % (key, cost.get(key))
    parts = sum(cost[k] for k in COST_KEYS)
    assert math.isclose(cost["total"], parts, rel_tol=1e-9, abs_tol=1e-12), (
        "cost.total %r != sum of parts %r" % (cost["total"], parts))


def check_stream(events: Iterable[Dict[str, Any]], secrets: Iterable[str] = ("test-key",)) -> Dict[str, Any]:
    """Check a whole event sequence. Prefer StreamChecker.feed inside the loop: a list of
    already-received events only shows the final state of the shared partial message."""
    checker = StreamChecker(secrets)
    for event in events:
        checker.feed(event)
    return checker.finish()
