# SPDX-License-Identifier: MIT
"""pi_min: stream from every major LLM API through one synchronous generator.

Two files and the standard library: this module and ``providers_table.py`` (data).
A sibling of pi-ai (TypeScript) and pi_agent_rust: the same provider ids, the same
JSON for conversations and the same config files (``~/.pi/agent``).

    import pi_min
    for event in pi_min.stream("groq", "Say hi"):
        if event["type"] == "text_delta":
            print(event["delta"], end="", flush=True)

Sections, top to bottom (``grep -n '^# ====' pi_min.py``): errors, SSE parser,
transport, partial JSON, message builder, message transforms, API families,
registry of families, providers and credentials, public API, CLI.
"""

from __future__ import annotations

import json
import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs nothing at run time
    import argparse
    import re
    import socket
    import ssl
    import threading
    from http.client import HTTPConnection, HTTPResponse
    from types import ModuleType
    from typing import (Any, Callable, Generator, Hashable, Iterable, Iterator, Literal, Mapping,
                        Optional, Protocol, Sequence, TypedDict, Union)

    # The data shapes of CONTRACT §2 and §4, for type checkers only: at run time they
    # are plain dicts. Optional keys sit in a total=False subclass of the required ones.

    class _TextContent(TypedDict):
        type: Literal["text"]
        text: str

    class TextContent(_TextContent, total=False):
        textSignature: str

    class _ThinkingContent(TypedDict):
        type: Literal["thinking"]
        thinking: str

    class ThinkingContent(_ThinkingContent, total=False):
        thinkingSignature: str
        redacted: bool

    class ImageContent(TypedDict):
        type: Literal["image"]
        data: str  # base64
        mimeType: str

    class _ToolCall(TypedDict):
        type: Literal["toolCall"]
        id: str
        name: str
        arguments: dict[str, Any]

    class ToolCall(_ToolCall, total=False):
        thoughtSignature: str

    class Cost(TypedDict):  # dollars
        input: float
        output: float
        cacheRead: float
        cacheWrite: float
        total: float

    class Usage(TypedDict):
        input: int  # prompt tokens not served from cache
        output: int
        cacheRead: int
        cacheWrite: int
        totalTokens: int
        cost: Cost

    StopReason = Literal["stop", "length", "toolUse", "error", "aborted"]
    _DoneReason = Literal["stop", "length", "toolUse"]
    _ErrorReason = Literal["error", "aborted"]

    class _UserMessage(TypedDict):
        role: Literal["user"]
        content: Union[str, list[Union[TextContent, ImageContent]]]

    class UserMessage(_UserMessage, total=False):
        timestamp: int  # ms

    class _AssistantMessage(TypedDict):
        role: Literal["assistant"]
        content: list[Union[TextContent, ThinkingContent, ToolCall]]
        api: str
        provider: str
        model: str
        usage: Usage
        stopReason: StopReason
        timestamp: int  # ms

    class AssistantMessage(_AssistantMessage, total=False):
        errorMessage: str
        errorKind: str  # one of ERROR_KINDS
        errorStatus: int

    class _ToolResultMessage(TypedDict):
        role: Literal["toolResult"]
        toolCallId: str
        toolName: str
        content: list[Union[TextContent, ImageContent]]
        isError: bool

    class ToolResultMessage(_ToolResultMessage, total=False):
        timestamp: int  # ms

    Message = Union[UserMessage, AssistantMessage, ToolResultMessage]

    class Tool(TypedDict):
        name: str
        description: str
        parameters: dict[str, Any]  # a JSON Schema object

    class _Context(TypedDict):
        messages: list[Message]

    class Context(_Context, total=False):
        systemPrompt: str
        tools: list[Tool]

    class ModelCost(TypedDict):  # dollars per million tokens
        input: float
        output: float
        cacheRead: float
        cacheWrite: float

    class _Model(TypedDict):
        id: str
        name: str
        api: str
        provider: str
        baseUrl: str
        reasoning: bool
        input: list[Literal["text", "image"]]
        cost: ModelCost
        contextWindow: int
        maxTokens: int

    class Model(_Model, total=False):
        headers: dict[str, Any]
        compat: dict[str, Any]
        faux: Any  # the offline provider's script

    class StartEvent(TypedDict):
        type: Literal["start"]
        partial: AssistantMessage

    class ContentStartEvent(TypedDict):
        type: Literal["text_start", "thinking_start", "toolcall_start"]
        contentIndex: int
        partial: AssistantMessage

    class ContentDeltaEvent(TypedDict):
        type: Literal["text_delta", "thinking_delta", "toolcall_delta"]
        contentIndex: int
        delta: str
        partial: AssistantMessage

    class ContentEndEvent(TypedDict):
        type: Literal["text_end", "thinking_end"]
        contentIndex: int
        content: str
        partial: AssistantMessage

    class ToolCallEndEvent(TypedDict):
        type: Literal["toolcall_end"]
        contentIndex: int
        toolCall: ToolCall
        partial: AssistantMessage

    class DoneEvent(TypedDict):
        type: Literal["done"]
        reason: _DoneReason
        message: AssistantMessage

    class ErrorEvent(TypedDict):
        type: Literal["error"]
        reason: _ErrorReason
        error: AssistantMessage

    Event = Union[StartEvent, ContentStartEvent, ContentDeltaEvent, ContentEndEvent, ToolCallEndEvent,
                  DoneEvent, ErrorEvent]

    # Options of stream() and complete()
    ThinkingLevel = Literal["off", "minimal", "low", "medium", "high", "xhigh"]  # reasoning=
    CacheRetention = Literal["none", "short", "long"]  # cache_retention=

    class _Signal(Protocol):  # signal=: a threading.Event, or anything with is_set() and wait()
        def is_set(self) -> bool: ...
        def wait(self, timeout: Optional[float] = None) -> bool: ...

    # on_payload(body, model) -> a replacement body, or None to keep it
    _PayloadHook = Callable[[dict[str, Any], Model], Optional[dict[str, Any]]]

    # Internal shapes
    _PoolKey = tuple[str, str, int, Optional[str]]  # scheme, host, port, proxy

    # The parts of an API family (see the API families section)
    class _Decoder(Protocol):  # a body's framing: SSEParser, or a family's own
        CONTENT_TYPE: str  # a body of this type is parsed without looking at it first

        @staticmethod
        def looks_like(head: bytes) -> bool: ...
        def feed(self, chunk: bytes) -> list[tuple[str, str]]: ...
        def close(self) -> list[tuple[str, str]]: ...

    class _Translator(Protocol):
        def event(self, kind: str, data: str) -> bool: ...
        def end(self, eof: bool) -> _DoneReason: ...
        def whole(self, obj: Any) -> None: ...

    class _Reply(Protocol):  # an answer whose body is read in pieces: _Response, _FauxResponse
        status: int
        reason: str
        headers: dict[str, str]

        def iter_body(self) -> Iterator[bytes]: ...
        def read_all(self, limit: int = ...) -> bytes: ...
        def finish(self) -> None: ...
        def release(self) -> None: ...
        def close(self) -> None: ...

    _RequestParts = tuple[str, dict[str, str], dict[str, Any]]  # url, headers, body
    _Build = Callable[[Model, Context, "_Options"], _RequestParts]
    _Relax = Callable[[dict[str, Any], "PiError"], Optional[dict[str, Any]]]
    _Open = Callable[[Model, Context, "_Options"], _Reply]
    # step(o, method, url, headers, data, watch), editing headers; it may return the URL
    # to use instead (a token exchange that names the API host, as Copilot's does)
    _AuthStep = Callable[["_Options", str, str, dict[str, str], bytes, Optional["_Watch"]], Optional[str]]

    class _Row(TypedDict, total=False):  # a provider of providers_table.py (read with .get)
        name: str
        api: str
        baseUrl: str
        envKeys: list[str]
        auth: str
        defaultModel: str
        reasoning: bool
        input: list[str]
        contextWindow: int
        maxTokens: int
        baseline: bool
        urlVars: dict[str, list[str]]
        urlDefaults: dict[str, str]
        urlOrigin: list[str]  # env vars of a whole endpoint that replaces the template's scheme and host
        compat: dict[str, Any]
        headers: dict[str, str]
        modelApis: list[list[str]]  # [model id regex, api]: the family of an id MODELS does not list

    class _Table(Protocol):  # providers_table.py
        PROVIDERS: dict[str, _Row]  # canonical id -> row
        ALIASES: dict[str, str]
        MODELS: dict[str, str]  # canonical id -> JSON lines

__version__ = "0.1.0"
__all__ = ["get_model", "stream", "complete", "list_providers", "PiError", "ConfigError"]

THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh")
CACHE_RETENTIONS = ("none", "short", "long")
ERROR_KINDS = ("auth", "rate_limit", "context_overflow", "invalid_request", "not_found",
               "server", "network", "timeout", "protocol", "aborted")
MAX_FRAME = 16 * 1024 * 1024  # longest SSE line / event we accept
MAX_RETRY_AFTER = 60.0  # a server asking for a longer wait fails at once
_MAX_CALLS = 1024  # tool calls in one answer (each new one looks at the open ones)


def _now_ms() -> int:
    return int(time.time() * 1000)


# ==== errors ===================================================================

class PiError(Exception):
    """Every failure pi_min reports. ``kind`` is one of ERROR_KINDS (or "config"),
    ``status`` the HTTP status when there was one."""

    def __init__(self, message: str, kind: str = "protocol", status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after: float | None = None  # seconds the server asked us to wait
        self.no_retry = False                  # never worth retrying (quota, in-band errors)
        self.transient = False                 # worth retrying without a status saying so (in-band overload)


class ConfigError(PiError):
    """Something the user must fix: unknown provider, missing key, bad option."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "config")


_SECRET_PATTERNS: list[tuple[re.Pattern[str], str]] | None = None


def _redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace known secrets, and anything shaped like a credential, by ***."""
    global _SECRET_PATTERNS
    for s in secrets:
        if s and len(s) >= 6:
            if s in text:
                text = text.replace(s, "***")
            if not s.isalnum():  # also as a form or URL would carry it
                from urllib.parse import quote, quote_plus
                for form in {quote(s, safe=""), quote_plus(s)} - {s}:
                    text = text.replace(form, "***")
    if _SECRET_PATTERNS is None:
        import re
        _SECRET_PATTERNS = [
            (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"), r"\1***"),
            (re.compile(r"\b(?:sk|pk|rk|gsk|xai|csk|nvapi|hf|sk-ant-api\d\d|sk-ant-oat\d\d)[-_]"
                        r"[A-Za-z0-9_-]{16,}"), "***"),
            (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), "***"),
            (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "***"),
            (re.compile(r"(?i)([?&](?:key|api_key|apikey|token|access_token|sig)=)[^&\s\"']+"), r"\1***"),
            (re.compile(r"(://)[^/\s@:]*:[^/\s@]*@"), r"\1***@"),  # user:password@ in a URL
        ]
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


_OVERFLOW_RE: re.Pattern[str] | None = None


def _is_overflow(message: str) -> bool:
    """True when an error message says the prompt did not fit the context window."""
    global _OVERFLOW_RE
    if _OVERFLOW_RE is None:
        import re
        _OVERFLOW_RE = re.compile(
            r"prompt is too long|input is too long for requested model|exceeds the context window"
            r"|input token count.*exceeds the maximum|maximum prompt length is \d+"
            r"|reduce the length of the messages|maximum context length is \d+ tokens"
            r"|exceeds the limit of \d+|exceeds the available context size|greater than the context length"
            r"|context window exceeds limit|exceeded model token limit"
            r"|too large for model with \d+ maximum context length"
            r"|model_context_window_exceeded|context[_ ]length[_ ]exceeded|too many tokens|token limit exceeded"
            r"|prompt too long; exceeded max context length|^4(?:00|13)\s*(?:status code)?\s*\(no body\)",
            re.IGNORECASE)
    return bool(_OVERFLOW_RE.search(message))


def _classify(status: int | None, message: str = "", code: object = None) -> str:
    """Map an HTTP status, a provider error code and message to an errorKind. The
    status decides first (a 429 is rate_limit whatever its message says); the
    code and the message decide only for a generic 4xx or an in-band error."""
    kind = _STATUS_KINDS.get(status or 0) or ("server" if status and status >= 500 else None)
    if kind:
        return kind
    c = code.lower() if isinstance(code, str) else ""
    if "rate_limit" in c or "quota" in c or "resource_exhausted" in c:
        return "rate_limit"
    if "auth" in c or "api_key" in c or "permission" in c:
        return "auth"
    if "overloaded" in c or "server" in c or "unavailable" in c or c == "api_error":
        return "server"
    if "not_found" in c:
        return "not_found"
    if _is_overflow(message) or _is_overflow(c):
        return "context_overflow"
    if "invalid" in c:
        return "invalid_request"
    return "server" if status is None else "invalid_request"


_STATUS_KINDS = {401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 402: "rate_limit", 429: "rate_limit",
                 424: "server",  # 424: Bedrock's model errors
                 498: "auth"}  # 498: Cohere's invalid or expired token


# ==== SSE parser (sans-IO) =====================================================

class SSEParser:
    """Incremental text/event-stream decoder following the WHATWG rules.

    ``feed(bytes)`` returns the complete events as ``(event_type, data)`` tuples.
    Lines split on CR, LF or CRLF only (a CRLF cut between two reads is one line
    end); each whole line is decoded as UTF-8, so a character split across reads
    is fine. Deviations on purpose: invalid UTF-8 and lines over 16 MiB raise a
    ``protocol`` PiError instead of being replaced, and ``close()`` dispatches a
    last event whose blank line never came (some servers and proxies omit it).
    """

    __slots__ = ("_parts", "_size", "_data", "_data_size", "_event", "_cr", "_started", "last_event_id")
    CONTENT_TYPE = "event-stream"  # a body of this type is parsed without looking at it first

    @staticmethod
    def looks_like(head: bytes) -> bool:
        """An event stream under another content type (a proxy mislabelled it)?"""
        return head.lstrip().startswith((b"data:", b"event:", b":", b"id:"))

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # pieces of the line not yet terminated
        self._size = 0
        self._data: list[str] = []  # data lines of the event being built
        self._data_size = 0
        self._event = ""
        self._cr = False            # previous chunk ended in CR: a leading LF is part of it
        self._started = False
        self.last_event_id = ""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        if self._cr and chunk:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                parts = self._parts
                if parts and len(parts[-1]) < 4096 and len(chunk) < 4096:  # tiny pieces: one object, not millions
                    parts[-1] += chunk
                else:
                    parts.append(chunk)
                self._size += len(chunk)
                if self._size > MAX_FRAME:
                    raise PiError("stream line longer than 16 MiB", "protocol")
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop()
        self._size = len(rest)
        if rest:
            if self._size > MAX_FRAME:
                raise PiError("stream line longer than 16 MiB", "protocol")
            self._parts.append(rest)
        return self._lines(lines)

    def close(self) -> list[tuple[str, str]]:
        """End of stream: take a last unterminated line, then act as if the
        missing blank line came (dispatching a pending event)."""
        raw = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return self._lines([raw, b""] if raw else [b""])

    def _lines(self, lines: list[bytes]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not self._started and lines:
            self._started = True
            if lines[0][:3] == b"\xef\xbb\xbf":  # one BOM, at the very start only
                lines[0] = lines[0][3:]
        data = self._data
        for raw in lines:
            if len(raw) > MAX_FRAME:
                raise PiError("stream line longer than 16 MiB", "protocol")
            if raw[:5] == b"data:":  # the common line, without decoding the field name
                self._data_line((raw[6:] if raw[5:6] == b" " else raw[5:]))
            elif not raw:
                if data:
                    out.append((self._event or "message", "\n".join(data)))
                    self._data = data = []
                    self._data_size = 0
                self._event = ""
            else:
                self._field(raw)
        return out

    def _data_line(self, raw: bytes) -> None:
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PiError("stream is not valid UTF-8", "protocol") from None
        self._data.append(value)
        self._data_size += len(value) + 1  # the "\n" that joins it: empty data lines count too
        if self._data_size > MAX_FRAME:
            raise PiError("stream event larger than 16 MiB", "protocol")

    def _field(self, raw: bytes) -> None:
        """Any line but "data:..." and blank: comments, event, id, retry, bare "data"."""
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise PiError("stream is not valid UTF-8", "protocol") from None
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        # "retry" and unknown fields are ignored: nothing here reconnects


# ==== AWS event-stream decoder (sans-IO) ========================================

_ES_PRELUDE = 12  # total length, headers length, prelude CRC
_ES_FIXED = {2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}  # header value type -> its size in bytes


class _EventStream:
    """Incremental decoder of application/vnd.amazon.eventstream frames (Bedrock).

    ``feed(bytes)`` returns the complete frames as ``(kind, payload text)``: kind is
    the ``:event-type`` of an event, ``"!exception:<type>"`` for an exception frame
    and ``"!error:<code>"`` for an error frame. Both CRC-32s are checked; a frame's
    declared length is bounded by MAX_FRAME before anything is buffered for it, so
    an untrusted length never makes us allocate; any corruption is a ``protocol``
    PiError. Frames may be split anywhere and several may share one read.
    """

    __slots__ = ("_buf", "_need", "_crc", "_unpack", "_kinds")
    CONTENT_TYPE = "vnd.amazon.eventstream"

    def __init__(self) -> None:
        import struct
        import zlib
        self._unpack = struct.Struct(">III").unpack_from  # the prelude
        self._buf = bytearray()  # an incomplete frame, waiting for _need bytes
        self._need = 0
        self._crc = zlib.crc32
        self._kinds: dict[bytes, str] = {}  # header bytes -> frame kind (a stream repeats a few header blocks)

    @staticmethod
    def looks_like(head: bytes) -> bool:
        """A frame under another content type: its prelude checksum holds."""
        import zlib
        return len(head) >= _ES_PRELUDE and zlib.crc32(head[:8]) == int.from_bytes(head[8:12], "big")

    def feed(self, data: bytes) -> "list[tuple[str, str]]":
        buf = self._buf
        if buf:  # complete the pending frame first; nothing is parsed twice
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        out: list[tuple[str, str]] = []
        view, crc = memoryview(data), self._crc
        pos, end = 0, len(data)
        while end - pos >= _ES_PRELUDE:
            total, hlen, prelude_crc = self._unpack(data, pos)
            if crc(view[pos:pos + 8]) != prelude_crc:
                raise PiError("event stream: bad prelude checksum (corrupt frame)", "protocol")
            if total < 16 or hlen > total - 16 or total > MAX_FRAME:
                raise PiError(f"event stream: impossible frame lengths ({total}, headers {hlen})", "protocol")
            stop = pos + total
            if stop > end:
                break
            if crc(view[pos:stop - 4]) != int.from_bytes(data[stop - 4:stop], "big"):
                raise PiError("event stream: bad message checksum (corrupt frame)", "protocol")
            out.append(self._frame(data[pos + _ES_PRELUDE:pos + _ES_PRELUDE + hlen],
                                   data[pos + _ES_PRELUDE + hlen:stop - 4]))
            pos = stop
        if pos < end:
            buf += view[pos:]
            self._need = self._unpack(data, pos)[0] if end - pos >= _ES_PRELUDE else _ES_PRELUDE
        return out

    def close(self) -> "list[tuple[str, str]]":
        if self._buf:
            raise PiError(f"event stream: the body ended inside a frame ({len(self._buf)} bytes left)", "protocol")
        return []

    @staticmethod
    def _headers(raw: bytes) -> "dict[str, Any]":
        headers: dict[str, Any] = {}
        pos = 0
        try:
            while pos < len(raw):
                n = raw[pos]
                name = raw[pos + 1:pos + 1 + n].decode("utf-8")
                kind = raw[pos + 1 + n]
                pos += 2 + n
                if kind in (0, 1):
                    value: Any = kind == 0
                elif kind in (6, 7):
                    size = int.from_bytes(raw[pos:pos + 2], "big")
                    value = raw[pos + 2:pos + 2 + size]
                    if len(value) != size:
                        raise IndexError
                    value = value.decode("utf-8") if kind == 7 else value
                    pos += 2 + size
                elif kind in _ES_FIXED:
                    size = _ES_FIXED[kind]
                    if pos + size > len(raw):
                        raise IndexError
                    value = raw[pos:pos + size]
                    value = value.hex() if kind == 9 else int.from_bytes(value, "big", signed=True)
                    pos += size
                else:
                    raise PiError(f"event stream: unknown header value type {kind}", "protocol")
                headers[name] = value
        except (IndexError, UnicodeDecodeError):
            raise PiError("event stream: malformed frame headers", "protocol") from None
        return headers

    def _frame(self, head: bytes, body: bytes) -> "tuple[str, str]":
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            raise PiError("event stream: a payload is not valid UTF-8", "protocol") from None
        kind = self._kinds.get(head)
        if kind is not None:
            return kind, payload
        headers = self._headers(head)
        mtype = headers.get(":message-type", "event")
        if mtype == "error":  # its message lives in the headers
            message = headers.get(":error-message") or payload
            return "!error:" + str(headers.get(":error-code") or ""), json.dumps({"message": message})
        if mtype == "exception":
            kind = "!exception:" + str(headers.get(":exception-type") or "")
        else:
            kind = str(headers.get(":event-type") or "")
        if len(self._kinds) < 64:
            self._kinds[head] = kind
        return kind, payload


# ==== transport ================================================================
# HTTP/1.1 message framing is http.client's: request serialization, status line,
# headers, 1xx, chunked / length / close bodies. What is ours: connecting (each
# resolved address in turn, each with its own connect timeout, abortable), the
# proxy choice and its credentials, the TLS context, the keep-alive pool and the
# abort watcher.
#
# ``timeout`` is idle time: every phase after the TCP connect (TLS handshake,
# proxy CONNECT, sending the body in 64 KiB pieces, waiting for the response head,
# reading the body) fails after ``timeout`` seconds without a byte moving. Each
# resolved address gets min(timeout, 10 s) to accept the TCP connection. Name
# resolution (getaddrinfo) cannot be interrupted.
#
# Abort: with a signal, one watcher thread per stream polls it every 50 ms and
# shuts the socket in use down, so whatever blocking call is running returns at
# once. Without a signal no thread is started.

_POOL: dict[_PoolKey, list[tuple[HTTPConnection, float]]] = {}  # (scheme, host, port, proxy) -> [(conn, idle since)]
_POOL_PID = [0]  # the process the pool belongs to: a forked child starts empty
_POOL_LOCK: list[Any] = []  # [threading.Lock], made on first use
_POOL_MAX = 8
_POOL_IDLE = 50.0  # seconds an idle connection is trusted to still be open
_TLS: dict[str | None, ssl.SSLContext] = {}  # CA file (or None: the system store) -> ssl.SSLContext
_CERTIFI: list[str | None] = []  # [path or None] once looked up
_HTTP: list[Any] = []  # [http.client, its response class] once imported
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_CONNECT_TIMEOUT = 10.0  # per resolved address
_POLL = 0.05  # how often an abort signal is looked at
_PIECE = 65536  # bytes per send / read
_FRAMING_HEADERS = ("content-length", "transfer-encoding", "host", "connection")


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.") or host.endswith(".localhost")


def _bad_chars(text: str) -> bool:
    """True when text holds a control character (CR/LF injection and friends)."""
    return any(c < " " or c == "\x7f" for c in text)


def _tls_context() -> ssl.SSLContext:
    """A verifying client context: $SSL_CERT_FILE, else certifi's bundle when
    installed, else the system store (one context per CA file, reused)."""
    cafile = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE") or None
    if not cafile:
        if not _CERTIFI:  # find certifi's bundle without importing it (fast)
            import importlib.util
            spec = importlib.util.find_spec("certifi")
            path = os.path.join(os.path.dirname(spec.origin), "cacert.pem") if spec and spec.origin else ""
            _CERTIFI.append(path if os.path.isfile(path) else None)
        cafile = _CERTIFI[0]
    ctx = _TLS.get(cafile)
    if ctx is None:
        import ssl
        try:
            ctx = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the CA bundle {cafile} (SSL_CERT_FILE): {e}") from None
        ctx.set_alpn_protocols(["http/1.1"])
        _TLS[cafile] = ctx
    return ctx


def _safe_url(url: str) -> str:
    """The URL without user:password@ and with secret-looking query values
    (key=, token=, ...) hidden, for messages."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return _redact(scheme + sep + authority.rpartition("@")[2] + slash + path)


def _split_url(url: str) -> tuple[str, str, int, str]:
    """-> (scheme, host, port, target) for an http(s) URL; ConfigError otherwise."""
    if _bad_chars(url) or " " in url:
        raise ConfigError(f"URL contains spaces or control characters: {_safe_url(url)!r}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ConfigError(f"not an http(s) URL: {_safe_url(url)!r}")
    authority, slash, path = rest.partition("/")
    target = slash + path if slash else "/"
    if "?" in authority:
        authority, _, query = authority.partition("?")
        target = "/?" + query
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        host, _, port_txt = authority[1:].partition("]")
        port_txt = port_txt.lstrip(":")
    else:
        host, _, port_txt = authority.partition(":")
    if not host:
        raise ConfigError(f"URL has no host: {_safe_url(url)!r}")
    if port_txt and not (port_txt.isascii() and port_txt.isdigit() and 0 < int(port_txt) < 65536):
        raise ConfigError(f"bad port in URL: {_safe_url(url)!r}")
    port = int(port_txt) if port_txt else (443 if scheme == "https" else 80)
    return scheme, host.lower(), port, target


def _origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL, or None."""
    try:
        return _split_url(url)[:3]
    except PiError:
        return None


def _host_of(url: str) -> str:
    origin = _origin(url)
    return origin[1] if origin else ""


def _proxy_for(scheme: str, host: str) -> str | None:
    """The proxy URL from the environment for this host, or None (curl's rules).
    Raises ConfigError for a proxy URL pi_min cannot use; never shows its password."""
    env = os.environ
    if _is_loopback(host):
        return None
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    proxy = None
    for name in names + ("all_proxy", "ALL_PROXY"):
        if env.get(name):
            proxy = env[name].strip()
            break
    if not proxy:
        return None
    for entry in (env.get("no_proxy") or env.get("NO_PROXY") or "").split(","):
        entry = entry.strip().lower()
        if entry.startswith("[") and "]" in entry:
            entry = entry[1:entry.index("]")]
        elif entry.count(":") == 1:
            entry = entry.partition(":")[0]
        if entry == "*":
            return None
        entry = entry.lstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    try:
        pscheme, _, _, _ = _split_url(proxy)
    except ConfigError as e:
        raise ConfigError(f"the proxy from the environment is not usable: {e}") from None
    if pscheme != "http":
        raise ConfigError(f"the proxy {_safe_url(proxy)} is an https:// URL: TLS to the proxy is not "
                          "supported; use its http:// address (the tunnel to the provider is still TLS)")
    return proxy


def _proxy_auth(proxy: str) -> dict[str, str]:
    authority = proxy.partition("://")[2].partition("/")[0]
    if "@" not in authority:
        return {}
    import base64
    from urllib.parse import unquote
    cred = unquote(authority.rpartition("@")[0])
    return {"Proxy-Authorization": "Basic " + base64.b64encode(cred.encode()).decode()}


def _shutdown(sock: socket.socket) -> None:
    import socket
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watch:
    """Shuts the socket in use down when the abort signal is set.

    It holds a duplicate of the socket's descriptor, never the socket itself, so it
    cannot touch a descriptor that was closed and reused meanwhile; shutting the
    duplicate down ends the connection for the original too (TLS included)."""

    def __init__(self, signal: _Signal) -> None:
        import threading
        self.signal = signal
        self.fired = False
        self._dup: socket.socket | None = None
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._watch, name="pi_min-abort", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopped:
            if self.signal.wait(_POLL):
                with self._lock:
                    self.fired = True
                    if self._dup is not None:
                        _shutdown(self._dup)
                return

    def track(self, sock: socket.socket | None) -> None:
        """Watch sock (None: nothing) from now on."""
        import socket
        with self._lock:
            if self._dup is not None:
                self._dup.close()
                self._dup = None
            if sock is not None:
                self._dup = socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
                if self.fired:
                    _shutdown(self._dup)

    def stop(self) -> None:
        self._stopped = True
        self.track(None)


def _aborted() -> PiError:
    return PiError("Request was aborted", "aborted")


def _open_socket(host: str, port: int, timeout: float, watch: _Watch | None, where: str) -> socket.socket:
    """TCP connect trying each resolved address in turn, each for up to ``timeout``
    seconds, noticing the abort signal while waiting."""
    import errno
    import select
    import socket
    signal = watch.signal if watch is not None else None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise PiError(f"cannot resolve {host}: {e}", "network") from None
    error = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        deadline = time.monotonic() + timeout
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            while err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, 10035):
                if signal is not None and signal.is_set():
                    raise _aborted()
                left = deadline - time.monotonic()
                if left <= 0:
                    err = errno.ETIMEDOUT
                    break
                _, writable, _ = select.select([], [sock], [], min(left, _POLL) if signal is not None else left)
                if writable:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            sock.setblocking(True)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise PiError(f"cannot connect to {where}: {error}", "network")


def _http_client() -> tuple[ModuleType, type[HTTPResponse]]:
    """http.client and its response class, imported on first use."""
    if not _HTTP:
        import http.client

        class Response(http.client.HTTPResponse):
            def _read_status(self) -> tuple[str, int, str]:
                # http.client skips 100 Continue only: skip every interim 1xx (102, 103) alike
                while True:
                    version, status, reason = super()._read_status()  # type: ignore[misc]
                    if "\r" in reason.rstrip("\r\n"):  # a head with CR-only line ends: no safe framing
                        raise http.client.BadStatusLine(f"{version} {status} {reason[:40]!r}")
                    if not 101 < status < 200:
                        return version, status, reason
                    http.client.parse_headers(self.fp)

            def _read_and_discard_trailer(self) -> None:
                # http.client reads trailer lines until a blank one, without end: a bound here
                for _ in range(64):
                    line = self.fp.readline(8193)
                    if len(line) > 8192:
                        raise http.client.LineTooLong("trailer line")
                    if line in (b"\r\n", b"\n", b""):
                        return
                raise http.client.HTTPException("more than 64 trailer lines")
        _HTTP.extend((http.client, Response))
    return _HTTP[0], _HTTP[1]


def _connect(scheme: str, host: str, port: int, proxy: str | None, timeout: float,
             watch: _Watch | None) -> HTTPConnection:
    """The one function that opens connections: TCP to the host or the proxy (with
    a CONNECT tunnel for https), then TLS. -> a connected http.client connection."""
    client, response_class = _http_client()
    if proxy:
        _, chost, cport, _ = _split_url(proxy)
        where = f"proxy {chost}:{cport}"
    else:
        chost, cport, where = host, port, f"{host}:{port}"
    conn: HTTPConnection
    if scheme == "https":  # TLS to the host itself, also through a tunnel (SNI and checks use host)
        conn = client.HTTPSConnection(host, port, timeout=timeout, context=_tls_context(), blocksize=_PIECE)
    else:  # plain http goes to the proxy, when there is one, as a whole URL
        conn = client.HTTPConnection(chost, cport, timeout=timeout, blocksize=_PIECE)
    conn.response_class = response_class

    def open_tcp(address: tuple[str, int], _timeout: object = None, _source: object = None) -> socket.socket:
        sock = _open_socket(chost, cport, min(timeout, _CONNECT_TIMEOUT), watch, where)
        try:
            sock.settimeout(timeout)
            if watch is not None:
                watch.track(sock)
            if proxy and scheme == "https":
                _tunnel(sock, host, port, proxy, response_class)
        except BaseException:
            sock.close()
            raise
        return sock
    conn._create_connection = open_tcp  # type: ignore[attr-defined]  # ours; http.client then does TLS on it
    try:
        conn.connect()
    except BaseException:
        conn.close()
        raise
    return conn


def _tunnel(sock: socket.socket, host: str, port: int, proxy: str, response_class: type[HTTPResponse]) -> None:
    """CONNECT host:port through the proxy on sock; the proxy's answer is read by
    http.client (its status line and headers), then the socket is the tunnel."""
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in _proxy_auth(proxy).items())
    sock.sendall((head + "\r\n").encode("latin-1"))
    resp = response_class(sock, method="CONNECT")
    try:
        resp.begin()
    finally:
        resp.close()  # the tunnel keeps the socket; only the reader goes
    if resp.status != 200:
        raise PiError(f"the proxy refused the tunnel to {hostport}: HTTP {resp.status} {resp.reason}",
                      "auth" if resp.status == 407 else "network", resp.status)


def _net_error(e: BaseException, host: str, timeout: float) -> PiError:
    """A PiError for what the socket, TLS or http.client raised."""
    import socket
    ssl = sys.modules.get("ssl")
    client = _HTTP[0] if _HTTP else None
    if isinstance(e, PiError):
        return e
    if ssl is not None and isinstance(e, ssl.SSLCertVerificationError):
        err = PiError(f"TLS certificate of {host} not trusted: {e.verify_message} (not retried; set "
                      "SSL_CERT_FILE for a private CA)", "network")
        err.no_retry = True
        return err
    if isinstance(e, socket.timeout):
        return PiError(f"no data from {host} for {timeout:g} s (timeout)", "timeout")
    if ssl is not None and isinstance(e, ssl.SSLError):
        return PiError(f"TLS with {host} failed: {e.reason or e}", "network")
    if client is not None and isinstance(e, client.IncompleteRead):
        return PiError(f"{host} closed the connection before the end of the response body", "network")
    if client is not None and isinstance(e, client.RemoteDisconnected):
        return PiError(f"{host} closed the connection without answering", "network")
    if client is not None and isinstance(e, client.HTTPException):
        detail = " ".join(str(e).split())[:120]
        return PiError(f"malformed HTTP response from {host}: {type(e).__name__} {detail}".rstrip(), "protocol")
    if isinstance(e, OSError):
        return PiError(f"connection to {host} failed: {e}", "network")
    return PiError(f"connection to {host} failed: {type(e).__name__}: {e}", "network")


def _pool_lock() -> Any:
    """The lock around _POOL (threads take and return connections concurrently)."""
    if not _POOL_LOCK:
        import threading
        _POOL_LOCK.append(threading.Lock())  # two threads racing here both use the first one
        if hasattr(os, "register_at_fork"):  # a lock held by a parent's thread would never be freed in the child
            os.register_at_fork(after_in_child=_POOL_LOCK.clear)
    return _POOL_LOCK[0]


def _pooled(key: _PoolKey) -> HTTPConnection | None:
    """An idle connection to key's host, checked to be still open, or None."""
    pid = os.getpid()
    with _pool_lock():
        if _POOL_PID[0] != pid:  # a forked child: the parent's connections are not ours to use
            stale = [conn for idle in _POOL.values() for conn, _ in idle]
            _POOL.clear()
            _POOL_PID[0] = pid
        else:
            stale = []
        candidates = _POOL.pop(key, [])
    for conn in stale:
        conn.close()
    now = time.monotonic()
    found = None
    while candidates and found is None:
        conn, since = candidates.pop()
        if now - since < _POOL_IDLE and conn.sock is not None and _still_open(conn.sock):
            found = conn
        else:
            conn.close()
    if candidates:  # the rest go back
        with _pool_lock():
            _POOL.setdefault(key, []).extend(candidates)
    return found


def _pool_put(key: _PoolKey, conn: HTTPConnection) -> bool:
    """Keep an idle connection for the next request to its host (False: the pool
    for that host is full). Connections idle too long are dropped here, for every
    host, so a process that talks to many hosts keeps no dead ones."""
    now = time.monotonic()
    expired = []
    with _pool_lock():
        for k, idle in list(_POOL.items()):
            fresh = [(c, t) for c, t in idle if now - t < _POOL_IDLE]
            expired += [c for c, t in idle if now - t >= _POOL_IDLE]
            if fresh:
                _POOL[k] = fresh
            else:
                del _POOL[k]
        idle = _POOL.setdefault(key, [])
        kept = len(idle) < _POOL_MAX
        if kept:
            idle.append((conn, now))
    for c in expired:
        c.close()
    return kept


def _still_open(sock: socket.socket) -> bool:
    """An idle keep-alive socket is usable when nothing is readable on it."""
    import select
    try:
        if getattr(sock, "pending", None) and sock.pending():  # type: ignore[attr-defined]  # an SSLSocket
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


def _request(method: str, url: str, headers: dict[str, str], body: bytes, timeout: float,
             watch: _Watch | None = None) -> "_Response":
    """Send one request; -> _Response once its head arrived. Raises PiError."""
    import socket
    scheme, host, port, target = _split_url(url)
    proxy = _proxy_for(scheme, host)
    key = (scheme, host, port, proxy)
    hostport = host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
    if ":" in host:
        hostport = f"[{host}]" + hostport[len(host):]
    head = {"Host": hostport, "Accept-Encoding": "identity"}
    head.update(headers)
    head["Content-Length"] = str(len(body))
    if proxy and scheme == "http":  # a plain-http request goes to the proxy whole
        target = f"http://{hostport}{target}"
        head.update(_proxy_auth(proxy))
    view = memoryview(body)
    pieces = [view[i:i + _PIECE] for i in range(0, len(body), _PIECE)]  # idle timeout per piece
    for attempt in (0, 1):
        conn = _pooled(key) if attempt == 0 else None
        reused = conn is not None
        try:
            if conn is None:
                conn = _connect(scheme, host, port, proxy, timeout, watch)
            else:
                conn.sock.settimeout(timeout)
                if watch is not None:
                    watch.track(conn.sock)
            conn.request(method, target, pieces, head)
            resp = conn.getresponse()
        except BaseException as e:
            if conn is not None:
                conn.close()
            if watch is not None and watch.fired:
                raise _aborted() from None
            if not isinstance(e, Exception):
                raise
            err = _net_error(e, host, timeout)
            # a pooled connection the server had already dropped: once more on a fresh one
            if reused and err.kind == "network" and not isinstance(e, socket.timeout):
                continue
            raise err from None
        return _Response(conn, resp, key, watch, host, timeout)
    raise PiError(f"connection to {host} failed", "network")  # pragma: no cover


class _Response:
    """An HTTP response whose body is read piece by piece (http.client framing),
    with the abort watcher and the keep-alive pool looked after."""

    __slots__ = ("status", "reason", "headers", "_conn", "_resp", "_key", "_watch", "_host", "_timeout",
                 "_body")
    _conn: HTTPConnection | None  # None once released or closed

    def __init__(self, conn: HTTPConnection, resp: HTTPResponse, key: _PoolKey, watch: _Watch | None, host: str,
                 timeout: float) -> None:
        self.status, self.reason = resp.status, resp.reason
        self._conn, self._resp, self._key, self._watch = conn, resp, key, watch
        self._host, self._timeout = host, timeout
        self._body: "Iterator[bytes] | None" = None
        headers: dict[str, str] = {}
        for name, value in resp.msg.items():
            name = name.lower()
            headers[name] = headers[name] + ", " + value if name in headers else value
        self.headers = headers
        try:
            self._check_framing()
        except PiError:
            self.close()
            raise

    def _check_framing(self) -> None:
        """What http.client would read leniently: a response framed two ways at once."""
        msg = self._resp.msg
        bad = None
        if msg.defects or msg.get_payload() or any("\n" in v or "\r" in v for v in msg.values()):
            bad = "malformed or folded header lines"
        te = [t.strip().lower() for v in msg.get_all("transfer-encoding") or () for t in v.split(",")]
        lengths = {t.strip() for v in msg.get_all("content-length") or () for t in v.split(",")}
        if te and te != ["chunked"]:
            bad = f"unsupported Transfer-Encoding {', '.join(te)!r}"
        elif lengths and not te and (len(lengths) > 1 or not all(t.isascii() and t.isdigit() for t in lengths)):
            bad = f"bad Content-Length {', '.join(sorted(lengths))!r}"
        if bad:
            raise PiError(f"malformed HTTP response from {self._host}: {bad}", "protocol", self.status)
        if te and lengths:
            self._resp.will_close = True  # framed twice: chunked wins, the connection is not reused

    def iter_body(self) -> "Iterator[bytes]":
        """The body bytes as they arrive, inflated when a server compressed them
        anyway; calling it again continues where the last iteration stopped."""
        if self._body is None:
            body = self._read()
            encoding = self.headers.get("content-encoding", "identity").strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):  # sent despite Accept-Encoding: identity
                body = _inflate(body)
            elif encoding not in ("", "identity"):
                raise PiError(f"unsupported Content-Encoding {encoding!r}", "protocol")
            self._body = body
        return self._body

    def _read(self) -> "Iterator[bytes]":
        resp, watch = self._resp, self._watch
        while True:
            try:
                piece = resp.read1(_PIECE)
            except Exception as e:
                if watch is not None and watch.fired:
                    raise _aborted() from None
                raise _net_error(e, self._host, self._timeout) from None
            if resp.chunked and (resp.chunk_left or 0) < 0:  # a negative chunk size
                raise PiError(f"malformed HTTP response from {self._host}: bad chunk size", "protocol")
            if not piece:
                if watch is not None and watch.fired:
                    raise _aborted()
                if resp.length:
                    raise PiError(f"{self._host} closed the connection before the end of the response body",
                                  "network")
                return
            yield piece

    def read_all(self, limit: int = MAX_FRAME) -> bytes:
        parts, size = [], 0
        for piece in self.iter_body():
            parts.append(piece)
            size += len(piece)
            if size > limit:
                self.close()
                raise PiError(f"response body larger than {limit >> 20} MiB", "protocol")
        return b"".join(parts)

    def _complete(self) -> bool:
        resp = self._resp
        return resp.isclosed() or resp.length == 0

    def finish(self) -> None:
        """The provider's terminator was parsed: never wait for more. What is already
        there of the rest is read (20 ms at most) so a body that has ended lets its
        connection go back to the pool; one still open is closed."""
        resp, conn = self._resp, self._conn
        if conn is not None and not self._complete() and not resp.will_close:
            deadline = time.monotonic() + 0.02
            try:
                conn.sock.settimeout(0.001)
                while not self._complete() and time.monotonic() < deadline and resp.read1(_PIECE):
                    if resp.chunked and (resp.chunk_left or 0) < 0:
                        break
            except Exception:
                pass
        self.release()

    def release(self) -> None:
        """Done with the body: pool the connection when the body ended cleanly."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._watch is not None:
            self._watch.track(None)
        resp = self._resp
        if self._complete() and not resp.will_close and conn.sock is not None:
            resp.close()
            if _pool_put(self._key, conn):
                return
        resp.close()
        conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._watch is not None:
                self._watch.track(None)
            self._resp.close()
            conn.close()


def _inflate(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Inflate a gzip/zlib body in steps of at most 64 KiB of output (a few MB
    that inflate to GBs never sit in memory at once); a body of several gzip
    members (RFC 1952) is read member after member."""
    import zlib
    d = zlib.decompressobj(47)  # gzip or zlib header, detected
    try:
        for piece in pieces:
            while piece:
                if d.eof:  # the next member
                    piece, d = d.unused_data + piece, zlib.decompressobj(47)
                data = d.decompress(piece, _PIECE)
                piece = d.unconsumed_tail
                if data:
                    yield data
                if d.eof and d.unused_data and not piece:
                    piece, d = d.unused_data, zlib.decompressobj(47)
        data = d.flush()
    except zlib.error as e:
        raise PiError(f"bad compressed response body: {e}", "protocol") from None
    if data:
        yield data
    if not d.eof:
        raise PiError("compressed response body ended early", "network")


def _parse_retry_after(headers: dict[str, str]) -> float | None:
    """Seconds the server asked us to wait, or None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ==== partial JSON =============================================================

class _JSONPrefix:
    """Incremental scanner over a growing JSON object text that can close it.

    ``feed`` looks only at the new characters (string bodies are skipped with
    ``str.find``), so following a long tool-call argument costs O(delta) Python
    work per piece; ``value`` builds the shortest closable prefix and hands it to
    the C json parser.
    """

    __slots__ = ("text", "stack", "in_str", "is_key", "esc_at", "scalar", "last", "safe", "_parsed_len")

    def __init__(self) -> None:
        self.text = ""
        self.stack: list[str] = []  # open "{" / "["
        self.in_str = False
        self.is_key = False     # the open string is an object key
        self.esc_at = -1        # index of a backslash whose escape is incomplete
        self.scalar = False     # inside a number / true / false / null
        self.last = ""          # last structural token: { [ , : k (key) v (value)
        self.safe = 0           # prefix text[:safe] closes into valid JSON
        self._parsed_len = 0

    def feed(self, frag: str) -> None:
        t = self.text
        self.text = ""          # keep one reference so += can grow in place
        t += frag
        self.text = t
        n = len(t)
        i = n - len(frag)
        stack = self.stack
        while i < n:
            if self.in_str:
                e = self.esc_at
                if e >= 0:
                    if e + 1 >= n:
                        break
                    end = e + (6 if t[e + 1] == "u" else 2)
                    if end > n:
                        break
                    self.esc_at = -1
                    i = end
                    continue
                q = t.find('"', i)
                b = t.find("\\", i, q if q >= 0 else n)
                if b >= 0:
                    self.esc_at = b
                    i = b
                    continue
                if q < 0:
                    break
                i = q + 1
                self.in_str = False
                if self.is_key:
                    self.last = "k"
                else:
                    self.last = "v"
                    self.safe = i
                continue
            c = t[i]
            if self.scalar:
                if c not in ",}] \t\r\n":
                    i += 1
                    continue
                self.scalar = False
                self.last = "v"
                self.safe = i
            if c == '"':
                self.in_str = True
                self.is_key = bool(stack) and stack[-1] == "{" and self.last in "{,"
            elif c == "{" or c == "[":
                stack.append(c)
                self.last = c
                self.safe = i + 1
            elif c == "}" or c == "]":
                if stack:
                    stack.pop()
                self.last = "v"
                self.safe = i + 1
            elif c == "," or c == ":":
                self.last = c
            elif c not in " \t\r\n":
                self.scalar = True
            i += 1

    def value(self) -> dict[str, Any] | None:
        """Best-effort parse of the text so far: a dict, or None if not closable."""
        t = self.text
        self._parsed_len = len(t)
        if not self.stack:
            if not t.strip():
                return {}
            candidates: tuple[str, ...] = (t,)
        else:
            closers = "".join("}" if c == "{" else "]" for c in reversed(self.stack))
            if self.in_str and not self.is_key:
                cut = self.esc_at if self.esc_at >= 0 else len(t)
                candidates = (t[:cut] + '"' + closers,)
            elif self.scalar:
                candidates = (t + closers, t[:self.safe] + closers)
            else:
                candidates = (t[:self.safe] + closers,)
        for cand in candidates:
            try:
                v = json.loads(cand)
            except (ValueError, RecursionError):
                continue
            return v if isinstance(v, dict) else None
        return None

    def due(self) -> bool:
        """Re-parse on every piece while small, then when the text grew by 1/8,
        so following a huge argument stays linear overall."""
        n = len(self.text)
        return n < 8192 or n - self._parsed_len >= n >> 3


def parse_partial_json(text: str) -> dict[str, Any]:
    """Best-effort parse of a (possibly truncated) JSON object; ``{}`` at worst."""
    p = _JSONPrefix()
    p.feed(text)
    v = p.value()
    return v if v is not None else {}


# ==== message builder ==========================================================

def _zero_usage() -> Usage:
    return {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 0,
            "cost": {"input": 0.0, "output": 0.0, "cacheRead": 0.0, "cacheWrite": 0.0, "total": 0.0}}


_DELTA: dict[str, Literal["text_delta", "thinking_delta"]] = {"text": "text_delta", "thinking": "thinking_delta"}


class _Builder:
    """Builds the one AssistantMessage of a stream and the events about it.

    Families call text()/thinking()/tool_start()/tool_delta(); the events pile up
    in ``out`` and the runner yields and clears them after each network read.
    """

    __slots__ = ("msg", "content", "out", "model", "cur", "cur_type", "tools", "open_tools", "secrets",
                 "_long", "_seen")

    def __init__(self, model: Model, secrets: Sequence[str] = ()) -> None:
        self.model = model
        self.secrets = secrets  # keys and tokens a hostile server might echo into the answer
        self._long: tuple[str, ...] = ()  # those long enough to hide from the answer
        self._seen = 0                    # how many of secrets _long was made from
        self.content: list[Any] = []  # msg["content"]: dicts grown in place, key by key
        self.msg: AssistantMessage = {"role": "assistant", "content": self.content, "api": model["api"],
                    "provider": model["provider"], "model": model["id"], "usage": _zero_usage(),
                    "stopReason": "stop", "timestamp": _now_ms()}
        self.out: list[Event] = []
        self.cur = -1           # index of the open text/thinking block, -1 if none
        self.cur_type = ""
        self.tools: dict[Hashable, list[Any]] = {}  # family key -> [content index, _JSONPrefix]
        self.open_tools: list[Hashable] = []

    # -- text and thinking ------------------------------------------------------
    def _open(self, kind: str, signature: str | None = None) -> dict[str, Any]:
        self.close_current()
        block = {"type": kind, kind: ""}
        if signature is not None:
            block["thinkingSignature" if kind == "thinking" else "textSignature"] = signature
        self.content.append(block)
        self.cur = len(self.content) - 1
        self.cur_type = kind
        self.out.append({"type": kind + "_start", "contentIndex": self.cur, "partial": self.msg})  # type: ignore[typeddict-item]  # text_start | thinking_start
        return block

    def text(self, delta: str, signature: str | None = None) -> None:
        self._grow("text", delta, signature)

    def thinking(self, delta: str, signature: str | None = None) -> None:
        self._grow("thinking", delta, signature)

    def _grow(self, kind: str, delta: str, signature: str | None) -> None:
        """Append to the open block of this kind (the block's field is named like
        the kind), opening one first when the kind changes."""
        if not delta:
            return
        if type(delta) is not str:
            raise PiError(f"a {kind} delta that is not text: {str(delta)[:80]!r}", "protocol")
        if self._long or len(self.secrets) != self._seen:
            delta = self._hide(delta)
        block = self.content[self.cur] if self.cur_type == kind else self._open(kind, signature)
        t = block[kind]
        block[kind] = None      # drop the dict's reference so += grows in place
        t += delta
        block[kind] = t
        self.out.append({"type": _DELTA[kind], "contentIndex": self.cur, "delta": delta, "partial": self.msg})

    def _hide(self, piece: str) -> str:
        """A key or token a server echoed into the answer is replaced by *** (one
        split across two deltas is not seen; errors are redacted whole)."""
        if len(self.secrets) != self._seen:  # an auth step added a token
            self._long = tuple(s for s in self.secrets if len(s) >= 16)
            self._seen = len(self.secrets)
        for secret in self._long:
            if secret in piece:
                piece = piece.replace(secret, "***")
        return piece

    def begin(self, kind: str) -> int:
        """Open a text or thinking block now, before any of its text (a block that
        may stay empty yet carry a signature). -> its content index."""
        self._open(kind)
        return self.cur

    def sign(self, signature: str, index: int | None = None, append: bool = False) -> None:
        """Attach a signature to a block after it opened (Anthropic's signature_delta,
        Gemini's thoughtSignature, the Responses' encrypted reasoning): thinking
        -> thinkingSignature, text -> textSignature, toolCall -> thoughtSignature.
        index None: the block opened last. append: signatures that come in pieces."""
        if not signature or not self.content:
            return
        block = self.content[-1 if index is None else index]
        field = {"thinking": "thinkingSignature", "text": "textSignature"}.get(block["type"], "thoughtSignature")
        block[field] = block.get(field, "") + signature if append else signature

    def redacted_thinking(self, data: str) -> None:
        """A thinking block the provider encrypted: no text, its data kept as the
        signature so it goes back, unchanged, to the model that made it."""
        block = self._open("thinking", data)
        block["redacted"] = True
        self.close_current()

    def end_block(self, kind: str, ref: Any) -> None:
        """End a block a family addresses by its own index: a tool call by its key,
        a text or thinking block by its content index (when it is still open)."""
        if kind == "tool":
            self.tool_end(ref)
        elif self.cur == ref:
            self.close_current()

    def close_current(self) -> None:
        if self.cur_type:
            block = self.content[self.cur]
            kind = self.cur_type
            self.out.append({"type": kind + "_end", "contentIndex": self.cur, "content": block[kind],  # type: ignore[typeddict-item]  # text_end | thinking_end
                             "partial": self.msg})
            self.cur, self.cur_type = -1, ""

    # -- tool calls -------------------------------------------------------------
    def tool_start(self, key: Hashable, call_id: str | None, name: str | None) -> ToolCall:
        if key in self.open_tools:  # started again (a duplicated start event): the first one ends here
            self.tool_end(key, final=True)
        if len(self.tools) >= _MAX_CALLS:
            raise PiError(f"more than {_MAX_CALLS} tool calls in one answer", "protocol")
        self.close_current()
        call_id = self._hide(call_id) if isinstance(call_id, str) and call_id else None
        name = self._hide(name) if isinstance(name, str) else ""
        block: ToolCall = {"type": "toolCall", "id": call_id or _new_call_id(), "name": name, "arguments": {}}
        self.content.append(block)
        index = len(self.content) - 1
        self.tools[key] = [index, _JSONPrefix()]
        self.open_tools.append(key)
        self.out.append({"type": "toolcall_start", "contentIndex": index, "partial": self.msg})
        return block

    def end_finished_tools(self) -> None:
        """End the open tool calls whose arguments already form a whole JSON
        object: nothing valid can follow, so toolcall_end need not wait for the
        stream's end (calls still incomplete stay open for interleaved servers)."""
        for key in list(self.open_tools):
            prefix = self.tools[key][1]
            if not prefix.stack and not prefix.in_str and prefix.text.strip()[:1] == "{":
                self.tool_end(key)

    def tool_block(self, key: Hashable) -> Any:
        """The call block of key, to read (changes go through tool_update)."""
        return self.content[self.tools[key][0]]

    def tool_update(self, key: Hashable, call_id: str | None = None, name: str | None = None,
                    signature: str | None = None) -> None:
        """What a started call is known by, arriving late: its id, its whole name
        so far, a signature (Gemini's on the OpenAI endpoint)."""
        block = self.content[self.tools[key][0]]
        if call_id:
            block["id"] = call_id
        if name:
            block["name"] = self._hide(name)
        if signature:
            block["thoughtSignature"] = signature

    def sign_calls(self, signatures: dict[str, str]) -> None:
        """Signatures that name the calls they sign by id (OpenRouter's encrypted
        reasoning details, which may come before or after the calls)."""
        for block in self.content:
            if block["type"] == "toolCall" and block["id"] in signatures:
                block["thoughtSignature"] = signatures[block["id"]]

    def tool_delta(self, key: Hashable, fragment: str) -> None:
        if not fragment:
            return
        if type(fragment) is not str:
            raise PiError(f"tool arguments that are not text: {str(fragment)[:80]!r}", "protocol")
        if self._long or len(self.secrets) != self._seen:
            fragment = self._hide(fragment)
        index, prefix = self.tools[key]
        prefix.feed(fragment)
        if prefix.due():
            value = prefix.value()
            if value is not None:
                self.content[index]["arguments"] = value
        self.out.append({"type": "toolcall_delta", "contentIndex": index, "delta": fragment, "partial": self.msg})

    def tool_end(self, key: Hashable, cut: bool = False, final: bool = False) -> None:
        """cut: the provider ended the turn for length, so unfinished arguments keep
        their best-effort parse instead of failing the stream. Arguments that do not
        parse when a family ends the block leave the call open until done(), which
        knows the stop reason (final)."""
        index, prefix = self.tools[key]
        block = self.content[index]
        raw = prefix.text
        if raw.strip():
            try:
                args = json.loads(raw)
            except (ValueError, RecursionError):
                args = None
            if not isinstance(args, dict):
                value = prefix.value()
                if value is not None:
                    block["arguments"] = value
                if not cut and not final:  # the stop reason decides (a length stop keeps it): done()
                    return
                if not cut:
                    raise PiError(f"arguments of tool call {block['name'] or block['id']!r} are not a complete "
                                  f"JSON object (the stream was cut?): {raw[:200]!r}", "protocol")
            else:
                block["arguments"] = args
        self.open_tools.remove(key)
        self.out.append({"type": "toolcall_end", "contentIndex": index, "toolCall": block, "partial": self.msg})

    # -- usage and the end ------------------------------------------------------
    def set_usage(self, inp: int, out: int, cache_read: int = 0, cache_write: int = 0) -> None:
        self.update_usage(input=inp, output=out, cacheRead=cache_read, cacheWrite=cache_write)

    def update_usage(self, **counts: int) -> None:
        """Set some of input/output/cacheRead/cacheWrite, keeping the others (usage
        that arrives piece by piece: Anthropic's message_start, then the cumulative
        message_delta); the total and the cost follow."""
        u = self.msg["usage"]
        for name, value in counts.items():
            if name not in ("input", "output", "cacheRead", "cacheWrite"):
                raise TypeError(f"update_usage: unknown count {name!r}")
            u[name] = value  # type: ignore[literal-required]  # one of the four, checked above
        inp, out, cache_read, cache_write = u["input"], u["output"], u["cacheRead"], u["cacheWrite"]
        u["totalTokens"] = inp + out + cache_read + cache_write
        cost = self.model.get("cost") or {}
        c = u["cost"]
        c["input"] = cost.get("input", 0) * inp / 1e6
        c["output"] = cost.get("output", 0) * out / 1e6
        c["cacheRead"] = cost.get("cacheRead", 0) * cache_read / 1e6
        c["cacheWrite"] = cost.get("cacheWrite", 0) * cache_write / 1e6
        c["total"] = c["input"] + c["output"] + c["cacheRead"] + c["cacheWrite"]

    def has_content(self) -> bool:
        return bool(self.content)

    def done(self, reason: _DoneReason) -> None:
        """Close every open block and emit done. reason: stop | length | toolUse.
        A turn cut for length stays "length" even with tool calls: its last call
        may be unfinished and more may have been due, so none is to be run."""
        self.close_current()
        for key in list(self.open_tools):
            self.tool_end(key, reason == "length", final=True)
        if reason != "length" and any(b["type"] == "toolCall" for b in self.content):
            reason = "toolUse"
        elif reason == "toolUse":
            reason = "stop"
        self.msg["stopReason"] = reason
        self.out.append({"type": "done", "reason": reason, "message": self.msg})

    def fail(self, kind: str, message: str, status: int | None = None) -> ErrorEvent:
        reason: _ErrorReason = "aborted" if kind == "aborted" else "error"
        msg = self.msg
        msg["stopReason"] = reason
        msg["errorMessage"] = message
        msg["errorKind"] = kind
        if status is not None:
            msg["errorStatus"] = status
        return {"type": "error", "reason": reason, "error": msg}


_CALL_COUNTER = [0]


def _new_call_id() -> str:
    _CALL_COUNTER[0] += 1
    return "call_%d_%d" % (_now_ms(), _CALL_COUNTER[0])


# ==== message transforms =======================================================

def _same_model(msg: Mapping[str, Any], model: Model) -> bool:
    return (msg.get("provider") == model["provider"] and msg.get("api") == model["api"]
            and msg.get("model") == model["id"])


def transform_messages(messages: Sequence[Mapping[str, Any]], model: Model,
                       normalize_id: Callable[[str], str] | None = None) -> list[Mapping[str, Any]]:
    """Make a conversation from any provider acceptable to ``model`` (pi-ai's
    transformMessages): thinking of other models becomes text, signatures go back
    only to the model that made them, tool-call ids are rewritten by
    ``normalize_id``, errored/aborted assistant turns are dropped and tool calls
    left without a result get a synthetic error result."""
    ids = _CallIds(normalize_id)
    kept: list[Mapping[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            if m.get("stopReason") not in ("error", "aborted"):
                kept.append(dict(m, content=_assistant_blocks(m, model, ids)))
        elif role == "toolResult":
            new_id = ids.result(m.get("toolCallId"))
            if new_id is not None:  # else it answers a call of a dropped turn: no API takes it
                kept.append(m if new_id == m.get("toolCallId") else dict(m, toolCallId=new_id))
        else:
            kept.append(m)
    return _answer_orphans(kept)


def _id_hash(text: str, size: int) -> str:
    """A short stable digest of an id (lone surrogates included)."""
    import hashlib
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:size]


class _CallIds:
    """Tool-call ids as a target accepts them: rewritten by its rules, the same in
    calls and results, and unique per call, also when two ids normalise alike or a
    server reused one id in several turns (results answer the calls in order)."""

    def __init__(self, normalize: Callable[[str], str] | None) -> None:
        self.normalize = normalize
        self.used: set[str] = set()              # ids sent for calls so far
        self.pending: dict[str, list[str]] = {}  # original id -> ids sent, not answered yet
        self.last: dict[str, str] = {}           # original id -> the id sent for its latest call

    def call(self, b: Mapping[str, Any]) -> Mapping[str, Any]:
        old_id = str(b.get("id") or "")
        new_id = base = self.normalize(old_id) if self.normalize is not None else old_id
        for n in range(1, 64):  # bounded: a target's rules might map everything alike
            if new_id not in self.used or self.normalize is None:
                break
            new_id = self.normalize(base[:max(1, len(base) - 7)] + "_" + _id_hash(f"{old_id}#{n}", 6))
        self.used.add(new_id)
        self.pending.setdefault(old_id, []).append(new_id)
        self.last[old_id] = new_id
        return b if new_id == old_id else dict(b, id=new_id)

    def result(self, old_id: object) -> str | None:
        """The id a result answers, or None when no kept call has its id."""
        key = str(old_id or "")
        queue = self.pending.get(key)
        if queue:
            return queue.pop(0)
        return self.last.get(key)


def _assistant_blocks(m: Mapping[str, Any], model: Model, ids: _CallIds) -> list[Mapping[str, Any]]:
    same = _same_model(m, model)
    blocks: list[Mapping[str, Any]] = []
    for b in m.get("content") or ():
        kind = b.get("type")
        if kind == "thinking":
            if b.get("redacted"):
                if same:
                    blocks.append(b)
            elif same and b.get("thinkingSignature"):
                blocks.append(b)
            elif (b.get("thinking") or "").strip():
                blocks.append(b if same else {"type": "text", "text": b["thinking"]})
        elif kind == "text":
            blocks.append(b if same else {"type": "text", "text": b.get("text") or ""})
        elif kind == "toolCall":
            if not same and "thoughtSignature" in b:
                b = {k: v for k, v in b.items() if k != "thoughtSignature"}
            blocks.append(ids.call(b))
    return blocks


def _answer_orphans(kept: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A synthetic error result for every tool call still unanswered when the next
    assistant or user turn comes (a trailing turn's calls are left alone)."""
    result: list[Mapping[str, Any]] = []
    pending: dict[str | None, str | None] = {}  # tool-call id -> name, calls still waiting for a result
    for m in kept:
        role = m.get("role")
        if role in ("assistant", "user") and pending:
            for call_id, name in pending.items():
                result.append({"role": "toolResult", "toolCallId": call_id, "toolName": name,
                               "content": [{"type": "text", "text": "No result provided"}],
                               "isError": True, "timestamp": m.get("timestamp") or _now_ms()})
            pending = {}
        if role == "assistant":
            for b in m["content"]:
                if b.get("type") == "toolCall":
                    pending[b.get("id")] = b.get("name")
        elif role == "toolResult":
            pending.pop(m.get("toolCallId"), None)
        result.append(m)
    return result


def _sanitize_id(call_id: str, limit: int) -> str:
    out = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in call_id)
    return out[:limit] or "call"


def _user_parts(content: str | list[Any] | None) -> list[dict[str, Any]]:
    """A user/tool content (str or list of blocks) -> list of blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or () if isinstance(b, dict)]


def _text_of(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(b.get("text") or "" for b in blocks if b.get("type") == "text")


def _json_body(body: object) -> bytes:
    """Serialise a request body as UTF-8 JSON, dropping lone surrogates (which
    providers reject) and joining surrogate pairs that came from escapes."""
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        import re
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
        text = re.sub("[\ud800-\udfff]", "", text)
        return text.encode("utf-8")


# ==== API families =============================================================
# An API family is its own section below plus one _Family row in _FAMILIES (the
# registry section). The row names:
#   build(model, ctx, o) -> (url, headers, body dict)
#       the request; runs inside stream(), so bad input is a ConfigError there
#   translator(b, o) -> an object with
#       event(kind, data) -> bool  one decoded frame, driving the _Builder b;
#                                  True once the provider said the turn is over
#       end(cut) -> reason         after the last frame: "stop" | "length" |
#                                  "toolUse", or raise PiError (cut: the body
#                                  ended before the provider's terminator)
#       whole(obj)                 a complete non-streamed JSON answer
#   decoder  the body's framing: SSEParser (the default), _EventStream (AWS
#            binary frames), or None when the answer is always one JSON body
#   relax(body, error) -> body | None   optional: send once more without an
#            optional field the server rejected
#   open(model, ctx, o) -> response     optional: bytes from elsewhere (faux)
# Translators raise PiError; stop words go through _stop_reason(), errors inside a
# stream through _in_band_error(). Credentials are not the family's business: the
# provider's auth style (_AUTH_HEADERS, _AUTH_STEPS) adds them to each attempt.


class _Family:
    __slots__ = ("build", "translator", "decoder", "relax", "open")

    def __init__(self, build: _Build, translator: Callable[[_Builder, _Options], _Translator],
                 decoder: type[_Decoder] | None = SSEParser, relax: _Relax | None = None,
                 open: _Open | None = None) -> None:
        self.build, self.translator, self.decoder = build, translator, decoder
        self.relax, self.open = relax, open


# Stop words of every family -> the done reason. Words that end the turn as an
# error are in _STOP_ERRORS; anything else is an error that names the word.
_STOP_WORDS: dict[str, _DoneReason] = {
    "stop": "stop", "end_turn": "stop", "stop_sequence": "stop", "end": "stop", "eos": "stop",
    "STOP": "stop", "COMPLETE": "stop", "STOP_SEQUENCE": "stop",
    "length": "length", "max_tokens": "length", "MAX_TOKENS": "length", "max_output_tokens": "length",
    "tool_calls": "toolUse", "tool_use": "toolUse", "function_call": "toolUse", "TOOL_CALL": "toolUse",
}
_STOP_ERRORS = {
    "content_filter": ("the provider's content filter stopped the answer", "invalid_request"),
    "content_filtered": ("the provider's content filter stopped the answer", "invalid_request"),
    "guardrail_intervened": ("a guardrail stopped the answer", "invalid_request"),
    "safety": ("the answer was blocked for safety", "invalid_request"),
    "sensitive": ("the answer was blocked as sensitive", "invalid_request"),
    "refusal": ("the model refused to answer", "invalid_request"),
    "model_context_window_exceeded": ("the model's context window was exceeded", "context_overflow"),
    "SAFETY": ("the answer was blocked for safety", "invalid_request"),
    "RECITATION": ("the answer was blocked for recitation", "invalid_request"),
    "BLOCKLIST": ("the answer hit a blocklist", "invalid_request"),
    "PROHIBITED_CONTENT": ("the answer was blocked as prohibited content", "invalid_request"),
    "SPII": ("the answer was blocked for personal information", "invalid_request"),
    "MALFORMED_FUNCTION_CALL": ("the model produced a malformed function call", "server"),
    "malformed_tool_use": ("the model produced a malformed tool call", "server"),
    "malformed_model_output": ("the model produced malformed output", "server"),
    "UNEXPECTED_TOOL_CALL": ("the model called a tool that was not offered", "server"),
    "TOO_MANY_TOOL_CALLS": ("the model made too many tool calls", "server"),
    "LANGUAGE": ("the answer was stopped for an unsupported language", "invalid_request"),
    "IMAGE_SAFETY": ("the image was blocked for safety", "invalid_request"),
    "IMAGE_PROHIBITED_CONTENT": ("the image was blocked as prohibited content", "invalid_request"),
    "IMAGE_RECITATION": ("the image was blocked for recitation", "invalid_request"),
    "IMAGE_OTHER": ("the image generation stopped", "server"),
    "NO_IMAGE": ("no image was generated", "server"),
    "OTHER": ("the model stopped for an unspecified reason", "server"),
    "error": ("the provider ended the stream with an error", "server"),
    "pause_turn": ("the server paused the turn (a long-running server tool); send the conversation again "
                   "to let it continue", "server"),
    "ERROR": ("the provider ended the stream with an error", "server"),
    "ERROR_TOXIC": ("the provider's safety filter stopped the answer", "invalid_request"),
    "ERROR_LIMIT": ("the model's context limit was reached", "context_overflow"),
    "TIMEOUT": ("the provider timed out generating the answer", "timeout"),
    "USER_CANCEL": ("the provider cancelled the answer", "server"),
}


def _frame_json(kind: str, data: str) -> Any:
    """One decoded frame's JSON. An "event: error" whose data is not JSON is a
    server error carrying that text; any other frame that is not JSON is a
    protocol error."""
    try:
        return json.loads(data)
    except RecursionError:
        raise PiError("a frame's JSON is nested too deeply", "protocol") from None
    except ValueError:
        if kind == "error":
            raise PiError(data[:20000] or "the server sent an error event", "server") from None
        raise PiError(f"invalid JSON in the stream: {data[:2000]!r}", "protocol") from None


def _stop_reason(word: object, details: str = "") -> _DoneReason:
    """The done reason for a provider's stop word, or raise the PiError it means
    (a refusal or filter keeps the provider's details in the message)."""
    reason = _STOP_WORDS.get(word) if isinstance(word, str) else None
    if reason:
        return reason
    what, kind = _STOP_ERRORS.get(word, (None, "server")) if isinstance(word, str) else (None, "server")
    message = f"{what} ({word})" if what else f"the provider ended the answer with an unknown stop reason {word!r}"
    raise PiError(message + (f": {details}" if details else ""), kind)

def _join_url(base: str, suffix: str) -> str:
    base, mark, query = base.partition("?")  # a query (SAP's api-version) stays at the end
    base = base.rstrip("/")
    return (base if base.endswith("/" + suffix) else base + "/" + suffix) + mark + query


# ---- shared by the families ----------------------------------------------------

def _count(value: Any) -> int:
    """A token count from a usage field: ints, floats or numeric strings; 0 otherwise."""
    try:
        return min(max(0, int(value or 0)), 10**15)  # no bill has more tokens; bigger is a hostile server
    except (TypeError, ValueError, OverflowError):
        return 0


def _error_message(err: object) -> str:
    if isinstance(err, list) and err and all(isinstance(e, dict) for e in err):
        # FastAPI / pydantic validation details: [{"loc": [...], "msg": ...}, ...]
        return "; ".join(f"{e.get('msg') or e.get('message') or e}"
                         + (f" ({'.'.join(str(p) for p in e['loc'])})" if isinstance(e.get("loc"), list) else "")
                         for e in err[:5])
    if isinstance(err, dict):
        msg = err.get("message") or err.get("msg") or err.get("detail") or err.get("error")
        if isinstance(msg, (dict, list)):
            return _error_message(msg)
        meta = err.get("metadata")
        raw = meta.get("raw") if isinstance(meta, dict) else None
        msg = str(msg) if msg else json.dumps(err)[:500]
        return f"{msg} ({str(raw)[:500]})" if raw else msg
    return str(err)


def _in_band_error(err: object) -> PiError:
    code = err.get("code") if isinstance(err, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    message = _error_message(err)
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    kind = _classify(status, message, code if isinstance(code, str) else etype) if (status or code or etype) \
        else ("context_overflow" if _is_overflow(message) else "server")
    e = PiError(message, kind, status)
    e.no_retry = True  # retries follow the HTTP status; this one came with a 200
    return e


def _effort(level: str, model_id: str) -> str:
    """A reasoning level a model takes: "xhigh" only where the model has it, else "high"."""
    xhigh = any(s in model_id for s in ("gpt-5.2", "gpt-5.3", "gpt-5.4", "gpt-5.5", "opus-4-6", "opus-4.6"))
    return "high" if level == "xhigh" and not xhigh else level


def _cache_mark(o: "_Options") -> "dict[str, str] | None":
    """The cache_control mark for cache_retention: short (the default) 5 minutes,
    long 1 hour, none no mark."""
    retention = o.cache_retention or "short"
    if retention == "none":
        return None
    return {"type": "ephemeral", "ttl": "1h"} if retention == "long" else {"type": "ephemeral"}


def _data_url(block: Mapping[str, Any]) -> str:
    """An image block as a data: URL (the OpenAI-shaped APIs take images so)."""
    return f"data:{block.get('mimeType') or 'image/png'};base64,{block.get('data') or ''}"


def _alternate(messages: list[dict[str, Any]], filler: dict[str, Any]) -> list[dict[str, Any]]:
    """Turns as APIs with strict roles want them (Anthropic, Bedrock): consecutive
    turns of one role merged, their content lists joined in order (a user's words
    after tool results, turns around a dropped one), and a user turn first
    (``filler`` when the conversation starts with the assistant)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"]:
            out[-1] = dict(out[-1], content=out[-1]["content"] + m["content"])
        else:
            out.append(m)
    if out and out[0]["role"] != "user":
        out.insert(0, {"role": "user", "content": [filler]})
    return out


def _tool_text(name: Any, args: Any = None, result: Any = None) -> str:
    """A tool call or result as words, for a request that cannot carry them as
    tool blocks (no tools sent, or a model that would refuse another's calls)."""
    if result is None:
        return f"[called the tool {name} with {json.dumps(args if isinstance(args, dict) else {})}]"
    return f"[the tool {name} returned: {result}]"


# ---- openai-completions -------------------------------------------------------

_OC_COMPAT: dict[str, Any] = {
    "supportsStore": False,             # send "store": false
    "supportsDeveloperRole": False,     # system prompt as "developer" for reasoning models
    "supportsUsageInStreaming": True,   # stream_options.include_usage
    "supportsReasoningEffort": True,
    "maxTokensField": "max_tokens",     # or "max_completion_tokens"
    "thinkingFormat": "openai",         # openai | openrouter | zai | qwen | qwen-chat-template | deepseek |
                                        # mistral | none
    "reasoningEffortMap": {},
    "requiresToolResultName": False,
    "requiresAssistantAfterToolResult": False,
    "requiresThinkingAsText": False,
    "toolIdFormat": None,               # None (<=40 chars) | "mistral" (9 alphanumerics)
    "supportsStrictMode": False,        # send "strict": false on tools
    "openRouterRouting": None,          # merged into the body as "provider"
    "vercelGatewayRouting": None,       # {only, order} -> providerOptions.gateway
    "cacheControlFor": None,            # model-id prefix whose prompts get cache_control marks
}

def _oc_compat(model: Model, o: "_Options | None" = None) -> dict[str, Any]:
    """Defaults, then the compat of the table row serving the request's host (so
    a custom provider pointed at a known service inherits its quirks), then the
    model's own compat (from the table, models.json or overrides)."""
    compat = dict(_OC_COMPAT)
    row = o.host_row if o is not None else None
    if row and row.get("compat") and row.get("api") == "openai-completions":
        compat.update(row["compat"])
    compat.update(model.get("compat") or {})
    return compat


def _oc_normalizer(compat: dict[str, Any]) -> Callable[[str], str]:
    if compat.get("toolIdFormat") == "mistral":
        def mistral(call_id: str) -> str:
            alnum = "".join(c for c in call_id if c.isascii() and c.isalnum())
            return alnum if len(alnum) == 9 else _id_hash(call_id, 9)
        return mistral
    return lambda call_id: _sanitize_id(call_id.split("|", 1)[0], 40)


def _json_or_none(text: object) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) and text[:1] == "{" else None
    except (ValueError, RecursionError):
        return None


def _image_url(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": _data_url(block)}}


def _oc_messages(model: Model, ctx: Context, compat: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = ctx.get("systemPrompt")
    if system:
        role: str | None = "developer" if model.get("reasoning") and compat["supportsDeveloperRole"] else "system"
        out.append({"role": role, "content": system})
    images_ok = "image" in (model.get("input") or ())
    bridge = {"role": "assistant", "content": "I have processed the tool results."}
    pending_images: list[dict[str, Any]] = []  # images of a run of tool results, sent after it as a user message
    after_tool = False
    messages = transform_messages(ctx.get("messages") or [], model, _oc_normalizer(compat))
    for m in messages + [{"role": None}]:  # the sentinel flushes a trailing run of tool results
        role = m.get("role")
        if role != "toolResult":
            if after_tool and compat["requiresAssistantAfterToolResult"] and (pending_images or role == "user"):
                out.append(dict(bridge))
            if pending_images:
                out.append({"role": "user", "content": [
                    {"type": "text", "text": "Attached image(s) from tool result:"}] + pending_images})
                pending_images = []
            after_tool = False
        if role == "user":
            content = m.get("content")
            if isinstance(content, str):
                out.append({"role": "user", "content": content})
                continue
            blocks = _user_parts(content)
            images = [_image_url(b) for b in blocks if b.get("type") == "image"] if images_ok else []
            if images:
                parts = [{"type": "text", "text": b.get("text") or ""} if b.get("type") == "text" else _image_url(b)
                         for b in blocks if b.get("type") in ("text", "image")]
                out.append({"role": "user", "content": parts})
            else:
                out.append({"role": "user", "content": _text_of(blocks)})
        elif role == "assistant":
            blocks = m.get("content") or []
            text = "\n\n".join(b["text"] for b in blocks if b.get("type") == "text" and (b.get("text") or "").strip())
            msg: dict[str, Any] = {"role": "assistant", "content": None}
            thinking = [b for b in blocks if b.get("type") == "thinking" and not b.get("redacted")]
            if thinking:
                joined = "\n".join(b.get("thinking") or "" for b in thinking)
                field = thinking[0].get("thinkingSignature")
                if compat["requiresThinkingAsText"]:
                    text = joined + ("\n\n" + text if text else "")
                elif field in ("reasoning_content", "reasoning", "reasoning_text") and joined.strip():
                    msg[field] = joined
            calls, details = [], []
            for b in blocks:
                if b.get("type") != "toolCall":
                    continue
                call = {"id": b.get("id"), "type": "function",
                        "function": {"name": b.get("name"), "arguments": json.dumps(b.get("arguments") or {})}}
                signature = _json_or_none(b.get("thoughtSignature"))
                if isinstance(signature, dict) and "extra_content" in signature:
                    call["extra_content"] = signature["extra_content"]
                elif isinstance(signature, dict):
                    details.append(signature)  # an OpenRouter reasoning detail
                calls.append(call)
            if not text and not calls:
                continue
            if text:
                msg["content"] = text
            if calls:
                msg["tool_calls"] = calls
            if details:
                msg["reasoning_details"] = details
            out.append(msg)
        elif role == "toolResult":
            blocks = _user_parts(m.get("content"))
            text = _text_of(blocks)
            has_images = any(b.get("type") == "image" for b in blocks)
            msg = {"role": "tool", "tool_call_id": m.get("toolCallId"),
                   "content": text or ("(see attached image)" if has_images else "")}
            if compat["requiresToolResultName"]:
                msg["name"] = m.get("toolName") or ""
            out.append(msg)
            if images_ok:
                pending_images.extend(_image_url(b) for b in blocks if b.get("type") == "image")
            after_tool = True
    return out


def _oc_reasoning(body: dict[str, Any], model: Model, compat: dict[str, Any], level: str | None) -> None:
    # Only when the caller asked (a level, "off" included: it switches thinking off
    # where a dialect can) and the model is known to reason: servers reject these
    # fields for other models, and unasked they would override the model's default.
    if level is None or not model.get("reasoning"):
        return
    fmt = compat.get("thinkingFormat") or "openai"
    on = level != "off"
    effort = _effort(level, model["id"])
    if fmt == "openai":
        if on and compat["supportsReasoningEffort"]:
            body["reasoning_effort"] = (compat.get("reasoningEffortMap") or {}).get(level, effort)
    elif fmt == "openrouter":
        body["reasoning"] = {"effort": effort} if on else {"enabled": False}
    elif fmt == "zai":
        body["thinking"] = {"type": "enabled" if on else "disabled"}
    elif fmt == "qwen":
        body["enable_thinking"] = on
    elif fmt == "qwen-chat-template":
        body["chat_template_kwargs"] = {"enable_thinking": on}
    elif fmt == "mistral":
        if on:
            body["prompt_mode"] = "reasoning"
    elif fmt == "deepseek":
        body["thinking"] = {"type": "enabled" if on else "disabled"}
        if level in ("high", "xhigh"):
            body["reasoning_effort"] = "max" if level == "xhigh" else "high"


def _oc_fixed_temperature(model: Model, url: str) -> bool:
    """OpenAI's own reasoning models (o1, o3, o4-mini, the gpt-5 family) reject any
    temperature but the default, so none is sent to them."""
    return (bool(model.get("reasoning")) and "api.openai.com" in url
            and model["id"].startswith(("o1", "o3", "o4", "gpt-5")))


def _oc_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, dict):
        return choice
    if choice in ("auto", "none", "required"):
        return choice
    if choice == "any":
        return "required"
    return {"type": "function", "function": {"name": choice}}


def _oc_build(model: Model, ctx: Context, o: "_Options") -> _RequestParts:
    compat = o.compat = _oc_compat(model, o)
    body: dict[str, Any] = {"model": model["id"], "messages": _oc_messages(model, ctx, compat), "stream": True}
    if compat["supportsUsageInStreaming"]:
        body["stream_options"] = {"include_usage": True}
    if compat["supportsStore"]:
        body["store"] = False
    if o.max_tokens is not None:
        body[compat["maxTokensField"]] = o.max_tokens
    if o.temperature is not None and not _oc_fixed_temperature(model, o.url):
        body["temperature"] = o.temperature
    tools = ctx.get("tools")
    if tools:
        body["tools"] = []
        for t in tools:
            fn: dict[str, Any] = {"name": t.get("name"), "description": t.get("description") or "",
                  "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
            if compat["supportsStrictMode"]:
                fn["strict"] = False
            body["tools"].append({"type": "function", "function": fn})
        if o.tool_choice is not None:
            body["tool_choice"] = _oc_tool_choice(o.tool_choice)
    _oc_reasoning(body, model, compat, o.reasoning)
    if "api.openai.com" in o.url and o.session_id and o.cache_retention != "none":
        body["prompt_cache_key"] = o.session_id
        if o.cache_retention == "long":
            body["prompt_cache_retention"] = "24h"
    prefix = compat.get("cacheControlFor")
    mark = _cache_mark(o)
    if prefix and model["id"].startswith(prefix) and mark:
        _mark_cache(body["messages"], mark)
    if compat.get("openRouterRouting"):
        body["provider"] = compat["openRouterRouting"]
    routing = compat.get("vercelGatewayRouting")
    if isinstance(routing, dict) and (routing.get("only") or routing.get("order")):
        body["providerOptions"] = {"gateway": {k: routing[k] for k in ("only", "order") if routing.get(k)}}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    return _join_url(o.url, "chat/completions"), headers, body


def _mark_cache(messages: list[dict[str, Any]], mark: dict[str, str]) -> None:
    """Anthropic models behind an OpenAI-style gateway cache up to a marked block:
    mark the last text of the last user or assistant message."""
    for msg in reversed(messages):
        if msg["role"] not in ("user", "assistant"):
            continue
        content = msg.get("content")
        if isinstance(content, str) and content:
            msg["content"] = [{"type": "text", "text": content, "cache_control": mark}]
            return
        if isinstance(content, list):
            for part in reversed(content):
                if part.get("type") == "text":
                    part["cache_control"] = mark
                    return


def _oc_relax(body: dict[str, Any], error: PiError) -> dict[str, Any] | None:
    """A 400/422 that names stream_options (servers that reject the field):
    the same body without it, else None."""
    if "stream_options" in body and error.status in (400, 422) and "stream_options" in str(error):
        return {k: v for k, v in body.items() if k != "stream_options"}
    return None


def _oc_usage(b: _Builder, usage: dict[str, Any]) -> None:
    prompt = _count(usage.get("prompt_tokens") or usage.get("input_tokens"))
    completion = _count(usage.get("completion_tokens") or usage.get("output_tokens"))
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = _count(details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens"))
    written = _count(details.get("cache_write_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = _count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    # OpenAI, DeepSeek, Groq and vLLM count reasoning inside completion_tokens (total =
    # prompt + completion); xAI leaves it out (total = prompt + completion + reasoning).
    # The numbers tell which; without a total, only xAI is known to leave it out.
    total = usage.get("total_tokens")
    if reasoning and (_count(total) == prompt + completion + reasoning
                      if total is not None else b.model.get("provider") == "xai"):
        completion += reasoning
    b.set_usage(max(0, prompt - cached - written), completion, cached, written)


def _oc_name(have: str, piece: str) -> str:
    """A tool name comes whole once (OpenAI), in pieces to concatenate (as the SDK
    does), or whole again with every fragment (MiniMax). A piece that starts with
    the name so far repeats or extends it and replaces it; any other is appended.
    (A name cut into two equal halves, "ab" + "ab", would read as a resend.)"""
    return piece if piece.startswith(have) else have + piece


def _oc_filtered(results: Any) -> list[str]:
    """The categories that Azure's content_filter_results flagged, with the
    severity, detection or blocklist id: ["hate (high)", "custom_blocklists (svir)"]."""
    found: list[str] = []
    for name, result in results.items() if isinstance(results, dict) else ():
        hits = result if isinstance(result, list) else [result]
        if isinstance(result, dict) and isinstance(result.get("details"), list):
            hits = result["details"]  # blocklists: {"filtered", "details": [{"filtered", "id"}]}
        for hit in hits:
            if isinstance(hit, dict) and hit.get("filtered"):
                what = hit.get("severity") or hit.get("id") or ("detected" if hit.get("detected") else "")
                found.append(f"{name} ({what})" if what else str(name))
    return found


class _OCTranslator:
    """openai-completions chunks -> builder calls."""

    __slots__ = ("b", "finish", "ended", "slots", "signatures", "refusal", "rid", "filtered")

    def __init__(self, b: _Builder, o: "_Options") -> None:
        self.b = b
        self.finish: str | None = None
        self.ended = False
        self.slots: dict[int | str | None, list[Any]] = {}  # tool_calls[].index -> [builder key, the call's id or None]
        self.signatures: dict[str, str] = {}  # tool-call id -> encrypted reasoning detail (JSON)
        self.refusal = ""       # delta.refusal pieces: never text, the message of the error at the end
        self.rid = ""           # the response id of the chunks, for the id of a legacy function_call
        self.filtered: list[str] = []  # categories Azure's content filter flagged, for a content_filter finish

    def event(self, kind: str, data: str) -> bool:
        if data[:6] == "[DONE]":
            self.ended = True
            return True
        chunk = _frame_json(kind, data)
        if isinstance(chunk, dict):
            if kind == "error" and not chunk.get("error"):  # "event: error" with a bare error object
                raise _in_band_error(chunk)
            self.chunk(chunk)
        return False

    def chunk(self, chunk: dict[str, Any]) -> None:
        err = chunk.get("error")
        if err:
            raise _in_band_error(err)
        usage = chunk.get("usage")
        if not self.rid and chunk.get("id") and isinstance(chunk["id"], str):
            self.rid = chunk["id"]  # the first: some gateways send a new one with every chunk
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta") or choice.get("message")
            if isinstance(delta, dict):
                self.delta(delta)
            usage = usage or choice.get("usage")
            if "content_filter_results" in choice:  # Azure's, also in chunks that carry nothing else
                self.filtered.extend(_oc_filtered(choice["content_filter_results"]))
            finish = choice.get("finish_reason")
            if finish:
                if finish == "error":
                    raise PiError("the provider ended the stream with finish_reason 'error'", "server")
                self.finish = str(finish)
        if isinstance(usage, dict):
            _oc_usage(self.b, usage)

    def delta(self, delta: dict[str, Any]) -> None:
        b = self.b
        if len(delta) == 1:  # the chunk almost every delta is: text alone
            content = delta.get("content")
            if content and type(content) is str:
                b.text(content)
                return
        for field in ("reasoning_content", "reasoning", "reasoning_text"):
            value = delta.get(field)
            if value and isinstance(value, str):
                b.thinking(value, field)
                break
        content = delta.get("content")
        if content:
            if isinstance(content, str):
                b.text(content)
            elif isinstance(content, list):  # Mistral-style content chunks
                for part in content:
                    if not isinstance(part, dict):
                        continue
                    if part.get("type") == "thinking":
                        for t in part.get("thinking") or ():
                            b.thinking(t.get("text") or "" if isinstance(t, dict) else str(t))
                    else:
                        b.text(part.get("text") or "")
        details = delta.get("reasoning_details")
        if details and isinstance(details, list):
            self.details(details, any(isinstance(delta.get(f), str) and delta.get(f)
                                      for f in ("reasoning_content", "reasoning", "reasoning_text")))
        refusal = delta.get("refusal")
        if refusal and isinstance(refusal, str):
            self.refusal += refusal
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                if isinstance(call, dict):
                    index = call.get("index", 0)
                    self.tool(index if isinstance(index, (int, str)) else 0, call)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):  # the deprecated single-call form: one call, no index, no id
            call_id = "call_" + _sanitize_id(self.rid, 35) if self.rid else None  # else the builder makes one
            self.tool(None, {"id": call_id, "function": legacy})

    def details(self, details: list[Any], have_text: bool) -> None:
        """OpenRouter-style reasoning_details: readable ones become thinking when
        no plain reasoning field carried it; encrypted ones are the signature of
        the tool call with the same id, echoed back with it next turn."""
        for d in details:
            if not isinstance(d, dict):
                continue
            kind = d.get("type")
            if kind == "reasoning.encrypted" and d.get("id") and d.get("data"):
                self.signatures[d["id"]] = json.dumps(d)
                self.b.sign_calls(self.signatures)
            elif not have_text and kind in ("reasoning.text", "reasoning.summary"):
                text = d.get("text") if kind == "reasoning.text" else d.get("summary")
                if isinstance(text, str):
                    self.b.thinking(text, "reasoning_details")

    def tool(self, index: int | str | None, call: dict[str, Any]) -> None:
        """One tool-call fragment for slot ``index`` (tool_calls[].index; None for
        the legacy function_call). One call per index: a new id starts another call
        only when it also brings a name (servers that reuse index 0 for parallel
        calls). LM Studio and Poolside send a new id with every fragment and an
        empty name; some gateways send arguments before the id and name."""
        b = self.b
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        name = fn.get("name") if isinstance(fn.get("name"), str) else ""
        args = fn.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args) if args else ""
        slot = self.slots.get(index)
        if slot is not None:
            block = b.tool_block(slot[0])
            is_open = slot[0] in b.open_tools
            # another call: a different id with a name, after a call that was complete or
            # had its own id and name (else the id is the first this call gets: adopted)
            if not (call_id and name and call_id != slot[1]
                    and (not is_open or (slot[1] is not None and block["name"]))):
                if not is_open:  # its arguments were a whole object: nothing valid can follow
                    if args.strip():
                        raise PiError(f"more arguments for tool call {block['name'] or block['id']!r} after its "
                                      f"JSON object was complete: {args[:200]!r}", "protocol")
                    return
                if call_id and slot[1] is None:  # the id came after the arguments began
                    b.tool_update(slot[0], call_id=call_id)
                    slot[1] = call_id
                    if self.signatures:
                        self.b.sign_calls(self.signatures)
                if name:
                    b.tool_update(slot[0], name=_oc_name(block["name"], name))
                b.tool_delta(slot[0], args)
                return
        b.end_finished_tools()
        key = len(b.tools)
        b.tool_start(key, call_id, name)
        self.slots[index] = [key, call_id]
        if self.signatures:
            self.b.sign_calls(self.signatures)
        extra = call.get("extra_content")
        if isinstance(extra, dict) and extra:  # Gemini's thought signature on its OpenAI endpoint
            b.tool_update(key, signature=json.dumps({"extra_content": extra}))
        b.tool_delta(key, args)

    def whole(self, obj: Any) -> None:
        """A complete (non-streamed) chat.completion body."""
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            raise PiError("the server answered with JSON that is not a chat completion", "protocol")
        for choice in obj["choices"][:1]:
            message = choice.get("message") if isinstance(choice, dict) else None
            for n, call in enumerate((message or {}).get("tool_calls") or ()):
                if isinstance(call, dict):
                    call.setdefault("index", n)  # whole messages list calls without an index
        self.chunk(obj)
        self.ended = True

    def end(self, eof: bool) -> _DoneReason:
        """-> the done reason, or raise when the stream did not complete."""
        # finish_reason is the provider's word that the turn is over; [DONE] after it
        # only closes the stream, and the SDK (and CONTRACT §6) do not wait for it.
        if not self.ended and self.finish is None:
            raise PiError("the stream ended before a finish_reason or data: [DONE] (cut off?)", "protocol")
        if self.refusal:  # OpenAI ends a refusal with finish_reason "stop"; it is not an answer
            return _stop_reason("refusal", self.refusal)  # raises, keeping the refusal text
        # an unknown word: the stream was well formed, the server ended the turn for a
        # reason we cannot vouch for (vLLM's "abort", a gateway's own word): kind server
        filtered = ", ".join(dict.fromkeys(self.filtered))
        return _stop_reason(self.finish or "stop", f"filtered: {filtered}" if filtered else "")


# ---- anthropic-messages -------------------------------------------------------
# Anthropic and the Anthropic-compatible providers (Kimi for Coding, MiniMax, ZenMux,
# Umans). Named SSE events; blocks are addressed by the API's own index.

_AM_VERSION = "2023-06-01"
_AM_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768}
_AM_ADAPTIVE = ("opus-4-6", "opus-4.6", "opus-4-7", "opus-4-8", "opus-5", "sonnet-4-6", "sonnet-4.6", "sonnet-5")
_AM_OAUTH_SYSTEM = "You are Claude Code, Anthropic's official CLI for Claude."


def _am_url(base: str) -> str:
    """{base}/v1/messages, without doubling a /v1 or /v1/messages already there."""
    base = base.rstrip("/")
    if base.endswith("/messages"):
        return base
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages")


def _am_image(block: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": block.get("mimeType") or "image/png",
                                        "data": block.get("data") or ""}}


def _am_user_blocks(content: Any, images: bool) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in _user_parts(content):
        if part.get("type") == "text" and (part.get("text") or "").strip():
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image" and images:
            blocks.append(_am_image(part))
    return blocks


def _am_assistant_blocks(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for b in m.get("content") or ():
        kind = b.get("type")
        if kind == "text" and (b.get("text") or "").strip():
            blocks.append({"type": "text", "text": b["text"]})
        elif kind == "thinking":
            # transform_messages kept signed or redacted thinking only for the model that
            # made it; an unsigned one (MiniMax's empty signatures) goes back as neither
            # text nor an empty signature: it is left out
            sig = b.get("thinkingSignature")
            if b.get("redacted") and sig:
                blocks.append({"type": "redacted_thinking", "data": sig})
            elif sig and not sig.startswith("{"):  # "{": foreign reasoning JSON, never Anthropic's
                blocks.append({"type": "thinking", "thinking": b.get("thinking") or "", "signature": sig})
        elif kind == "toolCall":
            args = b.get("arguments")
            blocks.append({"type": "tool_use", "id": b.get("id") or "", "name": b.get("name") or "",
                           "input": args if isinstance(args, dict) else {}})
    return blocks


def _am_tool_result(m: Mapping[str, Any], images: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for part in _user_parts(m.get("content")):
        if part.get("type") == "text":
            content.append({"type": "text", "text": part.get("text") or ""})
        elif part.get("type") == "image" and images:
            content.append(_am_image(part))
    content = [c for c in content if c["type"] != "text" or c["text"].strip()]
    if not any(c["type"] == "text" for c in content):  # Anthropic refuses empty text blocks
        content.insert(0, {"type": "text", "text": "(see attached image)" if content else "(no output)"})
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": m.get("toolCallId") or "", "content": content}
    if m.get("isError"):
        block["is_error"] = True
    return block


def _am_messages(model: Model, ctx: Context) -> list[dict[str, Any]]:
    """Context messages -> Anthropic messages: tool results merged into one user turn
    in order, ids rewritten to [A-Za-z0-9_-]{1,64}, turns with nothing left dropped."""
    images = "image" in (model.get("input") or ("text",))
    out: list[dict[str, Any]] = []
    for m in transform_messages(ctx.get("messages") or [], model, lambda i: _sanitize_id(i, 64)):
        role = m.get("role")
        if role == "user":
            blocks, role_out = _am_user_blocks(m.get("content"), images), "user"
        elif role == "assistant":
            blocks, role_out = _am_assistant_blocks(m), "assistant"
        else:
            blocks, role_out = [_am_tool_result(m, images)], "user"
            if out and out[-1]["role"] == "user" and out[-1]["content"][-1]["type"] == "tool_result":
                out[-1]["content"].extend(blocks)
                continue
        if blocks:
            out.append({"role": role_out, "content": blocks})
    return _alternate(out, {"type": "text", "text": "(the conversation continues)"})


def _am_tools_as_text(messages: list[dict[str, Any]]) -> None:
    """Tool blocks as words, for a request that sends no tools (the API refuses
    tool_use and tool_result blocks without tool definitions)."""
    names: dict[str, Any] = {}
    for m in messages:
        content = []
        for c in m["content"]:
            if c["type"] == "tool_use":
                names[c["id"]] = c["name"]
                content.append({"type": "text", "text": _tool_text(c["name"], c["input"])})
            elif c["type"] == "tool_result":
                said = " ".join(x["text"] for x in c["content"] if x["type"] == "text")
                content.append({"type": "text", "text": _tool_text(names.get(c["tool_use_id"], "a tool"),
                                                                   result=said)})
            else:
                content.append(c)
        m["content"] = content


def _am_thinking_blocked(messages: list[dict[str, Any]]) -> bool:
    """With thinking on, the assistant turn of the tool loop still open must begin
    with its (signed) thinking. A turn from another model, or one whose thinking
    could not go back, cannot: thinking stays off for this request."""
    for m in reversed(messages):
        if m["role"] == "assistant":
            content = m["content"]
            return (any(c["type"] == "tool_use" for c in content)
                    and content[0]["type"] not in ("thinking", "redacted_thinking"))
        if any(c["type"] != "tool_result" for c in m["content"]):
            return False  # the user spoke since: a new turn, no open tool loop
    return False


def _am_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        fn = choice.get("function")
        return {"type": "tool", "name": fn["name"]} if isinstance(fn, dict) and fn.get("name") else choice
    return {"auto": {"type": "auto"}, "none": {"type": "none"}, "any": {"type": "any"},
            "required": {"type": "any"}}.get(choice) or {"type": "tool", "name": choice}


def _am_thinking(body: dict[str, Any], model: Model, o: "_Options", off: bool = False) -> None:
    """reasoning= -> adaptive thinking with an effort (the 4.6 generation on), or a
    token budget with max_tokens raised to fit it; "off", unasked or ``off``: nothing."""
    level = o.reasoning
    if off or level is None or level == "off" or not model.get("reasoning"):
        if o.temperature is not None:
            body["temperature"] = o.temperature
        return
    compat = model.get("compat") or {}
    if compat.get("forceAdaptiveThinking") or any(s in model["id"] for s in _AM_ADAPTIVE):
        effort = _effort(level, model["id"])
        body["thinking"] = {"type": "adaptive"}
        body["output_config"] = {"effort": {"minimal": "low", "xhigh": "max"}.get(effort, effort)}
        return
    limit = int(model.get("maxTokens") or 0) or body["max_tokens"]
    budget = _AM_BUDGETS[_effort(level, model["id"])]
    body["max_tokens"] = min(body["max_tokens"] + budget, max(limit, body["max_tokens"]))
    if body["max_tokens"] <= budget:
        budget = max(1024, body["max_tokens"] - 1024)
        body["max_tokens"] = max(body["max_tokens"], budget + 1024)
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _am_build(model: Model, ctx: Context, o: "_Options") -> _RequestParts:
    mark = _cache_mark(o)
    if mark and mark.get("ttl") and model["provider"] != "anthropic":
        mark = {"type": "ephemeral"}  # compatible servers know the 5-minute cache only
    body: dict[str, Any] = {"model": model["id"], "messages": _am_messages(model, ctx),
                  "max_tokens": o.max_tokens or int(model.get("maxTokens") or 4096), "stream": True}
    system: list[dict[str, Any]] = [{"type": "text", "text": _AM_OAUTH_SYSTEM}] if o.oauth else []
    if ctx.get("systemPrompt"):
        system.append({"type": "text", "text": ctx["systemPrompt"]})
    if system:
        body["system"] = system
    tools = ctx.get("tools")
    if tools:
        body["tools"] = [{"name": t.get("name"), "description": t.get("description") or "",
                          "input_schema": t.get("parameters") or {"type": "object", "properties": {}}}
                         for t in tools]
        if o.tool_choice is not None:
            body["tool_choice"] = _am_tool_choice(o.tool_choice)
    else:
        _am_tools_as_text(body["messages"])
    if _am_thinking_blocked(body["messages"]):
        _am_thinking(body, model, o, off=True)
    else:
        _am_thinking(body, model, o)
    if mark:  # cache up to the system prompt and up to the last user block
        for block in system[-1:]:
            block["cache_control"] = mark
        for msg in reversed(body["messages"]):
            if msg["role"] == "user":
                msg["content"][-1]["cache_control"] = mark
                break
    betas = []
    if o.oauth:
        betas += ["claude-code-20250219", "oauth-2025-04-20"]
    if body.get("thinking", {}).get("type") == "enabled" and tools:
        betas.append("interleaved-thinking-2025-05-14")
    if mark and mark.get("ttl"):
        betas.append("extended-cache-ttl-2025-04-11")
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "anthropic-version": _AM_VERSION}
    if betas:
        headers["anthropic-beta"] = ",".join(betas)
    return _am_url(o.url), headers, body


class _AMTranslator:
    """anthropic-messages events -> builder calls. The API numbers its blocks;
    ``blocks`` maps that index to ("text" | "thinking", content index) or
    ("tool", builder key)."""

    __slots__ = ("b", "blocks", "stop", "details", "ended")

    def __init__(self, b: _Builder, o: "_Options") -> None:
        self.b = b
        self.blocks: dict[Any, tuple[str, Any]] = {}
        self.stop: str | None = None
        self.details = ""
        self.ended = False

    def event(self, kind: str, data: str) -> bool:
        if data[:6] == "[DONE]":  # OpenRouter's trailer after message_stop
            return self.ended
        ev = _frame_json(kind, data)
        if not isinstance(ev, dict):
            return False
        etype = ev.get("type") or kind
        if etype == "content_block_delta":
            self.delta(ev.get("index"), ev.get("delta") or {})
        elif etype == "content_block_start":
            self.start(ev.get("index"), ev.get("content_block") or {})
        elif etype == "content_block_stop":
            self.block_stop(ev.get("index"))
        elif etype == "message_start":
            self.usage((ev.get("message") or {}).get("usage"))
        elif etype == "message_delta":
            delta = ev.get("delta") or {}
            self.stop = delta.get("stop_reason") or self.stop
            self.details = _am_details(delta.get("stop_details")) or self.details
            self.usage(ev.get("usage"))
        elif etype == "message_stop":
            self.ended = True
            return True
        elif etype == "error":
            raise _am_error(ev.get("error") or ev)
        return False  # ping and event types added later are ignored

    def start(self, index: Any, block: dict[str, Any]) -> None:
        kind, b = block.get("type"), self.b
        if kind == "thinking":  # opened at once: an empty one may still carry a signature
            self.blocks[index] = (kind, b.begin(kind))
            b.thinking(block.get("thinking") or "")
            b.sign(block.get("signature") or "")
        elif kind == "text":  # opened by its first text: gateways send empty ones
            self.blocks[index] = (kind, None)
            self.delta(index, {"type": "text_delta", "text": block.get("text") or ""})
        elif kind == "redacted_thinking":
            b.redacted_thinking(block.get("data") or "")
        elif kind == "tool_use":
            b.tool_start(("am", index), block.get("id"), block.get("name"))
            self.blocks[index] = ("tool", ("am", index))
            if block.get("input"):  # whole input up front (a non-streamed answer)
                b.tool_delta(("am", index), json.dumps(block["input"]))

    def delta(self, index: Any, delta: dict[str, Any]) -> None:
        entry = self.blocks.get(index)
        if entry is None:
            return  # a block type we do not know (server tools, ...): skipped
        dtype, b = delta.get("type"), self.b
        if dtype == "text_delta" and entry[0] == "text":
            text = delta.get("text") or ""
            if text and entry[1] != b.cur:
                self.blocks[index] = ("text", b.begin("text"))
            b.text(text)
        elif dtype == "thinking_delta" and entry[0] == "thinking":
            b.thinking(delta.get("thinking") or "")
        elif dtype == "signature_delta" and entry[0] == "thinking":
            b.sign(delta.get("signature") or "", entry[1], append=True)
        elif dtype == "input_json_delta" and entry[0] == "tool":
            b.tool_delta(entry[1], delta.get("partial_json") or "")

    def block_stop(self, index: Any) -> None:
        entry = self.blocks.pop(index, None)
        if entry is not None:
            self.b.end_block(*entry)

    def usage(self, usage: Any) -> None:
        """message_start's counts, then message_delta's cumulative ones (each only
        when present: proxies leave some out)."""
        if not isinstance(usage, dict):
            return
        names = (("input_tokens", "input"), ("output_tokens", "output"),
                 ("cache_read_input_tokens", "cacheRead"), ("cache_creation_input_tokens", "cacheWrite"))
        counts = {ours: _count(usage[theirs]) for theirs, ours in names if usage.get(theirs) is not None}
        if counts:
            self.b.update_usage(**counts)

    def whole(self, obj: Any) -> None:
        """A complete (non-streamed) message body."""
        if not isinstance(obj, dict) or obj.get("type") not in ("message", None) or "content" not in obj:
            raise PiError("the server answered with JSON that is not an Anthropic message", "protocol")
        self.usage(obj.get("usage"))
        for n, block in enumerate(obj.get("content") or ()):
            if isinstance(block, dict):
                self.start(n, block)
                self.block_stop(n)
        self.stop = obj.get("stop_reason") or "end_turn"
        self.details = _am_details(obj.get("stop_details"))
        self.ended = True

    def end(self, cut: bool) -> _DoneReason:
        if not self.ended:
            raise PiError("the stream ended before message_stop (cut off?)", "protocol")
        return _stop_reason(self.stop or "end_turn", self.details)


def _am_details(details: Any) -> str:
    """stop_details (a refusal's category and explanation) as text for the error."""
    if not isinstance(details, dict):
        return ""
    text = " ".join(str(details[k]) for k in ("explanation", "message") if details.get(k))
    category = details.get("category")
    return (f"{text} (category: {category})" if category else text) or json.dumps(details)[:500]


def _am_error(err: Any) -> PiError:
    """An in-band error event; an overload is worth retrying while nothing was shown."""
    e = _in_band_error(err)
    if isinstance(err, dict) and err.get("type") in ("overloaded_error", "api_error"):
        e.kind, e.no_retry, e.transient = "server", False, True
    return e


# ---- bedrock-converse-stream ----------------------------------------------------
# Amazon Bedrock's ConverseStream: a JSON request, AWS event-stream frames back.
# Credentials: a bearer token (AWS_BEARER_TOKEN_BEDROCK, no botocore needed) or
# SigV4 with botocore's signer and credential chain, signed on every attempt.

_BR_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                     "image/webp": "webp"}
_BR_EXCEPTIONS = {  # in-stream exception -> (kind, worth retrying before any content)
    "throttlingException": ("rate_limit", True), "serviceUnavailableException": ("server", True),
    "internalServerException": ("server", True), "modelStreamErrorException": ("server", False),
    "validationException": ("invalid_request", False), "modelTimeoutException": ("timeout", True),
}


def _br_image(block: "dict[str, Any]") -> "dict[str, Any]":
    fmt = _BR_IMAGE_FORMATS.get(str(block.get("mimeType") or "").lower(), "png")
    return {"image": {"format": fmt, "source": {"bytes": block.get("data") or ""}}}


def _br_user(content: Any, images: bool) -> "list[dict[str, Any]]":
    out: list[dict[str, Any]] = []
    for part in _user_parts(content):
        if part.get("type") == "text" and (part.get("text") or "").strip():
            out.append({"text": part["text"]})
        elif part.get("type") == "image" and images:
            out.append(_br_image(part))
    return out


def _br_assistant(m: Mapping[str, Any]) -> "list[dict[str, Any]]":
    out: list[dict[str, Any]] = []
    for b in m.get("content") or ():
        kind = b.get("type")
        if kind == "text" and (b.get("text") or "").strip():
            out.append({"text": b["text"]})
        elif kind == "thinking":  # signed (or redacted) reasoning of this very model only
            sig = b.get("thinkingSignature")
            if b.get("redacted") and sig:
                out.append({"reasoningContent": {"redactedContent": sig}})
            elif sig and not sig.startswith("{"):
                out.append({"reasoningContent": {"reasoningText": {"text": b.get("thinking") or "",
                                                                   "signature": sig}}})
        elif kind == "toolCall":
            args = b.get("arguments")
            out.append({"toolUse": {"toolUseId": b.get("id") or "", "name": b.get("name") or "",
                                    "input": args if isinstance(args, dict) else {}}})
    return out


def _br_tool_result(m: Mapping[str, Any], images: bool) -> "dict[str, Any]":
    content = _br_user(m.get("content"), images) or [{"text": "(no output)"}]
    return {"toolResult": {"toolUseId": m.get("toolCallId") or "", "content": content,
                           "status": "error" if m.get("isError") else "success"}}


def _br_messages(model: Model, ctx: Context) -> "list[dict[str, Any]]":
    images = "image" in (model.get("input") or ("text",))
    out: list[dict[str, Any]] = []
    for m in transform_messages(ctx.get("messages") or [], model, lambda i: _sanitize_id(i, 64)):
        role = m.get("role")
        if role == "assistant":
            blocks, who = _br_assistant(m), "assistant"
        elif role == "user":
            blocks, who = _br_user(m.get("content"), images), "user"
        else:
            blocks, who = [_br_tool_result(m, images)], "user"
            if out and out[-1]["role"] == "user" and "toolResult" in out[-1]["content"][-1]:
                out[-1]["content"].extend(blocks)  # results of one turn go back in one user turn
                continue
        if blocks:
            out.append({"role": who, "content": blocks})
    return _alternate(out, {"text": "(the conversation continues)"})


def _br_tools_as_text(messages: list[dict[str, Any]]) -> None:
    """toolUse/toolResult blocks as words: Converse refuses them without a toolConfig."""
    names: dict[str, Any] = {}
    for m in messages:
        content = []
        for c in m["content"]:
            if "toolUse" in c:
                use = c["toolUse"]
                names[use["toolUseId"]] = use["name"]
                content.append({"text": _tool_text(use["name"], use["input"])})
            elif "toolResult" in c:
                res = c["toolResult"]
                said = " ".join(x["text"] for x in res["content"] if "text" in x)
                content.append({"text": _tool_text(names.get(res["toolUseId"], "a tool"), result=said)})
            else:
                content.append(c)
        m["content"] = content


def _br_thinking_blocked(messages: list[dict[str, Any]]) -> bool:
    """As _am_thinking_blocked, in Converse's blocks."""
    for m in reversed(messages):
        if m["role"] == "assistant":
            content = m["content"]
            return any("toolUse" in c for c in content) and "reasoningContent" not in content[0]
        if any("toolResult" not in c for c in m["content"]):
            return False
    return False


def _br_tool_choice(choice: Any) -> "dict[str, Any] | None":
    if isinstance(choice, dict):
        fn = choice.get("function")
        return {"tool": {"name": fn["name"]}} if isinstance(fn, dict) and fn.get("name") else choice
    return {"auto": {"auto": {}}, "any": {"any": {}}, "required": {"any": {}}, "none": None}.get(
        choice, {"tool": {"name": choice}})


def _br_build(model: Model, ctx: Context, o: "_Options") -> _RequestParts:
    claude = "claude" in model["id"].lower()
    body: dict[str, Any] = {"messages": _br_messages(model, ctx)}
    if ctx.get("systemPrompt"):
        body["system"] = [{"text": ctx["systemPrompt"]}]
    # thinking, max tokens and temperature as for Anthropic itself, then moved to Converse's fields
    am: dict[str, Any] = {"max_tokens": o.max_tokens or int(model.get("maxTokens") or 4096)}
    if claude:
        _am_thinking(am, model, o, off=_br_thinking_blocked(body["messages"]))
    elif o.temperature is not None:
        am["temperature"] = o.temperature
    body["inferenceConfig"] = {"maxTokens": am["max_tokens"]}
    if "temperature" in am:
        body["inferenceConfig"]["temperature"] = am["temperature"]
    extra = {k: am[k] for k in ("thinking", "output_config") if k in am}
    if extra:
        body["additionalModelRequestFields"] = extra
    tools = ctx.get("tools")
    choice = _br_tool_choice(o.tool_choice) if o.tool_choice is not None else None
    if tools and not (o.tool_choice == "none"):
        body["toolConfig"] = {"tools": [{"toolSpec": {
            "name": t.get("name"), "description": t.get("description") or t.get("name"),
            "inputSchema": {"json": t.get("parameters") or {"type": "object", "properties": {}}}}} for t in tools]}
        if choice:
            body["toolConfig"]["toolChoice"] = choice
    else:
        _br_tools_as_text(body["messages"])
    if _cache_mark(o) and (claude or "nova" in model["id"].lower()):  # models with prompt caching
        if "system" in body:
            body["system"].append({"cachePoint": {"type": "default"}})
        for msg in reversed(body["messages"]):
            if msg["role"] == "user":
                msg["content"].append({"cachePoint": {"type": "default"}})
                break
    url = o.url.rstrip("/")
    for suffix in ("/converse-stream", "/converse"):
        if url.endswith(suffix):  # a full endpoint URL given as the base
            url = url[:-len(suffix)].rpartition("/model/")[0]
    url += "/model/" + _quote(model["id"]) + "/converse-stream"
    headers = {"Content-Type": "application/json", "Accept": "application/vnd.amazon.eventstream"}
    return url, headers, body


class _BRTranslator:
    """ConverseStream events -> builder calls; blocks are addressed by
    contentBlockIndex. messageStop says the turn is over; metadata (usage) follows."""

    __slots__ = ("b", "blocks", "stop")

    def __init__(self, b: _Builder, o: "_Options") -> None:
        self.b = b
        self.blocks: dict[Any, tuple[str, Any]] = {}  # contentBlockIndex -> (kind, content index or key)
        self.stop: "str | None" = None

    def event(self, kind: str, data: str) -> bool:
        if kind.startswith("!"):
            raise _br_exception(kind, data)
        try:
            ev = json.loads(data) if data else {}
        except (ValueError, RecursionError):
            raise PiError(f"invalid JSON in a {kind or 'Bedrock'} event: {data[:200]!r}", "protocol") from None
        if not isinstance(ev, dict):
            return False
        if kind == "contentBlockDelta":
            self.delta(ev.get("contentBlockIndex"), ev.get("delta") or {})
        elif kind == "contentBlockStart":
            use = (ev.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                key = ("br", ev.get("contentBlockIndex"))
                self.b.tool_start(key, use.get("toolUseId"), use.get("name"))
                self.blocks[ev.get("contentBlockIndex")] = ("tool", key)
        elif kind == "contentBlockStop":
            self.block_stop(ev.get("contentBlockIndex"))
        elif kind == "messageStop":
            self.stop = ev.get("stopReason") or "end_turn"
        elif kind == "metadata":
            self.usage(ev.get("usage"))
            return self.stop is not None
        return False  # messageStart and event types added later

    def delta(self, index: Any, delta: "dict[str, Any]") -> None:
        b = self.b
        entry = self.blocks.get(index)
        if "text" in delta:
            if entry is None or entry[1] != b.cur or entry[0] != "text":
                entry = self.blocks[index] = ("text", b.begin("text"))
            b.text(delta.get("text") or "")
        elif isinstance(delta.get("toolUse"), dict) and entry is not None and entry[0] == "tool":
            b.tool_delta(entry[1], delta["toolUse"].get("input") or "")
        elif isinstance(delta.get("reasoningContent"), dict):
            rc = delta["reasoningContent"]
            if rc.get("redactedContent"):
                b.redacted_thinking(rc["redactedContent"])
                self.blocks.pop(index, None)
                return
            if entry is None or entry[1] != b.cur or entry[0] != "thinking":
                entry = self.blocks[index] = ("thinking", b.begin("thinking"))
            b.thinking(rc.get("text") or "")
            b.sign(rc.get("signature") or "", entry[1], append=True)
        # citations, images and block types added later: skipped

    def block_stop(self, index: Any) -> None:
        entry = self.blocks.pop(index, None)
        if entry is not None:
            self.b.end_block(*entry)

    def usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.b.set_usage(_count(usage.get("inputTokens")), _count(usage.get("outputTokens")),
                             _count(usage.get("cacheReadInputTokens")), _count(usage.get("cacheWriteInputTokens")))

    def whole(self, obj: Any) -> None:
        """A non-streamed Converse answer."""
        message = ((obj.get("output") or {}).get("message") or {}) if isinstance(obj, dict) else {}
        if not isinstance(message.get("content"), list):
            raise PiError("the server answered with JSON that is not a Converse response", "protocol")
        for n, block in enumerate(message["content"]):
            if isinstance(block, dict) and isinstance(block.get("toolUse"), dict):
                use = block["toolUse"]
                self.event("contentBlockStart", json.dumps({"contentBlockIndex": n, "start": {"toolUse": use}}))
                self.b.tool_delta(("br", n), json.dumps(use.get("input") or {}))
            elif isinstance(block, dict):
                self.delta(n, {k: v for k, v in block.items() if k in ("text", "reasoningContent")})
            self.block_stop(n)
        self.stop = obj.get("stopReason") or "end_turn"
        self.usage(obj.get("usage"))

    def end(self, cut: bool) -> _DoneReason:
        if self.stop is None:
            raise PiError("the stream ended before messageStop (cut off?)", "protocol")
        return _stop_reason(self.stop)


def _br_exception(kind: str, data: str) -> PiError:
    """An exception or error frame in the stream."""
    name = kind.partition(":")[2]
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        payload = {"message": data}
    message = _error_message(payload) if isinstance(payload, dict) else str(payload)
    what, retry = _BR_EXCEPTIONS.get(name, ("server", False))
    if what == "invalid_request" and _is_overflow(message):
        what = "context_overflow"
    e = PiError(f"{name or 'error'}: {message}", what)
    e.transient = retry
    return e


# SigV4 and the bearer token: the credential chain is resolved by stream(), the
# signature made on every attempt over the final bytes (a retry is signed again).

def _br_credentials(pid: str, model: Model, row: "_Row | None", pconf: dict[str, Any], o: "_Options") -> None:
    """Resolve Bedrock's URL and credentials into o (ConfigError when there are none)."""
    trusted = _base_url(pid, model, row, pconf, o)
    token = o.api_key or (os.environ.get("AWS_BEARER_TOKEN_BEDROCK", "").strip() if trusted else "")
    entry = _auth_json_entry(pid)[1] if trusted and not token else None
    if not token and isinstance(entry, dict) and entry.get("type") in ("bearer_token", "api_key"):
        token = entry.get("token") or entry.get("key") or ""
    if token:
        o.secrets.append(token)
        o.auth_headers["Authorization"] = "Bearer " + token
        return
    if not trusted:
        return  # a base URL elsewhere gets no stored credentials
    try:
        import botocore.session
    except ImportError:
        raise ConfigError("amazon-bedrock: set AWS_BEARER_TOKEN_BEDROCK, or install botocore for SigV4 "
                          "(pip install 'pi-min[bedrock]') and configure AWS credentials") from None
    session = botocore.session.get_session()
    if isinstance(entry, dict) and entry.get("type") == "aws_credentials":
        from botocore.credentials import Credentials
        creds: Any = Credentials(entry.get("access_key_id"), entry.get("secret_access_key"),
                                 entry.get("session_token"))
        region = entry.get("region")
    else:
        creds = session.get_credentials()
        region = session.get_config_variable("region")
    if creds is None:
        raise ConfigError("amazon-bedrock: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                          "AWS_PROFILE, or AWS_BEARER_TOKEN_BEDROCK")
    if region and not o.base_url and not _br_env_region():
        o.url = f"https://bedrock-runtime.{region}.amazonaws.com"
    o.credential = creds
    o.auth_step = _sigv4_step


def _br_env_region() -> str:
    return (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "").strip()


def _sigv4_step(o: "_Options", method: str, url: str, headers: "dict[str, str]", data: bytes, watch: Any) -> None:
    """Sign the request as it will be sent, with credentials fresh for this attempt."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    creds = o.credential.get_frozen_credentials() if hasattr(o.credential, "get_frozen_credentials") \
        else o.credential
    o.secrets.extend(s for s in (creds.secret_key, creds.token) if s)
    host = _split_url(url)[1]
    region = host.split(".")[1] if host.startswith("bedrock-runtime.") else (_br_env_region() or "us-east-1")
    request = AWSRequest(method=method, url=url, data=data,
                         headers={k: v for k, v in headers.items() if k.lower() != "user-agent"})
    SigV4Auth(creds, "bedrock", region).add_auth(request)
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in request.headers:
            headers[name] = request.headers[name]
# ---- cohere-chat --------------------------------------------------------------
# Cohere's v2 chat. Named SSE events whose JSON repeats the name in "type": text and
# thinking come as numbered content blocks, the tool plan (what the model means to
# do before it calls tools) as deltas of its own, tool calls one object at a time.
# Citations are not part of pi's messages and are skipped.


def _co_url(base: str) -> str:
    """{base}/chat; a bare host gets /v2/chat, a URL ending in /chat is kept."""
    base = base.rstrip("/")
    if base.endswith("/chat"):
        return base
    return base + ("/chat" if base.partition("://")[2].partition("/")[2] else "/v2/chat")


def _co_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _co_user(content: Any, images: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in _user_parts(content):
        if part.get("type") == "text" and part.get("text"):
            parts.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image" and images:
            parts.append(_image_url(part))
    return parts


def _co_assistant(m: Mapping[str, Any]) -> dict[str, Any]:
    """An assistant turn: text and thinking as content, tool calls with the
    reasoning before them as the tool plan (what Cohere streamed it as)."""
    blocks = [b for b in m.get("content") or () if isinstance(b, dict)]
    calling = any(b.get("type") == "toolCall" for b in blocks)
    content: list[dict[str, Any]] = []
    plan: list[str] = []
    calls: list[dict[str, Any]] = []
    for b in blocks:
        kind = b.get("type")
        if kind == "text" and (b.get("text") or "").strip():
            content.append({"type": "text", "text": b["text"]})
        elif kind == "thinking" and (b.get("thinking") or "").strip():
            # transform_messages left only this model's own thinking as thinking
            if calling:
                plan.append(b["thinking"])
            else:
                content.append({"type": "thinking", "thinking": b["thinking"]})
        elif kind == "toolCall":
            args = b.get("arguments")
            calls.append({"id": b.get("id") or "", "type": "function", "function": {
                "name": b.get("name") or "", "arguments": json.dumps(args if isinstance(args, dict) else {})}})
    msg: dict[str, Any] = {"role": "assistant"}
    if content:
        msg["content"] = content
    if plan:
        msg["tool_plan"] = "\n\n".join(plan)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _co_messages(model: Model, ctx: Context) -> list[dict[str, Any]]:
    images = "image" in (model.get("input") or ("text",))
    out: list[dict[str, Any]] = []
    if ctx.get("systemPrompt"):
        out.append({"role": "system", "content": ctx["systemPrompt"]})
    for m in transform_messages(ctx.get("messages") or [], model, lambda i: _sanitize_id(i, 64)):
        role = m.get("role")
        if role == "user":
            parts = _co_user(m.get("content"), images)
            if parts:
                out.append({"role": "user", "content": parts})
        elif role == "assistant":
            msg = _co_assistant(m)
            if len(msg) > 1:
                out.append(msg)
        else:  # Cohere's tool results hold text; an image is named, not sent
            parts = _user_parts(m.get("content"))
            text = _text_of(parts) or ("(image)" if parts else "") or "(no output)"
            out.append({"role": "tool", "tool_call_id": m.get("toolCallId") or "", "content": text})
    return out


def _co_tool_choice(choice: Any) -> str | None:
    """tool_choice -> Cohere's word (None: let the model choose)."""
    if choice is None or choice == "auto":
        return None
    word = {"none": "NONE", "required": "REQUIRED", "any": "REQUIRED"}.get(choice) if isinstance(choice, str) else None
    if word is None:
        raise ConfigError(f"cohere-chat: tool_choice must be auto, none or required, not {choice!r} "
                          "(Cohere cannot be made to call one named tool)")
    return word


def _co_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    body: dict[str, Any] = {"model": model["id"], "messages": _co_messages(model, ctx), "stream": True}
    if o.max_tokens is not None:
        body["max_tokens"] = o.max_tokens
    if o.temperature is not None:
        body["temperature"] = o.temperature
    tools = ctx.get("tools")
    if tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description") or "",
            "parameters": t.get("parameters") or {"type": "object", "properties": {}}}} for t in tools]
        choice = _co_tool_choice(o.tool_choice)
        if choice:
            body["tool_choice"] = choice
    if model.get("reasoning") and o.reasoning is not None:
        # reasoning models think unless told not to; a level sets pi's usual budget
        body["thinking"] = {"type": "disabled"} if o.reasoning == "off" else {
            "type": "enabled", "token_budget": _AM_BUDGETS[o.reasoning]}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    return _co_url(o.url), headers, body


class _COTranslator:
    """cohere-chat events -> builder calls. ``kinds`` maps a content block's index
    to text | thinking; tool calls get a key of their own, since some servers leave
    out their index (deltas without one belong to the call started last)."""

    __slots__ = ("b", "kinds", "calls", "last_call", "stop", "details", "ended")

    def __init__(self, b: _Builder, o: _Options) -> None:
        self.b = b
        self.kinds: dict[Any, str] = {}
        self.calls: dict[Any, tuple[str, int]] = {}  # API index -> builder key
        self.last_call: tuple[str, int] | None = None
        self.stop = "COMPLETE"
        self.details = ""
        self.ended = False

    def event(self, kind: str, data: str) -> bool:
        if data[:6] == "[DONE]":  # the SDK's end of stream; end() judges whether message-end came
            return True
        ev = _frame_json(kind, data)
        if not isinstance(ev, dict):
            return False
        etype = str(ev.get("type") or kind)
        delta = _co_dict(ev.get("delta"))
        message = _co_dict(delta.get("message"))
        if etype in ("content-start", "content-delta"):
            self.content(ev.get("index"), message.get("content"))
        elif etype == "content-end":
            if self.b.cur_type and self.b.cur_type == self.kinds.get(ev.get("index")):
                self.b.close_current()
        elif etype == "tool-plan-delta":
            self.b.thinking(str(message.get("tool_plan") or ""))
        elif etype.startswith("tool-call-"):
            self.tool(etype, ev.get("index"), message.get("tool_calls"))
        elif etype == "message-end":
            self.stop = delta.get("finish_reason") or self.stop
            self.details = str(delta.get("error") or "")
            self.usage(delta.get("usage"))
            self.ended = True
            return True
        return False  # message-start, citations, debug and event types added later

    def content(self, index: Any, part: Any) -> None:
        if not isinstance(part, dict):
            return
        kind = part.get("type") or self.kinds.get(index) or ("thinking" if "thinking" in part else "text")
        self.kinds[index] = kind
        if kind == "thinking":
            self.b.thinking(str(part.get("thinking") or ""))
        elif kind == "text":
            self.b.text(str(part.get("text") or ""))

    def tool(self, etype: str, index: Any, call: Any) -> None:
        if isinstance(call, list):  # a list where the API sends one object
            call = call[0] if call else None
        call = _co_dict(call)
        fn = _co_dict(call.get("function"))
        key = self.last_call if index is None else self.calls.get(index, self.last_call)
        if etype == "tool-call-start":
            key = self.last_call = ("co", len(self.b.content))  # unique: the block it opens
            self.calls[index] = key
            self.b.tool_start(key, call.get("id"), fn.get("name"))
        elif key is None or key not in self.b.open_tools:
            return
        if etype == "tool-call-end":
            # a call whose arguments were cut stays open: done() ends it as the stop
            # reason says (kept when the turn ended for length, an error otherwise)
            self.b.end_finished_tools()
        else:
            self.b.tool_delta(key, str(fn.get("arguments") or ""))

    def usage(self, usage: Any) -> None:
        """tokens (else billed_units); cached prompt tokens are taken out of the input."""
        if not isinstance(usage, dict):
            return
        tokens = _co_dict(usage.get("tokens") or usage.get("billed_units"))
        cached = _count(usage.get("cached_tokens"))
        self.b.set_usage(max(0, _count(tokens.get("input_tokens")) - cached), _count(tokens.get("output_tokens")),
                         cached)

    def whole(self, obj: Any) -> None:
        """A complete (non-streamed) chat response."""
        msg = obj.get("message") if isinstance(obj, dict) else None
        if not isinstance(msg, dict):
            raise PiError("the server answered with JSON that is not a Cohere chat response", "protocol")
        content = msg.get("content")
        for item in [{"type": "text", "text": content}] if isinstance(content, str) else content or ():
            if isinstance(item, dict):
                self.content(None, item)
                self.b.close_current()
        self.b.thinking(str(msg.get("tool_plan") or ""))
        for n, call in enumerate(msg.get("tool_calls") or ()):
            self.tool("tool-call-start", n, call)
            self.tool("tool-call-end", n, None)
        self.stop = obj.get("finish_reason") or self.stop
        self.usage(obj.get("usage"))
        self.ended = True

    def end(self, cut: bool) -> _DoneReason:
        if not self.ended:
            raise PiError("the stream ended before message-end (cut off?)", "protocol")
        return _stop_reason(self.stop, self.details)


# ---- gitlab-chat --------------------------------------------------------------
# GitLab Duo Chat's REST endpoint: not OpenAI-shaped and not streamed. The last user
# message is the question; the system prompt and the earlier turns go along as
# context; the answer is one JSON string (no tools, no usage).


def _gl_url(base: str) -> str:
    """An instance URL -> its chat endpoint; /api/v4 or the whole path is kept."""
    base = base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/api/v4") else "/api/v4/chat/completions")


def _gl_line(m: Mapping[str, Any]) -> str:
    """One earlier message as a line of context ("" when it has nothing to say)."""
    role = m.get("role")
    if role == "user":
        text = _text_of(_user_parts(m.get("content")))
        return f"[User]: {text}" if text.strip() else ""
    if role == "assistant":
        said = []
        for b in m.get("content") or ():
            if b.get("type") == "text" and (b.get("text") or "").strip():
                said.append(b["text"])
            elif b.get("type") == "toolCall":
                said.append(f"(called the tool {b.get('name')} with {json.dumps(b.get('arguments') or {})})")
        return "[Assistant]: " + "\n".join(said) if said else ""
    text = _text_of(_user_parts(m.get("content"))) or "(no output)"
    return f"[Tool result of {m.get('toolName') or 'a tool'}]: {text}"


def _gl_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    messages = transform_messages(ctx.get("messages") or [], model)
    last = messages[-1] if messages else {}
    question = _text_of(_user_parts(last.get("content"))) if last.get("role") == "user" else ""
    if not question.strip():
        raise ConfigError("gitlab: GitLab Duo Chat answers a question: the conversation must end with a user "
                          "message that has text")
    context: list[dict[str, Any]] = []
    if ctx.get("systemPrompt"):
        context.append({"category": "file", "id": "system-prompt", "content": f"[System]: {ctx['systemPrompt']}"})
    for n, m in enumerate(messages[:-1]):
        line = _gl_line(m)
        if line:
            context.append({"category": "file", "id": f"message-{n}", "content": line})
    body: dict[str, Any] = {"content": question, "with_clean_history": True}
    if context:
        body["additional_context"] = context
    return _gl_url(o.url), {"Content-Type": "application/json", "Accept": "application/json"}, body


class _GLTranslator:
    """GitLab's answer (a JSON string, or an object with "response" or "content")
    -> one text block."""

    __slots__ = ("b",)

    def __init__(self, b: _Builder, o: _Options) -> None:
        self.b = b

    def event(self, kind: str, data: str) -> bool:  # the family has no decoder: never called
        raise PiError("GitLab Duo Chat does not stream", "protocol")

    def whole(self, obj: Any) -> None:
        text = obj.get("response", obj.get("content")) if isinstance(obj, dict) else obj
        if not isinstance(text, str):
            raise PiError(f"GitLab answered with JSON that is not a chat answer: {json.dumps(obj)[:200]}",
                          "protocol")
        self.b.text(text)

    def end(self, cut: bool) -> _DoneReason:
        return "stop"


# ---- google-generative-ai -----------------------------------------------------
# The Gemini API (and Vertex AI's Gemini models, below). Every SSE event is a whole
# GenerateContentResponse: parts arrive whole (a function call in one part), a
# thoughtSignature rides on the part it signs, usageMetadata is a running snapshot,
# and nothing but the candidate's finishReason says the turn is over.

_G_SKIP_SIGNATURE = "skip_thought_signature_validator"  # the Gemini API's "unsigned on purpose"
# Gemini 2.5 thinking budgets: family -> (the budget for "off", tokens per level). Pro
# cannot stop thinking, so its "off" is its smallest budget.
_G_BUDGETS = {
    "pro": (128, {"minimal": 128, "low": 2048, "medium": 8192, "high": 32768}),
    "flash": (0, {"minimal": 128, "low": 2048, "medium": 8192, "high": 24576}),
    "flash-lite": (0, {"minimal": 512, "low": 2048, "medium": 8192, "high": 24576}),
}
_G_RESPONSE_KEYS = ("candidates", "promptFeedback", "usageMetadata", "error")


def _g_version(model_id: str) -> float:
    """The Gemini generation a model id names (2.5, 3, 3.1, ...), 0.0 for none."""
    import re
    m = re.search(r"gemini-(\d+(?:\.\d+)?)", model_id.lower())
    return float(m.group(1)) if m else 0.0


def _g_signature(sig: object) -> str | None:
    """A thoughtSignature fit to send back. Google's are base64; anything else would
    be rejected with a 400 (and cannot have come from Gemini)."""
    import re
    if isinstance(sig, str) and len(sig) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/_-]+={0,2}", sig):
        return sig
    return None


def _g_inline(block: dict[str, Any]) -> dict[str, Any]:
    return {"inlineData": {"mimeType": block.get("mimeType") or "image/png", "data": block.get("data") or ""}}


def _g_user_parts(content: Any, images: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for block in _user_parts(content):
        if block.get("type") == "text" and block.get("text"):
            parts.append({"text": block["text"]})
        elif block.get("type") == "image" and images:
            parts.append(_g_inline(block))
    return parts


def _g_model_parts(m: Mapping[str, Any], model: Model, sentinel: bool) -> list[dict[str, Any]]:
    """An assistant turn as model parts. Signatures go back only to the model that
    made them (transform_messages already dropped other models' thinking and call
    signatures). With ``sentinel``, the first call of a turn from another model
    gets the skip sentinel instead: Gemini 3 insists on a signed first call per step
    (of parallel calls only the first is signed, so the others stay bare)."""
    same = _same_model(m, model)
    parts: list[dict[str, Any]] = []
    first_call = True
    for b in m.get("content") or ():
        kind = b.get("type")
        part: dict[str, Any]
        if kind == "text":
            sig = _g_signature(b.get("textSignature")) if same else None
            part = {"text": b.get("text") or ""}
        elif kind == "thinking" and not b.get("redacted"):
            sig = _g_signature(b.get("thinkingSignature")) if same else None
            part = {"thought": True, "text": b.get("thinking") or ""}
        elif kind == "toolCall":
            sig = _g_signature(b.get("thoughtSignature")) if same else None
            if sig is None and sentinel and first_call and not same:
                sig = _G_SKIP_SIGNATURE
            first_call = False
            args = b.get("arguments")
            part = {"functionCall": {"name": b.get("name") or "", "args": args if isinstance(args, dict) else {}}}
        else:
            continue
        if sig:
            part["thoughtSignature"] = sig
        elif part.get("text") == "":
            continue  # an empty text part without a signature says nothing
        parts.append(part)
    return parts


def _g_worded_calls(m: Mapping[str, Any], worded: dict[str, str]) -> list[dict[str, Any]]:
    """Another model's assistant turn with its tool calls as words (the results
    that answer them follow as words too: their ids are noted in ``worded``)."""
    parts: list[dict[str, Any]] = []
    for b in m.get("content") or ():
        if b.get("type") == "text" and (b.get("text") or "").strip():
            parts.append({"text": b["text"]})
        elif b.get("type") == "toolCall":
            worded[b.get("id") or ""] = b.get("name") or "a tool"
            parts.append({"text": _tool_text(b.get("name"), b.get("arguments"))})
    return parts


def _g_result_parts(m: Mapping[str, Any], images: bool, gen3: bool) -> list[dict[str, Any]]:
    """A tool result as a functionResponse part. Its images go inside it for Gemini 3,
    which takes them there, else after it in the same user turn."""
    blocks = _user_parts(m.get("content"))
    pictures = [_g_inline(b) for b in blocks if b.get("type") == "image"] if images else []
    text = _text_of(blocks) or ("(see attached image)" if pictures else "")
    response: dict[str, Any] = {"name": m.get("toolName") or "",
                                "response": {"error" if m.get("isError") else "output": text}}
    if pictures and gen3:
        response["parts"] = pictures
        return [{"functionResponse": response}]
    return [{"functionResponse": response}] + ([{"text": "Tool result image:"}] + pictures if pictures else [])


def _g_contents(model: Model, ctx: Context, vertex: bool) -> list[dict[str, Any]]:
    """Context messages -> contents: roles user and model, consecutive turns of one
    role merged (tool results join the user turn they belong to). Call ids are not
    sent: Gemini pairs calls and responses by order and name."""
    images = "image" in (model.get("input") or ())
    gen3 = _g_version(model["id"]) >= 3
    out: list[dict[str, Any]] = []
    worded: dict[str, str] = {}  # call id -> name: calls sent as words, and so their results
    messages = transform_messages(ctx.get("messages") or [], model)
    # the current turn starts after the user's last words; Gemini 3 checks its calls' signatures
    current = max((n for n, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    for n, m in enumerate(messages):
        role = m.get("role")
        if role == "user":
            turn, parts = "user", _g_user_parts(m.get("content"), images)
        elif role == "assistant" and vertex and gen3 and n > current and not _same_model(m, model):
            # Vertex's Gemini 3 wants the current turn's calls signed and refuses the skip
            # sentinel: another model's calls (and their results) go as words instead
            turn, parts = "model", _g_worded_calls(m, worded)
        elif role == "assistant":
            turn, parts = "model", _g_model_parts(m, model, gen3 and not vertex)
        elif m.get("toolCallId") in worded:
            said = _text_of(_user_parts(m.get("content"))) or "(no output)"
            turn, parts = "user", [{"text": _tool_text(worded[m["toolCallId"]], result=said)}]
        else:
            turn, parts = "user", _g_result_parts(m, images, gen3)
        if not parts:
            continue
        if out and out[-1]["role"] == turn:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": turn, "parts": parts})
    return out


def _g_thinking(model: Model, o: _Options) -> dict[str, Any] | None:
    """reasoning= -> thinkingConfig: a level for Gemini 3 (Pro takes low and high, 3.1
    Pro medium too), a token budget for 2.5 (clamped to leave half of max_tokens to
    the answer), just the thoughts for other reasoning models; unasked: nothing."""
    level = o.reasoning
    if level is None or not model.get("reasoning"):
        return None
    mid = model["id"].lower()
    version = _g_version(mid)
    effort = _effort(level, mid) if level != "off" else "off"
    shown = level != "off"
    if version >= 3:
        pro = "pro" in mid
        if pro:
            word = {"off": "low", "minimal": "low", "low": "low"}.get(effort) or (
                "medium" if effort == "medium" and version >= 3.1 else "high")
        else:
            word = {"off": "minimal"}.get(effort, effort)
        return {"thinkingLevel": word.upper(), "includeThoughts": shown}
    if 2.5 <= version < 3:
        family = "flash-lite" if "flash-lite" in mid else "flash" if "flash" in mid else "pro"
        off, budgets = _G_BUDGETS[family]
        budget = budgets.get(effort, budgets["high"]) if shown else off
        if o.max_tokens and budget > o.max_tokens // 2:
            budget = max(budgets["minimal"] if shown else off, o.max_tokens // 2)
        return {"thinkingBudget": budget, "includeThoughts": shown}
    return {"includeThoughts": True} if shown else None


def _g_tool_choice(choice: object) -> dict[str, Any]:
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]} if name else {"mode": "AUTO"}
    mode = {"auto": "AUTO", "none": "NONE", "any": "ANY", "required": "ANY"}.get(str(choice))
    return {"mode": mode} if mode else {"mode": "ANY", "allowedFunctionNames": [str(choice)]}


def _g_request(model: Model, ctx: Context, o: _Options, vertex: bool) -> dict[str, Any]:
    """The generateContent body, the same for the Gemini API and Vertex AI but for
    the signature sentinel."""
    body: dict[str, Any] = {"contents": _g_contents(model, ctx, vertex)}
    if ctx.get("systemPrompt"):
        body["systemInstruction"] = {"parts": [{"text": ctx["systemPrompt"]}]}
    tools = ctx.get("tools")
    if tools:  # full JSON Schema (parametersJsonSchema): "parameters" rejects additionalProperties and $ref
        body["tools"] = [{"functionDeclarations": [
            {"name": t.get("name"), "description": t.get("description") or "",
             "parametersJsonSchema": t.get("parameters") or {"type": "object", "properties": {}}}
            for t in tools]}]
        if o.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": _g_tool_choice(o.tool_choice)}
    config: dict[str, Any] = {}
    if o.max_tokens is not None:
        config["maxOutputTokens"] = o.max_tokens
    if o.temperature is not None:
        config["temperature"] = o.temperature
    thinking = _g_thinking(model, o)
    if thinking:
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    return body


def _g_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    base = o.url.rstrip("/")
    if base.endswith("/models"):
        base = base[:-len("/models")]
    mid = model["id"][len("models/"):] if model["id"].startswith("models/") else model["id"]
    url = f"{base}/models/{_quote(mid)}:streamGenerateContent?alt=sse"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    return url, headers, _g_request(model, ctx, o, vertex=False)


class _GeminiSSE(SSEParser):
    """Server-sent events as Google sends them, plus what google-genai also reads: a
    line that cannot be an SSE field because it starts like JSON (a brace, a bracket,
    a quote, blank space) is a line of data. So an error object written mid-stream
    without "data:" (pretty-printed over many lines) reaches the translator instead
    of being dropped as an unknown field."""

    __slots__ = ()

    def _field(self, raw: bytes) -> None:
        if raw[:1] in (b"{", b"}", b"[", b"]", b'"', b" ", b"\t"):
            self._data_line(raw)
        else:
            super()._field(raw)


class _GTranslator:
    """GenerateContentResponse chunks -> builder calls (the first candidate only)."""

    __slots__ = ("b", "finish", "details", "calls", "ids", "rid", "seen")

    def __init__(self, b: _Builder, o: _Options) -> None:
        self.b = b
        self.finish: str | None = None
        self.details = ""
        self.calls = 0
        self.ids: set[str] = set()  # call ids seen: a repeated one is replaced
        self.rid = ""  # the responseId, the stem of the ids of calls that come without one
        self.seen: tuple[object, ...] = ()  # the usage counts last applied

    def event(self, kind: str, data: str) -> bool:
        chunk = _frame_json(kind, data)
        for c in chunk if isinstance(chunk, list) else (chunk,):
            if isinstance(c, dict):
                self.chunk(c)
        return False  # no terminator: the end of the body is the end of the stream

    def chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("error"):
            raise _g_error(chunk["error"])
        if not self.rid and isinstance(chunk.get("responseId"), str):
            self.rid = _sanitize_id(chunk["responseId"], 40)
        usage = chunk.get("usageMetadata")
        if isinstance(usage, dict):
            self.usage(usage)
        candidates = chunk.get("candidates")
        if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
            candidate = candidates[0]
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else ():
                if isinstance(part, dict):
                    self.part(part)
            if candidate.get("finishReason"):
                self.finish = str(candidate["finishReason"])
                self.details = _g_details(candidate)
        feedback = chunk.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            raise _g_blocked(feedback)

    def part(self, part: dict[str, Any]) -> None:
        b = self.b
        sig = part.get("thoughtSignature")
        sig = sig if isinstance(sig, str) and sig else None
        call = part.get("functionCall")
        if isinstance(call, dict):
            self.call(call, sig)
            return
        text = part.get("text")
        if not isinstance(text, str):
            if not (sig and set(part) <= {"thoughtSignature", "thought"}):
                return  # images, executable code and kinds added later: nothing to show
            text = ""
        kind = "thinking" if part.get("thought") is True else "text"
        if text:
            b.thinking(text) if kind == "thinking" else b.text(text)
        elif sig and b.cur_type != kind:
            b.begin(kind)  # a part that only carries a signature: kept, to be sent back
        if sig:
            b.sign(sig, b.cur)

    def call(self, call: dict[str, Any], sig: str | None) -> None:
        """A whole functionCall part: start, one delta (its arguments), end."""
        b = self.b
        name = call.get("name") if isinstance(call.get("name"), str) else ""
        args = call.get("args")
        if args is not None and not isinstance(args, dict):
            raise PiError(f"function call {name!r} with arguments that are not an object: {str(args)[:200]!r}",
                          "protocol")
        self.calls += 1
        key = ("g", self.calls)
        call_id = call.get("id")
        if not (isinstance(call_id, str) and call_id) or call_id in self.ids:
            # absent (the Gemini API sends none) or repeated: one of ours, from the responseId
            # when there is one, so a replay of the same bytes gives the same ids
            call_id = f"call_{self.rid}_{self.calls}" if self.rid else None
        block = b.tool_start(key, call_id if call_id not in self.ids else None, name)
        self.ids.add(block["id"])
        if sig:
            b.tool_update(key, signature=sig)
        b.tool_delta(key, json.dumps(args or {}, ensure_ascii=False))
        b.tool_end(key)

    def usage(self, usage: dict[str, Any]) -> None:
        """A snapshot of the whole turn so far (the last one wins). Cached prompt
        tokens are part of promptTokenCount: they count once, as cacheRead."""
        counts = (usage.get("promptTokenCount"), usage.get("cachedContentTokenCount"),
                  usage.get("candidatesTokenCount"), usage.get("thoughtsTokenCount"))
        if counts == self.seen:
            return  # the same snapshot again: Gemini repeats it on every chunk
        self.seen = counts
        prompt, cached, candidates, thoughts = (_count(c) for c in counts)
        self.b.update_usage(input=max(0, prompt - cached), output=candidates + thoughts, cacheRead=cached)

    def whole(self, obj: object) -> None:
        """A non-streamed generateContent answer, or the JSON array of chunks that
        streamGenerateContent sends without alt=sse."""
        items = obj if isinstance(obj, list) else [obj]
        chunks = [c for c in items if isinstance(c, dict) and any(k in c for k in _G_RESPONSE_KEYS)]
        if not chunks or len(chunks) != len(items):
            raise PiError("the server answered with JSON that is not a Gemini response", "protocol")
        for c in chunks:
            self.chunk(c)

    def end(self, cut: bool) -> _DoneReason:
        if self.finish is None:
            raise PiError("the stream ended before a finishReason (cut off?)", "protocol")
        return _stop_reason(self.finish, self.details)


def _g_details(candidate: dict[str, Any]) -> str:
    """What a candidate says about why it stopped: finishMessage, blocked categories."""
    found = [str(candidate["finishMessage"])] if candidate.get("finishMessage") else []
    ratings = candidate.get("safetyRatings")
    blocked = [str(r.get("category")) for r in ratings if isinstance(r, dict) and r.get("blocked")] \
        if isinstance(ratings, list) else []
    if blocked:
        found.append("blocked: " + ", ".join(blocked))
    return "; ".join(found)


def _g_blocked(feedback: dict[str, Any]) -> PiError:
    """promptFeedback.blockReason: the prompt itself was refused, nothing was generated."""
    details = _g_details({"finishMessage": feedback.get("blockReasonMessage"),
                          "safetyRatings": feedback.get("safetyRatings")})
    return PiError(f"Gemini blocked the prompt ({feedback['blockReason']})" + (f": {details}" if details else ""),
                   "invalid_request")


def _g_error(err: object) -> PiError:
    """An error object inside the stream. An overload or a server fault is worth another
    attempt while nothing was shown (the retry loop checks that)."""
    e = _in_band_error(err)
    if e.status in (429, 500, 503, 504):
        e.no_retry, e.transient = False, True
    return e


# ---- google-vertex --------------------------------------------------------------
# Vertex AI: Gemini models through the Gemini translator above; Claude models through
# the anthropic-messages request builder and translator, on streamRawPredict (the
# version in the body, the model in the URL). The table's base URL is Google's host:
# the location picks the host actually used, and the path to the project's model is
# built here and appended to whatever path a base URL override has (a proxy, a VPC
# endpoint, the tests' loopback server).

_VX_AM_VERSION = "vertex-2023-10-16"
_VX_PROJECT_ENV = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "VERTEX_PROJECT")
_VX_LOCATION_ENV = ("GOOGLE_CLOUD_LOCATION", "VERTEX_LOCATION")
_VX_LOCATION = "us-central1"


def _vx_claude(model: Model) -> bool:
    return str(model["id"]).lower().startswith("claude")


def _vx_place(model: Model, path: str) -> tuple[str | None, str]:
    """(project or None, location): the base URL's own /projects/P and /locations/L
    (as pi_agent_rust writes Vertex base URLs), else the environment, else the
    provider's "project" / "location" in models.json; location defaults to us-central1."""
    import re
    pid = _canonical(model["provider"]) or str(model["provider"]).lower()
    pconf = _provider_config(pid, _read_config("models.json"))
    found = []
    for name, envs in (("project", _VX_PROJECT_ENV), ("location", _VX_LOCATION_ENV)):
        m = re.search(rf"/{name}s/([^/:]+)", path)
        value = m.group(1) if m else next((os.environ[e].strip() for e in envs if os.environ.get(e, "").strip()),
                                          None)
        found.append(value or (str(pconf[name]) if pconf.get(name) else None))
    location = found[1] or _VX_LOCATION
    if not re.fullmatch(r"[a-z0-9-]+", location):
        raise ConfigError(f"{pid}: {location!r} is not a Vertex AI location (GOOGLE_CLOUD_LOCATION), e.g. us-central1 "
                          "or global")
    return found[0], location


def _vx_host(location: str) -> str:
    if location == "global":
        return "aiplatform.googleapis.com"
    if location in ("us", "eu"):  # multi-region endpoints
        return f"aiplatform.{location}.rep.googleapis.com"
    return f"{location}-aiplatform.googleapis.com"


def _vx_url(model: Model, o: _Options, publisher: str, method: str) -> str:
    """{scheme and host}{the base URL's own path}/v1/projects/{project}/locations/
    {location}/publishers/{publisher}/models/{model}:{method}. Google's own hosts
    follow the location; any other host is kept. Without a project an API key goes
    to express mode (no project in the path, the global host)."""
    import re
    scheme, _, rest = o.url.partition("://")
    authority, slash, path = rest.partition("/")
    path = ("/" + path.partition("?")[0]).rstrip("/") if slash else ""
    project, location = _vx_place(model, path)
    m = re.search(r"/(v1|v1beta1)(?=/|$)|/projects/|/publishers/", path)
    version = m.group(1) if m and m.group(1) else "v1"
    prefix = path[:m.start()] if m else path
    mid = _quote(model["id"]).replace("%40", "@")  # "claude-sonnet-4-5@20250929": the @ is Vertex's spelling
    where = f"/publishers/{publisher}/models/{mid}:{method}"
    if project is None:
        if _vx_claude(model) or not (o.credential or "").startswith("AIza"):
            raise ConfigError(f"{model['provider']}: no Google Cloud project: set GOOGLE_CLOUD_PROJECT (or "
                              "\"project\" for the provider in models.json)"
                              + ("" if _vx_claude(model) else ", or use an API key (GOOGLE_CLOUD_API_KEY)"))
        location = "global"
    else:
        where = f"/projects/{_quote(project)}/locations/{location}" + where
    host = authority.rpartition("@")[2].lower()
    if host == "aiplatform.googleapis.com" or host.endswith(("-aiplatform.googleapis.com", ".rep.googleapis.com")):
        authority = _vx_host(location)
    return f"{scheme}://{authority}{prefix}/{version}{where}"


def _vx_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    if _vx_claude(model):
        _, headers, body = _am_build(model, ctx, o)
        body.pop("model", None)  # Vertex names the model in the URL and wants it nowhere else
        headers.pop("anthropic-version", None)
        return (_vx_url(model, o, "anthropic", "streamRawPredict"), headers,
                {"anthropic_version": _VX_AM_VERSION, **body})
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    url = _vx_url(model, o, "google", "streamGenerateContent") + "?alt=sse"
    return url, headers, _g_request(model, ctx, o, vertex=True)


def _vx_translator(b: _Builder, o: _Options) -> _Translator:
    return _AMTranslator(b, o) if _vx_claude(b.model) else _GTranslator(b, o)


# ---- openai-responses ---------------------------------------------------------
# OpenAI's Responses API: OpenAI itself and Sakana here; Azure's v1 surface and the
# ChatGPT (Codex) backend below build on it. Named SSE events whose JSON repeats the
# name in "type". Output items (reasoning, message, function_call) are addressed by
# their id, the output_index where a proxy leaves it out; they may interleave and
# finish in any order, so each item keeps its own block.

_OR_APIS = ("openai-responses", "azure-openai-responses", "openai-codex-responses")


def _or_id(call_id: str) -> str:
    """A tool-call id for the Responses API, "call_id|item_id": both halves
    [A-Za-z0-9_-]{1,64} without a trailing "_" (Codex rejects it), the item id
    starting with "fc". An id without "|" (another family's) is the call_id; its
    item id is derived from it, so it is the same every turn."""
    call, sep, item = call_id.partition("|")
    original = call
    call = _sanitize_id(call, 64).rstrip("_") or "call"
    if call != original:  # cut or changed: a digest keeps two such ids apart
        call = call[:55].rstrip("_") + "_" + _id_hash(original, 8)
    if sep and item:
        item = _sanitize_id(item if item.startswith("fc") else "fc_" + item, 64).rstrip("_")
    else:
        item = "fc_" + _id_hash(call_id, 24)
    return f"{call}|{item}"


def _or_image(block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "input_image", "detail": "auto", "image_url": _data_url(block)}


def _or_user(content: Any, images: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for b in _user_parts(content):
        if b.get("type") == "text" and b.get("text"):
            parts.append({"type": "input_text", "text": b["text"]})
        elif b.get("type") == "image" and images:
            parts.append(_or_image(b))
    return parts


def _or_text_item(block: dict[str, Any], same: bool) -> dict[str, Any]:
    """Assistant text. The model's own keeps its message item id (and phase) from
    textSignature, so it stays paired with the reasoning item before it."""
    sig = block.get("textSignature") if same else None
    meta = _json_or_none(sig)
    item_id, phase = (meta.get("id"), meta.get("phase")) if isinstance(meta, dict) else (sig, None)
    if not isinstance(item_id, str) or not item_id:
        return {"role": "assistant", "content": block["text"]}
    item: dict[str, Any] = {"type": "message", "role": "assistant", "id": item_id, "status": "completed",
                            "content": [{"type": "output_text", "text": block["text"], "annotations": []}]}
    if isinstance(phase, str) and phase:
        item["phase"] = phase
    return item


def _or_assistant(m: Mapping[str, Any], model: Model) -> list[dict[str, Any]]:
    """An assistant turn as input items. Reasoning items go back, verbatim, only to
    the model that made them, and so do the item ids of its function calls, which
    the API pairs with those reasoning items: another Responses model gets the
    calls without one. Calls from other families keep their made-up "fc" id."""
    same = _same_model(m, model)
    item_ids = same or m.get("api") not in _OR_APIS
    items: list[dict[str, Any]] = []
    for b in m.get("content") or ():
        kind = b.get("type")
        if kind == "thinking" and same:
            reasoning = _json_or_none(b.get("thinkingSignature"))
            if isinstance(reasoning, dict) and reasoning.get("type") == "reasoning":
                items.append(reasoning)
        elif kind == "text" and b.get("text"):
            items.append(_or_text_item(b, same))
        elif kind == "toolCall":
            call_id, _, item_id = str(b.get("id") or "").partition("|")
            call = {"type": "function_call", "call_id": call_id, "name": b.get("name") or "",
                    "arguments": json.dumps(b.get("arguments") or {})}
            if item_id and item_ids:
                call["id"] = item_id
            items.append(call)
    return items


def _or_tool_output(m: Mapping[str, Any], images: bool) -> dict[str, Any]:
    blocks = _user_parts(m.get("content"))
    text = _text_of(blocks)
    pictures = [_or_image(b) for b in blocks if b.get("type") == "image"] if images else []
    output: Any = text
    if pictures:  # images go inside the output, after its text
        output = ([{"type": "input_text", "text": text}] if text else []) + pictures
    return {"type": "function_call_output", "call_id": str(m.get("toolCallId") or "").partition("|")[0],
            "output": output}


def _or_input(model: Model, ctx: Context) -> list[dict[str, Any]]:
    images = "image" in (model.get("input") or ())
    items: list[dict[str, Any]] = []
    for m in transform_messages(ctx.get("messages") or [], model, _or_id):
        role = m.get("role")
        if role == "user":
            parts = _or_user(m.get("content"), images)
            if parts:
                items.append({"role": "user", "content": parts})
        elif role == "assistant":
            items.extend(_or_assistant(m, model))
        elif role == "toolResult":
            items.append(_or_tool_output(m, images))
    return items


def _or_tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict):
        fn = choice.get("function")
        return {"type": "function", "name": fn["name"]} if isinstance(fn, dict) and fn.get("name") else choice
    if choice in ("auto", "none", "required"):
        return choice
    return "required" if choice == "any" else {"type": "function", "name": choice}


def _or_body(model: Model, ctx: Context, o: "_Options") -> dict[str, Any]:
    """The request body every Responses surface sends."""
    reasons = bool(model.get("reasoning"))
    body: dict[str, Any] = {"model": model["id"], "input": _or_input(model, ctx), "stream": True, "store": False}
    if ctx.get("systemPrompt"):
        body["instructions"] = ctx["systemPrompt"]
    if o.max_tokens is not None:
        body["max_output_tokens"] = o.max_tokens
    if o.temperature is not None and not reasons:  # reasoning models reject any but their own
        body["temperature"] = o.temperature
    tools = ctx.get("tools")
    if tools:
        # strict false: else the API holds every schema to its strict subset and rejects the rest
        body["tools"] = [{"type": "function", "name": t.get("name"), "description": t.get("description") or "",
                          "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                          "strict": False} for t in tools]
        if o.tool_choice is not None:
            body["tool_choice"] = _or_tool_choice(o.tool_choice)
    if reasons:
        # nothing is stored (store: false), so reasoning goes back next turn only as this
        # encrypted copy; the API wants it back before the function calls it led to
        body["include"] = ["reasoning.encrypted_content"]
        if o.reasoning and o.reasoning != "off":
            body["reasoning"] = {"effort": _effort(o.reasoning, model["id"]), "summary": "auto"}
    if o.session_id and o.cache_retention != "none":
        body["prompt_cache_key"] = o.session_id
    return body


def _or_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    body = _or_body(model, ctx, o)
    if o.cache_retention == "long" and "api.openai.com" in o.url:
        body["prompt_cache_retention"] = "24h"
    return _join_url(o.url, "responses"), {"Content-Type": "application/json", "Accept": "text/event-stream"}, body


def _or_relax(body: dict[str, Any], error: PiError) -> "dict[str, Any] | None":
    """A 400/422 that names an optional field we add (the encrypted reasoning; the
    reasoning summary, which an unverified organisation may not get): the same body
    without it."""
    if error.status not in (400, 422):
        return None
    text = str(error).lower()
    if "include" in body and ("include" in text or "encrypted" in text):
        return {k: v for k, v in body.items() if k != "include"}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and "summary" in reasoning and "summar" in text:
        return dict(body, reasoning={k: v for k, v in reasoning.items() if k != "summary"})
    return None


def _or_text_signature(item: dict[str, Any]) -> "str | None":
    """A message item's id for textSignature; with its phase as pi stores it."""
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        return None
    phase = item.get("phase")
    return json.dumps({"v": 1, "id": item_id, "phase": phase}) if isinstance(phase, str) and phase else item_id


def _or_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _or_texts(parts: Any) -> list[str]:
    return [p["text"] for p in _or_list(parts) if isinstance(p, dict) and isinstance(p.get("text"), str)
            and p["text"] and p.get("type") != "refusal"]


def _or_item_text(item: dict[str, Any], raw: bool) -> str:
    """The whole text of a finished item: a message's output_text parts, a
    reasoning item's summary (a blank line between parts), or its reasoning text
    itself (raw: what some servers stream instead of a summary)."""
    if item.get("type") == "message":
        return "".join(_or_texts(item.get("content")))
    summary = "" if raw else "\n\n".join(_or_texts(item.get("summary")))
    return summary or "".join(_or_texts(item.get("content")))


class _ORItem:
    """What the translator knows of one output item."""

    __slots__ = ("kind", "block", "length", "part", "signature", "args", "state")

    def __init__(self, kind: str) -> None:
        self.kind = kind            # message | reasoning | function_call | another type (ignored)
        self.block = -1             # content index of its text or thinking block
        self.length = 0             # characters of text or thinking streamed
        self.part: Any = 0          # summary_index being streamed; None: raw reasoning text
        self.signature: str | None = None  # a message's textSignature
        self.args: list[str] = []   # argument pieces streamed
        self.state = 0              # 0 new, 1 going (a call started), 2 done


class _ORTranslator:
    """openai-responses events -> builder calls. Text and thinking deltas go to
    their item's block (reopened as a new block should another item's come in
    between), function calls are builder tool calls keyed by item id."""

    __slots__ = ("b", "items", "by_index", "stop", "refusal", "ended")

    def __init__(self, b: _Builder, o: "_Options") -> None:
        self.b = b
        self.items: dict[str, _ORItem] = {}
        self.by_index: dict[Any, str] = {}  # output_index -> item id
        self.stop = ""      # incomplete_details.reason of an incomplete response
        self.refusal = ""   # refusal text: never an answer, the message of the error at the end
        self.ended = False

    def event(self, kind: str, data: str) -> bool:
        if data[:6] == "[DONE]":  # not this API's, yet some proxies add it
            return self.ended
        ev = _frame_json(kind, data)
        etype = ev.get("type") or kind if isinstance(ev, dict) else None
        handler = _OR_EVENTS.get(etype) if isinstance(etype, str) else None
        return bool(handler(self, ev)) if handler is not None else False  # the rest are ignored

    def item(self, ev: dict[str, Any], kind: str) -> "tuple[str, _ORItem]":
        """The item a delta is about (made here when its output_item.added is late)."""
        iid = ev.get("item_id")
        if not isinstance(iid, str) or not iid:
            index = ev.get("output_index")
            iid = self.by_index.get(index) if isinstance(index, int) else None
            iid = iid or f"#{index}"
        it = self.items.get(iid)
        if it is None:
            it = self.items[iid] = _ORItem(kind)
        return iid, it

    def grow(self, kind: str, it: _ORItem, delta: str) -> None:
        b = self.b
        if it.block != b.cur or b.cur_type != kind:  # its block is not the open one: open one
            it.block = b.begin(kind)
            if it.signature and not it.length:  # (a message item's id goes back once, on its first block)
                b.sign(it.signature, it.block)
        if kind == "text":
            b.text(delta)
        else:
            b.thinking(delta)
        it.length += len(delta)

    def text_delta(self, ev: dict[str, Any]) -> None:
        delta = ev.get("delta")
        if delta and isinstance(delta, str):
            self.grow("text", self.item(ev, "message")[1], delta)

    def summary_delta(self, ev: dict[str, Any]) -> None:
        delta = ev.get("delta")
        if not delta or not isinstance(delta, str):
            return
        it = self.item(ev, "reasoning")[1]
        part = ev.get("summary_index", 0)
        if part != it.part:  # the next summary part, a blank line after the one before
            it.part = part
            if it.length:
                delta = "\n\n" + delta
        self.grow("thinking", it, delta)

    def reasoning_delta(self, ev: dict[str, Any]) -> None:
        delta = ev.get("delta")
        if delta and isinstance(delta, str):
            it = self.item(ev, "reasoning")[1]
            it.part = None
            self.grow("thinking", it, delta)

    def refusal_delta(self, ev: dict[str, Any]) -> None:
        delta = ev.get("delta")
        if delta and isinstance(delta, str):
            self.refusal += delta

    def call(self, iid: str, it: _ORItem, item: dict[str, Any]) -> None:
        """Start, or name, the call of a function_call item: "call_id|item_id"."""
        call_id, item_id, name = item.get("call_id"), item.get("id"), item.get("name")
        call_id = call_id if isinstance(call_id, str) and call_id else None
        item_id = item_id if isinstance(item_id, str) and item_id else None
        full = f"{call_id or item_id}|{item_id}" if item_id else call_id
        name = name if isinstance(name, str) and name else None
        if it.state == 0:
            it.state = 1
            self.b.tool_start(iid, full, name)
        elif it.state == 1:
            self.b.tool_update(iid, call_id=full, name=name)

    def args_delta(self, ev: dict[str, Any]) -> None:
        delta = ev.get("delta")
        if not delta or not isinstance(delta, str):
            return
        iid, it = self.item(ev, "function_call")
        if it.state == 0:
            self.call(iid, it, {})
        if it.state == 1:  # (pieces after the call's output_item.done are not its arguments)
            self.b.tool_delta(iid, delta)
            it.args.append(delta)

    def args_done(self, ev: dict[str, Any]) -> None:
        iid, it = self.item(ev, "function_call")
        if it.state == 0:
            self.call(iid, it, {"name": ev.get("name")})
        self.final_args(iid, it, ev.get("arguments"))

    def final_args(self, iid: str, it: _ORItem, final: Any) -> None:
        """Arguments given whole (a .done event, the item): final unless empty, as
        some servers stream none. What was streamed must be their beginning."""
        if not isinstance(final, str) or not final.strip() or it.state != 1:
            return
        raw = "".join(it.args)
        if final.startswith(raw):
            if len(final) > len(raw):
                self.b.tool_delta(iid, final[len(raw):])
                it.args = [final]
            return
        try:
            same = json.loads(final) == json.loads(raw)
        except (ValueError, RecursionError):
            same = False
        if not same:
            raise PiError(f"the arguments of tool call {iid} streamed as {raw[:200]!r} but ended as "
                          f"{final[:200]!r}", "protocol")

    def added(self, ev: dict[str, Any]) -> None:
        item = ev.get("item")
        if isinstance(item, dict):
            self.begin_item(ev.get("output_index"), item)

    def begin_item(self, index: Any, item: dict[str, Any]) -> "tuple[str, _ORItem]":
        given = item.get("id")
        iid = given if isinstance(given, str) and given else f"#{index}"
        if isinstance(index, int):
            self.by_index[index] = iid
        kind = str(item.get("type") or "")
        it = self.items.get(iid)
        if it is None:
            it = self.items[iid] = _ORItem(kind)
        it.kind = kind
        if kind == "function_call":
            self.call(iid, it, item)
            self.final_args(iid, it, item.get("arguments"))  # a call sent whole
        elif kind == "message":
            it.signature = _or_text_signature(item)
            if it.signature and it.block >= 0:
                self.b.sign(it.signature, it.block)
        return iid, it

    def done_item(self, ev: dict[str, Any]) -> None:
        item = ev.get("item")
        if isinstance(item, dict):
            self.finish_item(ev.get("output_index"), item)

    def finish_item(self, index: Any, item: dict[str, Any]) -> None:
        """An item's last word: the text that was not streamed, the final
        arguments, the encrypted reasoning; its block or call ends."""
        iid, it = self.begin_item(index, item)
        if it.kind == "function_call":
            if it.state == 1:
                it.state = 2
                self.b.tool_end(iid)
            return
        if it.kind not in ("message", "reasoning") or it.state == 2:
            return
        it.state = 2
        text = _or_item_text(item, it.part is None)
        field = "text" if it.kind == "message" else "thinking"
        streamed = self.b.content[it.block].get(field, "") if 0 <= it.block < len(self.b.content) else ""
        if len(text) > it.length and (not it.length or text.startswith(streamed[-it.length:])):
            self.grow(field, it, text[it.length:])  # not streamed, or not all of it: the rest now
        if it.kind == "message" and not self.refusal:
            self.refusal = "".join(str(p.get("refusal") or "") for p in _or_list(item.get("content"))
                                   if isinstance(p, dict) and p.get("type") == "refusal")
        if it.kind == "reasoning" and item.get("encrypted_content"):
            self.sign_reasoning(it, item)
        if it.block >= 0 and it.block == self.b.cur:
            self.b.close_current()

    def sign_reasoning(self, it: _ORItem, item: dict[str, Any]) -> None:
        """The reasoning item, its encrypted content included, is the thinking's
        signature (as pi keeps it). Every event that carries encrypted_content
        replaces it: the final one holds what the API wants back."""
        if it.block < 0:  # no summary: an empty thinking block carries it
            it.block = self.b.begin("thinking")
            self.b.close_current()
        self.b.sign(json.dumps(item, separators=(",", ":")), it.block)

    def terminal(self, ev: dict[str, Any]) -> bool:
        resp = ev.get("response")
        status = {"response.failed": "failed", "response.incomplete": "incomplete"}.get(str(ev.get("type")))
        self.finish(resp if isinstance(resp, dict) else {}, status)
        return True

    def finish(self, resp: dict[str, Any], status: "str | None") -> None:
        """The final response: usage, the last word on every item, the status."""
        self.ended = True
        self.usage(resp.get("usage"))
        for n, item in enumerate(_or_list(resp.get("output"))):
            if not isinstance(item, dict):
                continue
            seen = self.items.get(str(item.get("id")))
            if seen is None or seen.state != 2:  # not (all) in the stream: taken from here
                self.finish_item(n, item)
            elif seen.kind == "reasoning" and item.get("encrypted_content"):
                self.sign_reasoning(seen, item)
        status = resp.get("status") or status or "completed"
        if status == "failed":
            raise _in_band_error(resp.get("error") or "the response failed without saying why")
        if status == "cancelled":
            raise PiError("the response was cancelled", "server")
        if status == "incomplete":
            details = resp.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            self.stop = reason if isinstance(reason, str) and reason else "max_output_tokens"

    def usage(self, usage: Any) -> None:
        """Input without the cached tokens (those are cacheRead); reasoning is inside output."""
        if not isinstance(usage, dict):
            return
        details = usage.get("input_tokens_details")
        details = details if isinstance(details, dict) else {}
        cached, written = _count(details.get("cached_tokens")), _count(details.get("cache_write_tokens"))
        self.b.set_usage(max(0, _count(usage.get("input_tokens")) - cached - written),
                         _count(usage.get("output_tokens")), cached, written)

    def error(self, ev: dict[str, Any]) -> bool:
        err = ev.get("error")
        raise _in_band_error(err if isinstance(err, dict) else ev)

    def whole(self, obj: Any) -> None:
        """A complete (non-streamed) response object."""
        if not isinstance(obj, dict) or not isinstance(obj.get("output"), list):
            raise PiError("the server answered with JSON that is not a Responses object", "protocol")
        self.finish(obj, None)

    def end(self, cut: bool) -> _DoneReason:
        if not self.ended:
            raise PiError("the stream ended before response.completed (cut off?)", "protocol")
        if self.refusal:
            return _stop_reason("refusal", self.refusal)
        return _stop_reason(self.stop or "stop")


# event type -> its handler; any other type (response.created, web search, ...) is ignored
_OR_EVENTS: "dict[str, Callable[[_ORTranslator, dict[str, Any]], Any]]" = {
    "response.output_text.delta": _ORTranslator.text_delta,
    "response.reasoning_summary_text.delta": _ORTranslator.summary_delta,
    "response.reasoning_text.delta": _ORTranslator.reasoning_delta,
    "response.refusal.delta": _ORTranslator.refusal_delta,
    "response.function_call_arguments.delta": _ORTranslator.args_delta,
    "response.function_call_arguments.done": _ORTranslator.args_done,
    "response.output_item.added": _ORTranslator.added,
    "response.output_item.done": _ORTranslator.done_item,
    "response.completed": _ORTranslator.terminal,
    "response.done": _ORTranslator.terminal,  # the ChatGPT backend's name for it
    "response.incomplete": _ORTranslator.terminal,
    "response.failed": _ORTranslator.terminal,
    "error": _ORTranslator.error,
}


# ---- azure-openai -------------------------------------------------------------
# Azure OpenAI: a deployment's chat completions (the completions translator, which
# passes over Azure's filter chunks) and the v1 Responses API (the Responses
# translator), chosen by the model's api. The endpoint is the base URL up to
# "/openai": the table's template filled from AZURE_OPENAI_ENDPOINT or the resource
# name, or a base_url / models.json baseUrl.

_AZ_API_VERSION = "2025-04-01-preview"  # also the table's default (tools/gen_providers_table.py)
_AZ_VERSION_ENV = ("AZURE_OPENAI_API_VERSION", "OPENAI_API_VERSION")


def _az_endpoint(url: str) -> str:
    """scheme://host[/prefix] of an Azure base URL: what comes before /openai (a
    gateway may put a prefix there), without the query."""
    scheme, _, rest = url.split("?", 1)[0].rstrip("/").partition("://")
    parts = rest.split("/")
    if "openai" in parts[1:]:
        parts = parts[:parts.index("openai", 1)]
    return f"{scheme}://{'/'.join(parts)}"


def _az_version(url: str) -> str:
    """The api-version: the base URL's (the template's, from AZURE_OPENAI_API_VERSION
    or the default), else the environment's, else the default."""
    from urllib.parse import parse_qs, urlsplit
    found = parse_qs(urlsplit(url).query).get("api-version")
    if found and found[0].strip():
        return found[0].strip()
    for name in _AZ_VERSION_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return _AZ_API_VERSION


def _az_deployment(model: Model) -> str:
    """The deployment serving the model: its "deployment" (models.json), else its
    entry in AZURE_OPENAI_DEPLOYMENT_NAME_MAP ("model=deployment,...", as pi reads
    it), else the model id."""
    name = model.get("deployment")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{model['provider']}: the deployment of {model['id']} (models.json) must be a "
                              f"non-empty string, not {name!r}")
        return name.strip()
    for pair in os.environ.get("AZURE_OPENAI_DEPLOYMENT_NAME_MAP", "").split(","):
        if not pair.strip():
            continue
        mid, sep, deployment = (s.strip() for s in pair.partition("="))
        if not (sep and mid and deployment):
            raise ConfigError(f"AZURE_OPENAI_DEPLOYMENT_NAME_MAP: {pair.strip()!r} is not model=deployment "
                              f"(entries are separated by commas)")
        if mid == model["id"]:
            return deployment
    return str(model["id"])


def _az_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    _, headers, body = _oc_build(model, ctx, o)
    deployment = _az_deployment(model)
    body["model"] = deployment  # Azure goes by the URL's; gateways in front of it may not
    if model.get("reasoning"):  # o-series and gpt-5 deployments reject any temperature
        body.pop("temperature", None)
    url = (f"{_az_endpoint(o.url)}/openai/deployments/{_quote(deployment)}/chat/completions"
           f"?api-version={_quote(_az_version(o.url))}")
    return url, headers, body


def _az_responses_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    body = _or_body(model, ctx, o)
    body["model"] = _az_deployment(model)  # the v1 API takes the deployment as the model
    return (_az_endpoint(o.url) + "/openai/v1/responses",
            {"Content-Type": "application/json", "Accept": "text/event-stream"}, body)


def _az_token(credential: str) -> "str | None":
    """The Entra ID access token in a credential: a JWT, or the JSON that
    `az account get-access-token` prints without -o tsv. None: an API key."""
    if credential.startswith("{"):
        obj = _json_or_none(credential)
        token = obj.get("accessToken") if isinstance(obj, dict) else None
        return token if isinstance(token, str) and token else None
    return credential if credential.startswith("eyJ") and credential.count(".") == 2 else None


def _az_auth(o: "_Options", method: str, url: str, headers: dict[str, str], data: bytes, watch: Any) -> None:
    """Auth step of Azure: an Entra ID token (AZURE_OPENAI_AD_TOKEN, an apiKey
    "!az account get-access-token ...") goes as a bearer token, a key as api-key.
    An auth header set by headers= or models.json stays as it is."""
    key = o.credential
    if not key or any(name.lower() in ("api-key", "authorization") for name in headers):
        return
    token = _az_token(key)
    if token:
        o.secrets.append(token)
        headers["Authorization"] = "Bearer " + token
    else:
        headers["api-key"] = key


# ---- openai-codex ---------------------------------------------------------------
# ChatGPT subscriptions (Codex): the Responses API of the ChatGPT backend, with the
# OAuth token pi keeps in auth.json under "openai-codex" (refreshed when expired by
# the credentials' auth step, which adds the account header through _OAUTH_TOKEN_HEADERS).

def _cx_account(token: str) -> "str | None":
    """The ChatGPT account id that the access token (a JWT) carries."""
    import base64
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # bad base64 (binascii.Error), bad JSON or bad UTF-8
        return None
    auth = claims.get("https://api.openai.com/auth") if isinstance(claims, dict) else None
    account = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return account if isinstance(account, str) and account else None


def _cx_headers(token: str, headers: dict[str, str]) -> None:
    """The account header of a refreshed token."""
    account = _cx_account(token)
    if account is None:
        raise PiError("the refreshed openai-codex token carries no ChatGPT account id; log in again with pi",
                      "auth")
    headers["chatgpt-account-id"] = account


def _cx_url(base: str) -> str:
    base = base.rstrip("/")
    if base.endswith("/responses"):
        return base
    if base.endswith("/codex"):
        return base + "/responses"
    return base + ("/codex/responses" if base.endswith("/backend-api") else "/backend-api/codex/responses")


def _cx_effort(level: str, model_id: str) -> str:
    """The efforts each Codex model takes: codex-mini medium or high; from gpt-5.2
    on, low is the least."""
    effort = _effort(level, model_id)
    if "codex-mini" in model_id:
        return "high" if effort in ("high", "xhigh") else "medium"
    if effort == "minimal" and model_id.startswith(("gpt-5.2", "gpt-5.3", "gpt-5.4", "gpt-5.5")):
        return "low"
    return effort


def _cx_build(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
               "OpenAI-Beta": "responses=experimental", "originator": "pi"}
    if o.credential is not None:
        account = _cx_account(o.credential)
        if account is None:
            raise ConfigError(f"{model['provider']}: the access token carries no ChatGPT account id; log in to "
                              f"OpenAI Codex again with pi (/login)")
        headers["chatgpt-account-id"] = account
    elif o.auth_step is None:  # neither a token nor one to refresh
        raise ConfigError(f"{model['provider']}: no ChatGPT login (or one expired without a refresh token): log "
                          f"in to OpenAI Codex with pi (/login), which "
                          f"writes an \"openai-codex\" entry to auth.json in the agent directory "
                          f"($PI_CODING_AGENT_DIR or ~/.pi/agent), or pass its access token as api_key= (--api-key)")
    if o.session_id:
        headers["session_id"] = o.session_id
    body = _or_body(model, ctx, o)
    body.pop("max_output_tokens", None)  # the backend rejects it; the plan decides
    body.pop("temperature", None)
    body.setdefault("tool_choice", "auto")
    body["parallel_tool_calls"] = True
    body["text"] = {"verbosity": "medium"}
    body["include"] = ["reasoning.encrypted_content"]
    if o.reasoning and o.reasoning != "off":
        body["reasoning"] = {"effort": _cx_effort(o.reasoning, model["id"]), "summary": "auto"}
    return _cx_url(o.url), headers, body


# ---- faux (offline) -------------------------------------------------------------

def _faux_script(model: Model, ctx: Context, o: "_Options") -> dict[str, Any]:
    script = o.extra.get("faux", model.get("faux"))
    if isinstance(script, list):  # one reply per assistant turn so far
        turn = sum(1 for m in ctx.get("messages") or () if m.get("role") == "assistant")
        script = script[min(turn, len(script) - 1)] if script else None
    if isinstance(script, str):
        script = {"text": script}
    if not script:
        last = ""
        for m in reversed(ctx.get("messages") or []):
            if m.get("role") == "user":
                c = m.get("content")
                last = c if isinstance(c, str) else _text_of(_user_parts(c))
                break
        script = {"text": f"You said: {last}" if last else "Hello from pi_min's offline faux provider."}
    return script


def _faux_sse(model: Model, ctx: Context, o: "_Options", script: dict[str, Any]) -> list[bytes]:
    """Canned OpenAI chat-completions SSE bytes for a scripted reply."""
    size = int(script.get("chunkSize") or 8)
    env = {"id": "chatcmpl-faux", "object": "chat.completion.chunk", "created": int(time.time()),
           "model": model["id"]}
    frames = []

    def frame(choice_delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> None:
        obj = dict(env, choices=[{"index": 0, "delta": choice_delta or {}, "finish_reason": finish}], **extra)
        frames.append(b"data: " + json.dumps(obj).encode() + b"\n\n")

    frame({"role": "assistant", "content": ""})
    for field, key in (("thinking", "reasoning_content"), ("text", "content")):
        value = script.get(field) or ""
        for i in range(0, len(value), size):
            frame({key: value[i:i + size]})
    calls = script.get("toolCalls") or []
    for n, call in enumerate(calls):
        args = call.get("arguments", {})
        raw = args if isinstance(args, str) else json.dumps(args)
        frame({"tool_calls": [{"index": n, "id": call.get("id") or f"call_faux_{n}", "type": "function",
                               "function": {"name": call.get("name", ""), "arguments": ""}}]})
        for i in range(0, len(raw), size):
            frame({"tool_calls": [{"index": n, "function": {"arguments": raw[i:i + size]}}]})
    if script.get("error"):
        err: dict[str, Any] = {"message": str(script["error"]), "type": "server_error"}
        if script.get("errorStatus"):
            err["code"] = int(script["errorStatus"])
        frames.append(b"data: " + json.dumps({"error": err}).encode() + b"\n\n")
        return frames
    frame(finish=script.get("finishReason") or ("tool_calls" if calls else "stop"))
    prompt = len(json.dumps(ctx, default=str)) // 4  # a rough token count
    out = (len(script.get("text") or "") + len(script.get("thinking") or "")) // 4 + 1
    frames.append(b"data: " + json.dumps(dict(env, choices=[], usage={
        "prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out})).encode() + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return frames


class _FauxResponse:
    """Stands in for _Response: the bytes come from memory, not a socket."""

    headers = {"content-type": "text/event-stream"}
    status = 200
    reason = "OK"

    def __init__(self, frames: list[bytes], delay: float, signal: _Signal | None) -> None:
        self.frames, self.delay, self.signal = frames, delay, signal

    def iter_body(self) -> Iterator[bytes]:
        for piece in self.frames:
            if self.delay:
                if self.signal is not None:
                    if self.signal.wait(self.delay):
                        raise PiError("Request was aborted", "aborted")
                else:
                    time.sleep(self.delay)
            yield piece

    def read_all(self, limit: int = MAX_FRAME) -> bytes:
        return b"".join(self.frames)

    def release(self) -> None:
        pass

    finish = close = release


def _faux_build(model: Model, ctx: Context, o: "_Options") -> _RequestParts:
    _faux_check(_faux_script(model, ctx, o))  # a bad script is the user's to fix: a ConfigError here
    return "faux://local", {}, {"model": model["id"], "messages": ctx.get("messages") or []}


def _faux_check(script: Any) -> None:
    """A scripted reply's fields have the types the offline provider uses."""
    import math
    if not isinstance(script, dict):
        raise ConfigError("faux: a reply must be a dict or a text")
    for name in ("text", "thinking", "error", "finishReason"):
        if script.get(name) is not None and not isinstance(script[name], str):
            raise ConfigError(f"faux: {name} must be a text, not {script[name]!r}")
    size, delay, status = script.get("chunkSize"), script.get("delay"), script.get("errorStatus")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"faux: chunkSize must be a positive integer, not {size!r}")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))
                              or not math.isfinite(delay) or delay < 0):
        raise ConfigError(f"faux: delay must be a number of seconds >= 0, not {delay!r}")
    if status is not None and (isinstance(status, bool) or not isinstance(status, int) or not 100 <= status < 600):
        raise ConfigError(f"faux: errorStatus must be an HTTP status (an integer), not {status!r}")
    calls = script.get("toolCalls")
    if calls is not None and not (isinstance(calls, list) and all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls)):
        raise ConfigError("faux: toolCalls must be a list of {name, arguments}")


def _faux_open(model: Model, ctx: Context, o: "_Options") -> _FauxResponse:
    script = _faux_script(model, ctx, o)
    if script.get("errorStatus") and not script.get("error"):
        raise PiError(f"faux: scripted HTTP {script['errorStatus']}", _classify(int(script["errorStatus"])),
                      int(script["errorStatus"]))
    delay = float(script.get("delay", 0.0))
    return _FauxResponse(_faux_sse(model, ctx, o, script), delay, o.signal)


# ==== registry of families =====================================================

# api name -> its _Family (see the API families section for what a row holds)
_FAMILIES = {
    "openai-completions": _Family(_oc_build, _OCTranslator, relax=_oc_relax),
    "anthropic-messages": _Family(_am_build, _AMTranslator),
    "bedrock-converse-stream": _Family(_br_build, _BRTranslator, decoder=_EventStream),
    "cohere-chat": _Family(_co_build, _COTranslator),
    "gitlab-chat": _Family(_gl_build, _GLTranslator, decoder=None),
    "google-generative-ai": _Family(_g_build, _GTranslator, decoder=_GeminiSSE),
    "google-vertex": _Family(_vx_build, _vx_translator, decoder=_GeminiSSE),
    "openai-responses": _Family(_or_build, _ORTranslator, relax=_or_relax),
    "azure-openai": _Family(_az_build, _OCTranslator, relax=_oc_relax),
    "azure-openai-responses": _Family(_az_responses_build, _ORTranslator, relax=_or_relax),
    "openai-codex-responses": _Family(_cx_build, _ORTranslator, relax=_or_relax),
    "faux": _Family(_faux_build, _OCTranslator, open=_faux_open),
}


# ==== providers, credentials, config ===========================================

_TABLE: _Table | None = None
_BY_HOST: "dict[str, _Row] | None" = None
# Auth styles: how a provider's credential reaches the request. A header style is
# one header made once per stream; a step style runs before every attempt, on the
# final bytes (SigV4 signs body and time; token exchanges and OAuth refreshes use
# _cached_token). A family that needs a new style adds its step to _AUTH_STEPS.
# "none" is a keyless server (a key configured anyway goes as a bearer token);
# "off" sends no credential at all (models.json "authHeader": false).
_AUTH_HEADERS = {"bearer": ("Authorization", "Bearer "), "x-api-key": ("x-api-key", ""),
                 "api-key": ("api-key", ""), "x-goog-api-key": ("x-goog-api-key", ""),
                 "oauth": ("Authorization", "Bearer "),  # a subscription's access token (auth.json)
                 "none": ("Authorization", "Bearer "), "off": None}
_AUTH_STEPS: dict[str, _AuthStep] = {"azure": _az_auth}  # style -> step(o, method, url, headers, data, watch)
# A style with a credential chain of its own (SigV4, SAP's service key, Google Cloud) has a
# resolver in _AUTH_RESOLVERS (after the SAP section): resolve(pid, model, row, models.json
# entry, o) sets the URL, headers and step itself, in stream(), instead of the key lookup.
_MODEL_FIELDS = ("id", "name", "api", "provider", "baseUrl", "reasoning", "input", "cost",
                 "contextWindow", "maxTokens", "headers", "compat", "faux", "deployment")


def _table() -> _Table:
    """This module's own providers_table, loaded on first use: the package's
    ``.providers_table`` when pi_min is vendored into a package, else the file
    next to this one. A top-level ``providers_table`` that belongs to someone
    else is never used, and ours is never installed under that name."""
    global _TABLE
    if _TABLE is None:
        import importlib
        mod: Any = None  # the providers_table module
        if __package__:  # e.g. myapp/_vendor/pi_min.py -> myapp._vendor.providers_table
            try:
                mod = importlib.import_module(".providers_table", __package__)
            except ImportError:
                pass
        else:
            path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "providers_table.py")
            if os.path.isfile(path):
                import importlib.util
                spec = importlib.util.spec_from_file_location("providers_table", path)
                if spec is not None and spec.loader is not None:
                    mod = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(mod)  # not put in sys.modules: the name may be someone else's
            else:  # not a plain file (a zipapp): the top-level module shipped beside us
                try:
                    mod = importlib.import_module("providers_table")
                except ImportError:
                    pass
        if mod is None:
            raise ConfigError("providers_table.py is missing: keep it next to pi_min.py")
        _TABLE = mod
    return _TABLE


_MODELS: dict[str, dict[str, dict[str, Any]]] = {}


def _known_models(pid: str) -> dict[str, dict[str, Any]]:
    """The table's models of one provider (parsed from its JSON lines on first use)."""
    models = _MODELS.get(pid)
    if models is None:
        models = {}
        for line in (getattr(_table(), "MODELS", {}).get(pid) or "").splitlines():
            if line.strip():
                entry = json.loads(line)
                models[entry.pop("id")] = entry
        _MODELS[pid] = models
    return models


def _rows_by_host() -> dict[str, _Row]:
    global _BY_HOST
    if _BY_HOST is None:
        _BY_HOST = {}
        for row in _table().PROVIDERS.values():
            url = row.get("baseUrl") or ""
            if "{" not in url and "://" in url:
                _BY_HOST.setdefault(_host_of(url), row)
    return _BY_HOST


def _agent_dir() -> str:
    return os.path.expanduser(os.environ.get("PI_CODING_AGENT_DIR") or os.path.join("~", ".pi", "agent"))


def _read_config(name: str) -> dict[str, Any]:
    path = os.path.join(_agent_dir(), name)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8-sig") or "{}")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).split(":")[0]
        raise ConfigError(f"cannot read {path}: {reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _canonical(name: str) -> str | None:
    """Canonical table id for a provider name or alias, or None."""
    key = name.strip().lower()
    t = _table()
    if key in t.PROVIDERS:
        return key
    return t.ALIASES.get(key)


def _provider_config(pid: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The models.json entry for a provider (matched through its aliases)."""
    providers = cfg.get("providers") or {}
    if not isinstance(providers, dict):
        raise ConfigError("models.json: 'providers' must be an object")
    merged: dict[str, Any] = {}
    for key, value in providers.items():
        if isinstance(value, dict) and (key.lower() == pid or _canonical(key) == pid):
            merged.update(value)
    return merged


def _resolve_provider(name: str, cfg: dict[str, Any]) -> tuple[str, _Row | None, dict[str, Any]]:
    """-> (canonical id, table row or None, models.json entry)."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("no provider given")
    pid = _canonical(name)
    if pid is None:
        key = name.strip().lower()
        custom = {k.lower() for k in (cfg.get("providers") or {})}
        if key in custom:
            pid = key
        else:
            import difflib
            t = _table()
            names = sorted(set(t.PROVIDERS) | set(t.ALIASES) | custom)
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            close += [n for n in names if key and (n.startswith(key) or key in n) and n not in close][:3]
            hint = f" Did you mean: {', '.join(close[:3])}?" if close else ""
            raise ConfigError(f"unknown provider {name!r}.{hint} (`pi-min --list-providers` lists them all)")
    return pid, _table().PROVIDERS.get(pid), _provider_config(pid, cfg)


def _merge(model: dict[str, Any], source: Mapping[str, Any]) -> None:
    for k in _MODEL_FIELDS:
        if k in source and source[k] is not None and k not in ("id", "provider"):
            v = source[k]
            if k in ("headers", "compat", "cost") and not isinstance(v, dict):
                raise ConfigError(f"{model.get('provider')}/{model.get('id')}: {k} must be an object, not {v!r}")
            if k == "cost" and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
                raise ConfigError(f"{model.get('provider')}/{model.get('id')}: cost values must be numbers "
                                  "($ per million tokens)")
            if k in ("headers", "compat", "cost"):
                model[k] = {**(model.get(k) or {}), **v}
            elif isinstance(v, (list, dict)):
                model[k] = json.loads(json.dumps(v))  # callers may mutate what we return
            else:
                model[k] = v


def get_model(provider: str, model_id: str | None = None, **overrides: Any) -> Model:
    """A Model dict for ``provider`` (any alias, any case) and ``model_id``
    (default: the first model models.json lists for the provider, else the
    table's default model; "provider/model-id" works too). Filled from the provider table,
    then ``models.json``, then ``overrides`` (baseUrl=, headers=, compat=, ...).
    Unknown model ids are allowed: they get the provider's limits and neutral
    capabilities (reasoning false, text input, zero cost) unless models.json or
    ``overrides`` say otherwise. Unknown providers raise ConfigError."""
    for k in overrides:
        if k not in _MODEL_FIELDS or k in ("id", "provider"):
            raise ConfigError(f"get_model: unknown field {k!r} (fields: {', '.join(_MODEL_FIELDS[2:])})")
    if model_id is None and isinstance(provider, str) and "/" in provider:
        provider, _, model_id = provider.partition("/")
    cfg = _read_config("models.json")
    pid, row, pconf = _resolve_provider(provider, cfg)
    listed = {m["id"]: m for m in pconf.get("models") or () if isinstance(m, dict) and m.get("id")}
    if row is None and not (pconf.get("api") and pconf.get("baseUrl")):
        raise ConfigError(f"models.json: provider {pid!r} needs \"api\" and \"baseUrl\"")
    mid = model_id or next(iter(listed), None) or (row["defaultModel"] if row else None)
    if not mid:
        raise ConfigError(f"no model given for {pid!r} and models.json lists none")
    model: dict[str, Any] = {"id": mid, "name": mid, "api": "openai-completions", "provider": pid, "baseUrl": "",
             "reasoning": False, "input": ["text"],
             "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
             "contextWindow": 128000, "maxTokens": 16384}
    if row:
        # the row gives every model its family, URL, headers, compat and limits; name, reasoning and
        # input are the known model's (the row's describe the provider), neutral for an unknown id
        _merge(model, {k: v for k, v in row.items() if k not in ("name", "reasoning", "input")})
        known = _known_models(pid).get(mid)
        if known:
            _merge(model, known)
        elif row.get("modelApis"):  # a provider serving each family of model on its own API (Copilot)
            import re
            model["api"] = next((api for pattern, api in row["modelApis"] if re.search(pattern, mid)), model["api"])
    _merge(model, pconf)
    if mid in listed:
        _merge(model, listed[mid])
    _merge(model, overrides)
    return model  # type: ignore[return-value]  # a dict of every Model field, filled above


def list_providers() -> list[str]:
    """Canonical provider ids (built in and from models.json), sorted."""
    ids = set(_table().PROVIDERS)
    for key in (_read_config("models.json").get("providers") or {}):
        ids.add(_canonical(key) or key.lower())
    return sorted(ids)


def _resolve_value(value: object, base_dir: str, what: str, required: bool = False) -> str | None:
    """models.json value sources: "!command", "env:NAME", "file:PATH", else a bare
    value: the env var of that name when it is set and non-empty, else the value
    itself (as both pis do: "K_MODELS" with no such variable is the key K_MODELS).
    -> str or None. "env:NAME" with NAME unset is a ConfigError when ``required``
    (an apiKey), else None (a header is dropped)."""
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("!"):
        import subprocess
        try:
            run = subprocess.run(value[1:], shell=True, capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"the command for {what} in models.json failed: {type(e).__name__}") from None
        if run.returncode != 0:
            raise ConfigError(f"the command for {what} in models.json exited with status {run.returncode}")
        return run.stdout.strip() or None
    if value.startswith("env:"):
        name = value[4:].strip()
        found = os.environ.get(name, "").strip() or None
        if found is None and required:
            raise ConfigError(f"{what} in models.json is {value!r}, but {name} is not set in the environment"
                              if name else f"{what} in models.json is {value!r}: no variable name after env:")
        return found
    if value.startswith("file:"):
        path = os.path.join(base_dir, os.path.expanduser(value[5:].strip()))
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            raise ConfigError(f"cannot read the file for {what} in models.json: {path}: {e.strerror}") from None
    return os.environ.get(value, "").strip() or value


def _auth_built(style: str) -> bool:
    return style in _AUTH_HEADERS or style in _AUTH_STEPS or style in _AUTH_RESOLVERS


def _auth_style(model: Model, row: _Row | None, pconf: dict[str, Any]) -> str:
    """The provider's auth style: models.json "auth" (or "authHeader": false), else
    the table row's, else the family's usual one."""
    if pconf.get("authHeader") is False:
        return "off"
    if isinstance(pconf.get("auth"), str):
        return pconf["auth"]  # type: ignore[no-any-return]  # a str, as checked
    if row and row.get("auth") and (not pconf.get("api") or pconf.get("api") == row.get("api")):
        return row["auth"]
    api = str(model.get("api") or "")
    return {"anthropic-messages": "x-api-key", "google-generative-ai": "x-goog-api-key",
            "google-vertex": "google-cloud", "azure-openai": "azure", "azure-openai-responses": "azure",
            "openai-codex-responses": "oauth", "faux": "none"}.get(api, "bearer")


def _auth_json_entry(pid: str) -> tuple[str | None, Any]:
    """-> (the key auth.json stores pid under, its entry), or (None, None)."""
    data = _read_config("auth.json")
    found: tuple[str | None, Any] = (None, None)
    for key, value in data.items():
        if key.lower() == pid:
            return key, value
        if _canonical(key) == pid:
            found = (key, value)
    return found


def _oauth_expired(entry: Any) -> bool:
    expires = entry.get("expires") if isinstance(entry, dict) else None
    return isinstance(expires, (int, float)) and expires <= _now_ms()


def _auth_json_key(pid: str) -> str | None:
    """An API key or unexpired OAuth access token for pid from auth.json."""
    entry = _auth_json_entry(pid)[1]
    if isinstance(entry, str):
        return entry.strip() or None
    if not isinstance(entry, dict):
        return None
    kind = entry.get("type")
    if kind in ("oauth", "o_auth"):
        if _oauth_expired(entry):
            return None
        value = entry.get("access") or entry.get("access_token")
    elif kind == "bearer_token":
        value = entry.get("token")
    else:
        value = entry.get("key") or entry.get("api_key")
    if value is not None and not isinstance(value, str):
        path = os.path.join(_agent_dir(), "auth.json")
        raise ConfigError(f"{path}: the {pid} entry's key must be a string, not {type(value).__name__}")
    return value.strip() or None if value else None


# OAuth refresh of subscription tokens stored by pi: provider -> (token URL, client id).
# An auth.json entry may name its own "token_url" and "client_id" (pi_agent_rust's form).
_OAUTH_REFRESH = {"anthropic": ("https://console.anthropic.com/v1/oauth/token",
                                "9d1c250a-e61b-44d9-88ed-5944d1962f5e"),
                  "openai-codex": ("https://auth.openai.com/oauth/token", "app_EMoamEEZ73f0CkXaXp7hrann")}
# provider -> what else goes with a refreshed token: (token, headers) -> None
_OAUTH_TOKEN_HEADERS = {"openai-codex": _cx_headers}


def _is_oauth_key(pid: str, key: str) -> bool:
    """key is the access token of pid's OAuth entry in auth.json."""
    entry = _auth_json_entry(pid)[1]
    return (isinstance(entry, dict) and entry.get("type") in ("oauth", "o_auth")
            and key in (entry.get("access"), entry.get("access_token")))


def _refreshable(pid: str) -> bool:
    """pid's auth.json entry is an expired OAuth token that can be refreshed."""
    entry = _auth_json_entry(pid)[1]
    return (pid in _OAUTH_REFRESH and isinstance(entry, dict) and entry.get("type") in ("oauth", "o_auth")
            and _oauth_expired(entry) and bool(entry.get("refresh") or entry.get("refresh_token")))


def _write_auth_entry(name: str, entry: dict[str, Any]) -> None:
    """Replace one entry of auth.json, keeping the others: written to a temporary
    file of mode 0600 beside it, then renamed over it (atomic)."""
    import tempfile
    path = os.path.join(_agent_dir(), "auth.json")
    data = _read_config("auth.json")
    data[name] = entry
    fd, tmp = tempfile.mkstemp(prefix=".auth.json.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _oauth_refresh_step(o: "_Options", method: str, url: str, headers: dict[str, str], data: bytes,
                        watch: "_Watch | None") -> None:
    """Auth step for an expired auth.json OAuth entry: refresh it once per process
    (written back to auth.json), then send the access token as a bearer token."""
    pid = o.oauth_provider

    def fetch() -> tuple[str, float]:
        name, entry = _auth_json_entry(pid)
        if not isinstance(entry, dict) or name is None:
            raise PiError(f"{pid}: the OAuth entry left auth.json", "auth")
        ts = "refresh" in entry or "access" in entry  # pi (TS) names; pi_agent_rust's have _token
        if not _oauth_expired(entry):  # another process refreshed it meanwhile
            access = entry.get("access") or entry.get("access_token") or ""
            return access, float(entry.get("expires") or 0) / 1000.0
        token_url, client_id = _OAUTH_REFRESH[pid]
        refresh = entry.get("refresh") or entry.get("refresh_token")
        o.secrets.append(str(refresh))
        request = {"grant_type": "refresh_token", "refresh_token": refresh,
                   "client_id": entry.get("client_id") or client_id}
        try:
            obj = _fetch_json("POST", entry.get("token_url") or token_url, {"Content-Type": "application/json"},
                              _json_body(request), o, watch, f"the {pid} OAuth token endpoint")
        except PiError as e:
            if e.status is None or not 400 <= e.status < 500:
                raise
            # the refresh token was refused (revoked, expired, used twice): only a new login helps
            raise PiError(f"{e}; log in to {pid} again with pi", "auth", e.status) from None
        access = obj.get("access_token")
        if not isinstance(access, str) or not access:
            raise PiError(f"the {pid} OAuth token endpoint answered without an access_token", "auth")
        expires = time.time() + float(_count(obj.get("expires_in")) or 3600)
        new = dict(entry, expires=int(expires * 1000))
        new["access" if ts else "access_token"] = access
        if obj.get("refresh_token"):
            new["refresh" if ts else "refresh_token"] = obj["refresh_token"]
        _write_auth_entry(name, new)
        return access, expires

    token = _cached_token(("oauth", pid, _agent_dir()), fetch, margin=300.0)
    o.secrets.append(token)
    for name in [k for k in headers if k.lower() in ("x-api-key", "authorization")]:
        del headers[name]
    headers["Authorization"] = "Bearer " + token
    extra = _OAUTH_TOKEN_HEADERS.get(pid)
    if extra is not None:
        extra(token, headers)


# Google Cloud credentials (the "google-cloud" style of Vertex AI), chosen once per
# stream: a key found the usual way, else Application Default Credentials of type
# authorized_user (refreshed at Google's token endpoint), else the metadata server.
# A service-account key would need an RS256-signed JWT, which the standard library
# cannot make.
_GC_TOKEN_URI = "https://oauth2.googleapis.com/token"
_GC_METADATA_HOST = "metadata.google.internal"
_GC_DMI = "/sys/class/dmi/id/product_name"  # "Google Compute Engine" on Google's VMs
_GC_CHOICES = ("set GOOGLE_CLOUD_API_KEY (an API key: express mode) or GOOGLE_CLOUD_ACCESS_TOKEN (from `gcloud auth "
               "print-access-token`), put \"apiKey\": \"!gcloud auth print-access-token\" for the provider in "
               "models.json, run `gcloud auth application-default login`, or run on Google Cloud (metadata server)")


def _gc_source(o: _Options, pid: str, trusted: bool) -> Callable[..., None] | None:
    """The google-cloud auth style. A key ("AIza..." is an API key, sent as
    x-goog-api-key; anything else an access token) needs no step; ADC and the
    metadata server get one that fetches a token on the first attempt and reuses it
    until shortly before it expires."""
    key = o.credential
    if key:
        if key.startswith("AIza"):
            o.auth_headers["x-goog-api-key"] = key
        else:
            o.auth_headers["Authorization"] = "Bearer " + key
        return None
    if not trusted:
        return None  # this machine's credentials go to the provider's own host only
    path = _gc_adc_path()
    if path:
        return _gc_adc_step(o, path)
    host = _gc_metadata_host()
    if host:
        return _gc_metadata_step(host)
    raise ConfigError(f"no Google Cloud credentials for {pid}: {_GC_CHOICES}")


def _gc_adc_path() -> str | None:
    """$GOOGLE_APPLICATION_CREDENTIALS, else the file `gcloud auth application-default
    login` writes (under $CLOUDSDK_CONFIG when set), when it exists."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if named:
        if not os.path.isfile(named):
            raise ConfigError(f"GOOGLE_APPLICATION_CREDENTIALS names {named}, which is not a file")
        return named
    root = os.environ.get("CLOUDSDK_CONFIG", "").strip()
    if not root:
        root = os.path.join(os.environ.get("APPDATA", ""), "gcloud") if os.name == "nt" else \
            os.path.join(os.path.expanduser("~"), ".config", "gcloud")
    path = os.path.join(root, "application_default_credentials.json")
    return path if os.path.isfile(path) else None


def _gc_adc_step(o: _Options, path: str) -> Callable[..., None]:
    """The auth step for an authorized_user ADC file; ConfigError for any other kind."""
    try:
        with open(path, "rb") as f:
            info = json.loads(f.read().decode("utf-8-sig"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the Application Default Credentials {path}: "
                          f"{e.strerror if isinstance(e, OSError) else 'not JSON'}") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        raise ConfigError(f"{path} is a service-account key: pi_min cannot sign its token request (RS256 is not "
                          f"in the Python standard library). Instead {_GC_CHOICES}")
    if kind != "authorized_user":
        raise ConfigError(f"{path} holds credentials of type {kind!r}; pi_min reads authorized_user ones (from "
                          f"`gcloud auth application-default login`). Instead {_GC_CHOICES}")
    missing = [k for k in ("client_id", "client_secret", "refresh_token") if not isinstance(info.get(k), str)
               or not info[k]]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: run `gcloud auth application-default login` again")
    token_uri = str(info.get("token_uri") or _GC_TOKEN_URI)
    _split_url(token_uri)  # a bad one is the user's to fix, now
    o.secrets.extend((info["client_secret"], info["refresh_token"]))
    quota = os.environ.get("GOOGLE_CLOUD_QUOTA_PROJECT", "").strip() or info.get("quota_project_id")
    from urllib.parse import urlencode
    form = urlencode({"grant_type": "refresh_token", "client_id": info["client_id"],
                      "client_secret": info["client_secret"], "refresh_token": info["refresh_token"]}).encode()
    import hashlib
    cache_key = ("google-adc", path, hashlib.sha256(form).hexdigest())  # a new login is a new token

    def step(o: _Options, method: str, url: str, headers: dict[str, str], data: bytes, watch: _Watch | None) -> None:
        def fetch() -> tuple[str, float]:
            try:
                obj = _fetch_json("POST", token_uri, {"Content-Type": "application/x-www-form-urlencoded"}, form, o,
                                  watch, "Google's token endpoint")
            except PiError as e:
                if e.status not in (400, 401):
                    raise
                # invalid_grant: the login was revoked or expired, which only a new login mends
                raise PiError(f"{e} (run `gcloud auth application-default login` again)", "auth",
                              e.status) from None
            return _gc_token(obj, "Google's token endpoint")
        _gc_bearer(o, headers, _cached_token(cache_key, fetch, margin=300.0), quota if isinstance(quota, str) else None)
    return step


def _gc_metadata_host() -> str | None:
    """The metadata server: $GCE_METADATA_HOST (host[:port], as Google's libraries
    read it), else Google's own address when this looks like Google Cloud (a Compute
    Engine VM by its DMI product name, Cloud Run, Cloud Functions)."""
    named = (os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_ROOT") or "").strip()
    if named:
        return named.partition("://")[2].rstrip("/") if "://" in named else named.rstrip("/")
    try:
        with open(_GC_DMI, encoding="utf-8", errors="replace") as f:
            on_gce = "Google" in f.read(256)
    except OSError:
        on_gce = False
    return _GC_METADATA_HOST if on_gce or os.environ.get("K_SERVICE") or os.environ.get("FUNCTION_TARGET") else None


def _gc_metadata_step(host: str) -> Callable[..., None]:
    token_url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
    _split_url(token_url)

    def step(o: _Options, method: str, url: str, headers: dict[str, str], data: bytes, watch: _Watch | None) -> None:
        def fetch() -> tuple[str, float]:
            obj = _fetch_json("GET", token_url, {"Metadata-Flavor": "Google"}, b"", o, watch, "the metadata server")
            return _gc_token(obj, "the metadata server")
        # the metadata server itself renews a token well before it expires: the default margin is enough
        _gc_bearer(o, headers, _cached_token(("google-metadata", host), fetch), None)
    return step


def _gc_token(obj: dict[str, Any], what: str) -> tuple[str, float]:
    """(access token, expiry in epoch seconds) from a token endpoint's answer."""
    token = obj.get("access_token")
    if not isinstance(token, str) or not token:
        raise PiError(f"{what} answered without an access_token", "auth")
    return token, time.time() + float(_count(obj.get("expires_in")) or 3600)


def _gc_bearer(o: _Options, headers: dict[str, str], token: str, quota: str | None) -> None:
    """Send the token, unless the caller's own headers= carry an Authorization."""
    o.secrets.append(token)
    if not any(name.lower() == "authorization" for name in headers):
        headers["Authorization"] = "Bearer " + token
    if quota and not any(name.lower() == "x-goog-user-project" for name in headers):
        headers["x-goog-user-project"] = quota  # user credentials bill the API to a quota project


def _gc_resolve(pid: str, model: Model, row: "_Row | None", pconf: dict[str, Any], o: _Options) -> None:
    """The google-cloud style's resolver: a key when one is configured, else this
    machine's Google Cloud credentials (_gc_source)."""
    trusted = _base_url(pid, model, row, pconf, o)
    key = o.api_key if o.api_key is not None else _stored_key(pid, row, pconf) if trusted else None
    if key and key.strip():
        o.credential = key.strip()
        o.secrets.append(o.credential)
    o.auth_step = _gc_source(o, pid, trusted)


def _quote(value: str) -> str:
    """A value made safe to substitute into a URL: every reserved or control
    character percent-encoded (a model id can hold "/", ":" or CR LF)."""
    from urllib.parse import quote
    return quote(value, safe="")


def _fill_url(url: str, row: _Row | None, model: Model) -> str:
    """Fill {placeholders} of a templated base URL from env vars / defaults; the
    values are percent-encoded, except whole URLs ({service_url}), which are
    checked like any URL."""
    if "{" not in url:
        return url
    import re
    row = row or {}
    env_map = row.get("urlVars") or {}
    defaults = row.get("urlDefaults") or {}
    origin_env = row.get("urlOrigin") or ()
    for env in origin_env:  # a whole endpoint instead of the template's scheme and host (Azure)
        value = os.environ.get(env, "").strip()
        if value:
            url = value.rstrip("/") + "/" + url.partition("://")[2].partition("/")[2]
            break

    def value_of(name: str) -> str:
        for env in env_map.get(name, ()):
            value = os.environ.get(env, "").strip()
            if value:
                return value
        if name in defaults:
            return defaults[name]
        if name in ("model", "deployment", "deployment_id"):
            return model["id"]
        names = " or ".join([*origin_env, *env_map.get(name, ())]) or "a baseUrl in models.json"
        raise ConfigError(f"{model['provider']}: the base URL needs {{{name}}}: set {names}")

    def fill(m: re.Match[str]) -> str:
        value = value_of(m.group(1))
        if not m.group(1).endswith("_url"):
            return _quote(value)
        return value.rstrip("/") if "://" in value else "https://" + value.rstrip("/")  # a bare host name
    return re.sub(r"\{([A-Za-z_]+)\}", fill, url)


class _Options:
    """Validated keyword options of stream()/complete() plus what they resolve to."""

    __slots__ = ("api_key", "base_url", "headers", "temperature", "max_tokens", "reasoning", "tool_choice",
                 "session_id", "cache_retention", "signal", "timeout", "max_retries", "on_payload", "extra",
                 "url", "host_row", "compat", "auth_headers", "secrets", "hidden", "credential", "auth_step",
                 "oauth", "oauth_provider", "context_headers")

    def __init__(self, api_key: str | None = None, base_url: str | None = None, headers: dict[str, Any] | None = None,
                 temperature: float | None = None, max_tokens: int | None = None,
                 reasoning: ThinkingLevel | None = None, tool_choice: str | dict[str, Any] | None = None,
                 session_id: str | None = None, cache_retention: CacheRetention | None = None,
                 signal: _Signal | None = None, timeout: float | None = 120.0, max_retries: int | None = 2,
                 on_payload: _PayloadHook | None = None, extra: dict[str, Any] | None = None) -> None:
        self.api_key: str | None = api_key
        self.base_url: str | None = base_url
        self.headers: dict[str, Any] | None = headers
        self.temperature: float | None = temperature
        self.max_tokens: int | None = max_tokens
        self.reasoning: str | None = reasoning
        self.tool_choice = tool_choice
        self.session_id: str | None = session_id
        self.cache_retention: str | None = cache_retention
        self.signal = signal
        self.timeout: float = 120.0 if timeout is None else timeout
        self.max_retries: int = 2 if max_retries is None else max_retries
        self.on_payload = on_payload
        self.extra: dict[str, Any] = extra or {}
        # resolved by _prepare() / the family's request builder
        self.url = ""
        self.host_row: _Row | None = None   # table row serving the request's host
        self.compat: dict[str, Any] | None = None  # the family's resolved compat flags
        self.auth_headers: dict[str, str] = {}  # credentials and model headers
        self.secrets: list[str] = []        # keys and tokens: redacted from every message and event
        self.hidden: list[str] = []         # headers= values: redacted from messages
        self.credential: Any = None         # the key or credentials object, for an auth step
        self.auth_step: "_AuthStep | None" = None  # run before every attempt (_AUTH_STEPS)
        self.oauth = False                  # the credential is a subscription (OAuth) token
        self.oauth_provider = ""            # whose auth.json OAuth entry the auth step refreshes
        # headers an auth style derives from the conversation (Copilot's initiator and vision flags)
        self.context_headers: "Callable[[Context], dict[str, str]] | None" = None
        self._validate()
        if self.api_key is not None and not self.api_key.strip():
            self.api_key = None  # --api-key "": as if not given, so the stored key is used

    def _validate(self) -> None:
        if self.reasoning is not None and self.reasoning not in THINKING_LEVELS:
            raise ConfigError(f"reasoning must be one of {', '.join(THINKING_LEVELS)}, not {self.reasoning!r}")
        if self.cache_retention is not None and self.cache_retention not in CACHE_RETENTIONS:
            raise ConfigError(f"cache_retention must be one of {', '.join(CACHE_RETENTIONS)}")
        if self.temperature is not None and (isinstance(self.temperature, bool)
                                             or not isinstance(self.temperature, (int, float))
                                             or not 0 <= self.temperature <= 2):
            raise ConfigError(f"temperature must be a number from 0 to 2, not {self.temperature!r}")
        if self.max_tokens is not None and (isinstance(self.max_tokens, bool)
                                            or not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise ConfigError(f"max_tokens must be a positive integer, not {self.max_tokens!r}")
        if (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                or not 0 < self.timeout < 1e6):  # NaN and infinity fail this too
            raise ConfigError(f"timeout must be a positive, finite number of seconds, not {self.timeout!r}")
        if self.tool_choice is not None and not isinstance(self.tool_choice, (str, dict)):
            raise ConfigError("tool_choice must be \"auto\", \"none\", \"required\", a tool's name or a dict, "
                              f"not {self.tool_choice!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, not {self.max_retries!r}")
        if self.signal is not None and not (callable(getattr(self.signal, "is_set", None))
                                            and callable(getattr(self.signal, "wait", None))):
            raise ConfigError("signal must be a threading.Event (or have is_set()/wait())")
        if self.on_payload is not None and not callable(self.on_payload):
            raise ConfigError("on_payload must be callable")
        if self.headers is not None and not isinstance(self.headers, dict):
            raise ConfigError("headers must be a dict")
        if self.api_key is not None and not isinstance(self.api_key, str):
            raise ConfigError("api_key must be a string")
        if self.base_url is not None and not isinstance(self.base_url, str):
            raise ConfigError("base_url must be a string")
        for k, v in self.extra.items():
            if k != "faux":
                raise ConfigError(f"unknown option {k!r}")
            if not isinstance(v, (dict, list, str)) or isinstance(v, list) and not all(
                    isinstance(x, (dict, str)) for x in v):
                raise ConfigError("faux must be a reply dict, a text, or a list of them (one per turn)")


def _own_origins(row: _Row | None, pconf: dict[str, Any], model: Model) -> set[tuple[str, str, int] | None]:
    """(scheme, host, port) a provider's stored key may be sent to: those of its
    table and models.json base URLs. Any other origin (a base_url= override, a
    local proxy, plain http to the provider's host) gets a key only when the
    caller passes it."""
    origins = set()
    for url in (row and row.get("baseUrl"), pconf.get("baseUrl")):
        try:
            origins.add(_origin(_fill_url(url, row, model)) if url else None)
        except ConfigError:  # a templated host whose variables are not set: no origin of ours
            pass
    origins.discard(None)
    return origins


def _stored_key(pid: str, row: _Row | None, pconf: dict[str, Any]) -> str | None:
    """The provider's key from, in order, its env vars, auth.json, models.json."""
    for name in (row.get("envKeys") or ()) if row else ():
        value = os.environ.get(name, "").strip()
        if value:
            return value
    key = _auth_json_key(pid)
    if key is None and pconf.get("apiKey"):
        key = _resolve_value(pconf["apiKey"], _agent_dir(), f"{pid} apiKey", required=True)
    return key


def _built_provider(model: Model) -> tuple[str, _Row | None, dict[str, Any], str]:
    """-> (canonical id, table row or None, models.json entry, auth style) of a
    Model dict; ConfigError when its API family or auth style is not built yet."""
    pid = _canonical(model.get("provider") or "") or (model.get("provider") or "").lower()
    row = _table().PROVIDERS.get(pid)
    pconf = _provider_config(pid, _read_config("models.json"))
    style = _auth_style(model, row, pconf)
    api = model.get("api")
    others = "(`pi-min --list-providers` marks the others \"planned\")"
    if api not in _FAMILIES:
        raise ConfigError(f"{pid}: the {api} API family is not built yet in pi_min {__version__}. Use a provider "
                          f"whose family is built {others}, or, where {pid} has an OpenAI-compatible endpoint, set "
                          f"\"api\": \"openai-completions\" and that \"baseUrl\" for {pid} in models.json")
    if not _auth_built(style):
        raise ConfigError(f"{pid}: {style} authentication is not built yet in pi_min {__version__}. Use a "
                          f"provider that takes an API key {others}")
    return pid, row, pconf, style


def _is_local(row: _Row | None) -> bool:
    """A local server (its table base URL is on loopback: lmstudio, ollama, ...):
    its key is optional, sent when one is configured."""
    return bool(row) and _is_loopback(_host_of(row.get("baseUrl") or ""))  # type: ignore[union-attr]  # row is set


def _base_url(pid: str, model: Model, row: "_Row | None", pconf: dict[str, Any], o: _Options) -> bool:
    """Fill o.url from base_url= or the model's base URL. -> whether it is one of the
    provider's own origins, where its stored credentials may go."""
    o.url = _fill_url(o.base_url or model.get("baseUrl") or "", row, model)
    if not o.url:
        raise ConfigError(f"{pid}: no base URL: set baseUrl in models.json or pass base_url=")
    origin = _split_url(o.url)[:3]
    o.host_row = _rows_by_host().get(origin[1])
    return origin in _own_origins(row, pconf, model)


def _prepare(model: Model, o: _Options) -> None:
    """Resolve URL, credentials and headers; ConfigError for what the user must
    fix, a family or auth style not built yet included."""
    pid, row, pconf, style = _built_provider(model)
    if model.get("api") == "faux":
        return
    env_keys = list(row.get("envKeys") or ()) if row else []
    o.secrets.extend(os.environ[n].strip() for n in env_keys if os.environ.get(n, "").strip())
    resolve = _AUTH_RESOLVERS.get(style)
    if resolve is not None:  # a credential chain of its own: SigV4, SAP's service key
        resolve(pid, model, row, pconf, o)
        return _model_headers(model, o)
    trusted = _base_url(pid, model, row, pconf, o)
    key = o.api_key
    # a stored key goes only to its provider's own host; an explicit one anywhere
    if key is None and trusted:
        key = _stored_key(pid, row, pconf)
        if key is None and _refreshable(pid):  # refreshed by the auth step, inside the stream
            o.oauth, o.oauth_provider, o.auth_step = True, pid, _oauth_refresh_step
            return _model_headers(model, o)
        if key is None and env_keys and style not in ("none", "off") and not _is_local(row):
            raise ConfigError(f"no API key for {pid}: set {' or '.join(env_keys)}, add it to "
                              f"{os.path.join(_agent_dir(), 'auth.json')}, or pass api_key= (--api-key)")
    if key and key.strip():
        key = key.strip()
        o.secrets.append(key)
        o.credential = key
        if pid == "anthropic" and (key.startswith("sk-ant-oat") or _is_oauth_key(pid, key)):
            o.oauth, style = True, "bearer"  # a Claude subscription token, not an API key
        header = _AUTH_HEADERS.get(style)
        if header:
            o.auth_headers[header[0]] = header[1] + key
    o.auth_step = _AUTH_STEPS.get(style)
    _model_headers(model, o)


def _model_headers(model: Model, o: _Options) -> None:
    """The model's own headers (models.json), values resolved like keys."""
    headers = o.auth_headers
    for name, value in (model.get("headers") or {}).items():
        if isinstance(value, str) and value.startswith(("!", "env:", "file:")):
            value = _resolve_value(value, _agent_dir(), f"header {name}")
        if value is not None:
            headers[name] = str(value)
            if name.lower() in ("authorization", "x-api-key", "api-key", "x-goog-api-key"):
                o.secrets.append(str(value))


_TOKENS: dict[Hashable, tuple[str, float]] = {}  # cache key -> (token, expires at, epoch seconds)
_TOKEN_LOCKS: dict[Hashable, threading.Lock] = {}  # cache key -> lock: one fetch per key at a time


def _cached_token(key: Hashable, fetch: Callable[[], tuple[str, float]], margin: float = 60.0) -> str:
    """A short-lived token (Copilot, SAP AI Core, OAuth refresh) from the cache of
    this process, fetched again when missing or within ``margin`` seconds of
    expiring. fetch() -> (token, expires at in epoch seconds); it runs in one
    thread at a time per key, the others wait for its answer."""
    hit = _TOKENS.get(key)
    if hit and hit[1] - margin > time.time():
        return hit[0]
    import threading
    with _TOKEN_LOCKS.setdefault(key, threading.Lock()):
        hit = _TOKENS.get(key)
        if hit and hit[1] - margin > time.time():
            return hit[0]
        token, expires = fetch()
        _TOKENS[key] = (token, expires)
        return token


def _fetch_json(method: str, url: str, headers: dict[str, str], data: bytes, o: "_Options", watch: _Watch | None,
                what: str) -> dict[str, Any]:
    """A JSON request made on the way (token exchange, refresh): an HTTP failure is
    a PiError of the status's kind, as for the main request."""
    resp = _request(method, url, headers, data, o.timeout, watch)
    try:
        if not 200 <= resp.status < 300:
            raise _http_error(resp, what)
        raw = resp.read_all(1 << 20)
        resp.release()
    finally:
        resp.close()
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        raise PiError(f"{what} did not answer with a JSON object", "protocol")
    return obj


# ---- SAP AI Core: a service key exchanged for a token ----------------------------
# The credentials are an XSUAA client (id, secret, token URL) plus the AI API's
# service URL: each from a SAP_AI_CORE_* variable, else the service key JSON in
# AICORE_SERVICE_KEY, else an auth.json "service_key" entry. The client-credentials
# token is fetched by the auth step and cached per process until shortly before it
# expires. Inference goes to a deployment: SAP_AI_CORE_DEPLOYMENT_ID, else the
# model's "deploymentId" in models.json, else the model id itself.

# our field -> (the service key's names for it: SAP's, pi_agent_rust's), env var
_SAP_FIELDS = {
    "client_id": (("clientid", "client_id"), "SAP_AI_CORE_CLIENT_ID"),
    "client_secret": (("clientsecret", "client_secret"), "SAP_AI_CORE_CLIENT_SECRET"),
    "token_url": (("url", "token_url"), "SAP_AI_CORE_TOKEN_URL"),
    "service_url": (("service_url",), "SAP_AI_CORE_SERVICE_URL"),  # SAP's is serviceurls.AI_API_URL
}


def _sap_key_json(text: str, what: str) -> dict[str, Any]:
    """A service key given as JSON text; the message never quotes it (it holds the secret)."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        where = f" (line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise ConfigError(f"{what} is not valid JSON{where}: it should hold the AI Core service key") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} must be a JSON object: the AI Core service key")
    return obj


def _sap_fields(key: dict[str, Any]) -> dict[str, str]:
    """A service key's fields under our names."""
    out: dict[str, str] = {}
    urls = key.get("serviceurls")
    if isinstance(urls, dict):
        key = dict(key, service_url=key.get("service_url") or urls.get("AI_API_URL"))
    for field, (names, _) in _SAP_FIELDS.items():
        for name in names:
            value = key.get(name)
            if isinstance(value, str) and value.strip():
                out.setdefault(field, value.strip())
    return out


def _sap_credentials(pid: str) -> dict[str, str]:
    """Client id, secret, token URL and service URL, field by field: a SAP_AI_CORE_*
    variable, else AICORE_SERVICE_KEY, else auth.json's service_key entry."""
    found = {f: os.environ.get(env, "").strip() for f, (_, env) in _SAP_FIELDS.items()}
    found = {f: v for f, v in found.items() if v}
    raw = os.environ.get("AICORE_SERVICE_KEY", "").strip()
    sources = [_sap_fields(_sap_key_json(raw, "AICORE_SERVICE_KEY"))] if raw else []
    entry = _auth_json_entry(pid)[1]
    if isinstance(entry, dict) and entry.get("type") == "service_key":
        sources.append(_sap_fields(entry))
    for source in sources:
        for field, value in source.items():
            found.setdefault(field, value)
    return found


def _sap_deployment(pid: str, model: Model, pconf: dict[str, Any]) -> str:
    deployment = os.environ.get("SAP_AI_CORE_DEPLOYMENT_ID", "").strip()
    if deployment:
        return deployment
    for m in pconf.get("models") or ():
        if isinstance(m, dict) and m.get("id") == model["id"] and str(m.get("deploymentId") or "").strip():
            return str(m["deploymentId"]).strip()
    if model["id"] in _known_models(pid):  # a model name from the table, which no deployment is called
        raise ConfigError(f"{pid}: {model['id']!r} is a model name, not a deployment id: set "
                          "SAP_AI_CORE_DEPLOYMENT_ID, give the model a \"deploymentId\" in models.json, or name "
                          "the deployment as the model (-m <deployment id>)")
    return str(model["id"])


def _sap_url(pid: str, template: str, row: "_Row | None", model: Model,
             pconf: dict[str, Any], service_url: str) -> str:
    """The inference URL: {service_url} and {deployment_id} filled here, the rest
    ({api_version}) from the row's URL variables."""
    if "{service_url}" in template:
        if not service_url:
            raise ConfigError(f"{pid}: no service URL: set SAP_AI_CORE_SERVICE_URL or AICORE_SERVICE_KEY (the "
                              "service key, whose serviceurls.AI_API_URL it is)")
        base = service_url.rstrip("/")
        base = base[:-3] if base.endswith("/v2") else base  # SAP's SDKs name the URL with /v2
        template = template.replace("{service_url}", base if "://" in base else "https://" + base)
    if "{deployment_id}" in template:
        template = template.replace("{deployment_id}", _quote(_sap_deployment(pid, model, pconf)))
    return _fill_url(template, row, model)


def _sap_token_url(url: str) -> str:
    """The XSUAA token endpoint: a service key's "url" is the server, without the path."""
    url = url.rstrip("/")
    url = url if "://" in url else "https://" + url
    return url if url.endswith("/oauth/token") else url + "/oauth/token"


def _sap_require(pid: str, creds: dict[str, str], given: str) -> None:
    """ConfigError naming what is missing for the token exchange."""
    missing = [env for f, (_, env) in _SAP_FIELDS.items() if f != "service_url" and not creds.get(f)]
    if missing:
        where = "the service key in api_key lacks" if given else "missing"
        raise ConfigError(f"no SAP AI Core credentials for {pid} ({where} {', '.join(missing)}): set "
                          f"AICORE_SERVICE_KEY to the service key JSON, or {', '.join(missing)}; or add a "
                          f"\"service_key\" entry to {os.path.join(_agent_dir(), 'auth.json')}, or pass api_key=")


def _sap_prepare(pid: str, model: Model, row: "_Row | None", pconf: dict[str, Any],
                 o: _Options) -> None:
    """URL, resource group and credentials of an SAP AI Core request. api_key= may be
    a service key (JSON) or an access token; stored credentials go only to the
    service URL they name."""
    given = (o.api_key or "").strip()
    stored = _sap_credentials(pid)
    creds = _sap_fields(_sap_key_json(given, "api_key")) if given.startswith("{") else {} if given else stored
    o.secrets.extend(v for v in (given, creds.get("client_secret"), stored.get("client_secret")) if v)
    exchange = not given or bool(creds)  # client credentials, not a ready access token
    if exchange and not o.base_url:  # say what to set before anything about the URL
        _sap_require(pid, creds, given)
    service_url = creds.get("service_url") or stored.get("service_url") or ""
    o.url = _sap_url(pid, o.base_url or model.get("baseUrl") or "", row, model, pconf, service_url)
    group = os.environ.get("SAP_AI_CORE_RESOURCE_GROUP", "").strip() or os.environ.get("AICORE_RESOURCE_GROUP", "")
    o.auth_headers["AI-Resource-Group"] = group.strip() or "default"
    if not exchange:
        o.auth_headers["Authorization"] = "Bearer " + given
        return
    if not given and o.base_url:
        try:
            home = _origin(_sap_url(pid, model.get("baseUrl") or "", row, model, pconf, service_url))
        except ConfigError:
            home = None
        if _origin(o.url) != home:
            return  # another server: stored credentials are not sent there
    _sap_require(pid, creds, given)
    token_url = _sap_token_url(creds["token_url"])
    _split_url(token_url)  # a bad token URL is the user's to fix, now
    o.credential = json.dumps({"client_id": creds["client_id"], "client_secret": creds["client_secret"],
                               "token_url": token_url})
    o.auth_step = _sap_token_step


def _sap_token_step(o: _Options, method: str, url: str, headers: dict[str, str], data: bytes, watch: Any) -> None:
    """Auth step: the client-credentials token (cached), as a bearer token."""
    creds = json.loads(o.credential or "{}")

    def fetch() -> tuple[str, float]:
        from urllib.parse import urlencode
        # the client id holds "!" and "|": the form body encodes it exactly (Basic auth
        # would need the same encoding, which servers do not all undo)
        form = urlencode({"grant_type": "client_credentials", "client_id": creds["client_id"],
                          "client_secret": creds["client_secret"]}).encode()
        obj = _fetch_json("POST", creds["token_url"], {"Content-Type": "application/x-www-form-urlencoded",
                                                       "Accept": "application/json"},
                          form, o, watch, "the SAP AI Core token endpoint")
        token = obj.get("access_token")
        if not isinstance(token, str) or not token:
            raise PiError("the SAP AI Core token endpoint answered without an access_token", "auth")
        return token, time.time() + float(_count(obj.get("expires_in")) or 3600)

    token = _cached_token(("sap", creds["token_url"], creds["client_id"]), fetch, margin=300.0)
    o.secrets.append(token)
    headers["Authorization"] = "Bearer " + token


# ---- github-copilot ----------------------------------------------------------------
# Copilot serves each model on the API its "api" names (chat completions, Responses,
# Messages) behind one host, with a Copilot token of about half an hour. That token is
# given as it is (GITHUB_COPILOT_API_KEY) or made from a GitHub token: the auth step
# exchanges it at GitHub's API, once per process until shortly before it expires, and
# sends the request to the API host the answer names (individual, business and
# enterprise accounts each have their own) instead of the table's generic one.

_COPILOT_GITHUB_API = "https://api.github.com"
# Copilot serves editors only: a request that does not name one is a 400
_COPILOT_EDITOR = {"Editor-Version": "vscode/1.107.0", "Editor-Plugin-Version": "copilot-chat/0.35.0",
                   "User-Agent": "GitHubCopilotChat/0.35.0", "X-Github-Api-Version": "2025-04-01"}
_COPILOT_HEADERS = {**_COPILOT_EDITOR, "Copilot-Integration-Id": "vscode-chat",
                    "Openai-Intent": "conversation-edits"}


class _CopilotAuth:
    """The auth step's credential: a GitHub token, where to exchange it, where it came
    from (for messages) and the base URL the token's API host replaces ("": none)."""

    __slots__ = ("github_token", "token_url", "source", "base")

    def __init__(self, github_token: str, token_url: str, source: str, base: str) -> None:
        self.github_token, self.token_url, self.source, self.base = github_token, token_url, source, base


def _copilot_is_github_token(token: str) -> bool:
    """A GitHub token (gho_, ghu_, ghp_, github_pat_..., or a classic 40-hex one), to
    be exchanged. Anything else where either kind may be given (api_key=,
    GITHUB_COPILOT_API_KEY) is a Copilot token ("tid=...;exp=...") or a proxy's key,
    sent as it is."""
    import re
    return re.fullmatch(r"gh[opusr]_\w+|github_pat_\w+|[0-9a-f]{40}", token) is not None


def _copilot_login(entry: Any, path: str) -> tuple[str, bool, str] | None:
    """(token, exchange it, GitHub Enterprise host) of pi's github-copilot entry in
    auth.json. The GitHub token is TS pi's OAuth "refresh" (its "access" is a Copilot
    token, soon stale) and pi_agent_rust's "access_token"; a key entry is either kind."""
    if isinstance(entry, str):
        entry = {"key": entry}
    if not isinstance(entry, dict):
        return None
    oauth = entry.get("type") in ("oauth", "o_auth")
    value = (entry.get("refresh") or entry.get("access_token") if oauth
             else entry.get("token") or entry.get("key") or entry.get("api_key"))
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{path}: the github-copilot entry's token must be a string, not {type(value).__name__}")
    value = (value or "").strip()
    host = entry.get("enterpriseUrl")
    host = host.strip() if isinstance(host, str) else ""
    return (value, oauth or _copilot_is_github_token(value), host) if value else None


def _copilot_credential(pid: str, row: "_Row | None", pconf: dict[str, Any], o: _Options,
                        trusted: bool) -> tuple[str, str, bool, str] | None:
    """(token, where it came from, exchange it, GitHub Enterprise host) from, in order:
    api_key=, the env vars in table order, auth.json, models.json apiKey. Stored ones
    only for Copilot's own hosts."""
    if o.api_key is not None:
        key = o.api_key.strip()
        return (key, "api_key", _copilot_is_github_token(key), "") if key else None
    if not trusted:
        return None
    for name in (row.get("envKeys") or ()) if row else ():
        value = os.environ.get(name, "").strip()
        if value:  # GITHUB_COPILOT_API_KEY holds a Copilot token; the others GitHub tokens
            return value, name, name != "GITHUB_COPILOT_API_KEY" or _copilot_is_github_token(value), ""
    path = os.path.join(_agent_dir(), "auth.json")
    login = _copilot_login(_auth_json_entry(pid)[1], path)
    if login is not None:
        return login[0], f"the {pid} login in {path}", login[1], login[2]
    configured = _resolve_value(pconf.get("apiKey"), _agent_dir(), f"{pid} apiKey", required=True)
    return (configured, "the apiKey in models.json", _copilot_is_github_token(configured), "") if configured else None


def _copilot_github_api(enterprise: str) -> str:
    """GitHub's API: PI_COPILOT_GITHUB_API_BASE, else GITHUB_API_URL (GitHub Enterprise
    Server's .../api/v3, as Actions set it), else api.<host> of the enterprise pi logged
    in to (GitHub Enterprise Cloud, <name>.ghe.com), else api.github.com."""
    base = (os.environ.get("PI_COPILOT_GITHUB_API_BASE") or os.environ.get("GITHUB_API_URL") or "").strip()
    if not base and enterprise:
        host = enterprise.partition("://")[2] if "://" in enterprise else enterprise
        base = "https://api." + host.split("/")[0]
    base = (base or _COPILOT_GITHUB_API).rstrip("/")
    return base if "://" in base else "https://" + base


def _copilot_token_api(token: str) -> str:
    """The API host a Copilot token names (its proxy-ep field, as pi reads it), or ""."""
    for field in token.split(";"):
        name, _, value = field.partition("=")
        if name == "proxy-ep" and value and not _bad_chars(value) and "/" not in value:
            return "https://" + (value.replace("proxy.", "api.", 1) if value.startswith("proxy.") else value)
    return ""


def _copilot_prepare(pid: str, model: Model, row: "_Row | None", pconf: dict[str, Any], o: _Options) -> None:
    """The copilot style's resolver: the editor headers, the credential and, for a
    GitHub token, the step that exchanges it."""
    trusted = _base_url(pid, model, row, pconf, o)
    scheme, host = (_origin(o.url) or ("", "", 0))[:2]
    trusted = trusted or scheme == "https" and host.endswith(".githubcopilot.com")  # GitHub's own hosts
    o.auth_headers.update(_COPILOT_HEADERS)
    o.context_headers = _copilot_context_headers
    found = _copilot_credential(pid, row, pconf, o, trusted)
    if found is None:
        if o.api_key is None and trusted:
            keys = list(row.get("envKeys") or ()) if row else []
            raise ConfigError(
                f"no GitHub Copilot credentials for {pid}: set {keys[0] if keys else 'GITHUB_COPILOT_API_KEY'} "
                f"(a Copilot token) or {' or '.join(keys[1:]) or 'GITHUB_TOKEN'} (a GitHub token of an "
                f"account with Copilot), log in to GitHub Copilot with pi (/login), which writes its entry to "
                f"{os.path.join(_agent_dir(), 'auth.json')}, or pass api_key= (--api-key)")
        return  # another server than Copilot's: no stored credential goes there
    token, source, exchange, enterprise = found
    o.secrets.append(token)
    if _bad_chars(token):
        raise ConfigError(f"{pid}: the token in {source} contains a line break or control character")
    # the table's generic host gives way to the account's; a base URL the user chose does not
    base = o.url.rstrip("/") if not o.base_url and o.url.rstrip("/") == (row or {}).get("baseUrl") else ""
    if not exchange:
        o.auth_headers["Authorization"] = "Bearer " + token
        o.url = (_copilot_token_api(token) if base else "") or o.url
        return
    token_url = _copilot_github_api(enterprise) + "/copilot_internal/v2/token"
    _split_url(token_url)  # a bad PI_COPILOT_GITHUB_API_BASE is the user's to fix, now
    o.credential = _CopilotAuth(token, token_url, source, base)
    o.auth_step = _copilot_step


def _copilot_step(o: _Options, method: str, url: str, headers: dict[str, str], data: bytes,
                  watch: "_Watch | None") -> str | None:
    """Auth step: the GitHub token's Copilot token as the bearer token, and the API
    host it names in place of the table's. -> the URL to use, or None."""
    auth: _CopilotAuth = o.credential
    if any(name.lower() == "authorization" for name in headers):
        return None  # headers= or models.json carry a credential of their own
    token, api = _copilot_exchange(auth, o, watch)
    o.secrets.append(token)
    headers["Authorization"] = "Bearer " + token
    rest = url[len(auth.base):] if auth.base and url.startswith(auth.base) else None
    return api + rest if api and rest is not None and rest[:1] in ("", "/", "?") else None


def _copilot_exchange(auth: _CopilotAuth, o: _Options, watch: "_Watch | None") -> tuple[str, str]:
    """(Copilot token, API base or "") for the GitHub token, from this process's cache
    or GitHub. A refusal is an auth error saying what to check; a 5xx, a 429 or a
    network failure keeps its kind, so the attempt is retried like any request."""
    import hashlib

    def fetch() -> tuple[str, float]:
        headers = {"Authorization": "token " + auth.github_token, "Accept": "application/json", **_COPILOT_EDITOR}
        try:
            obj = _fetch_json("GET", auth.token_url, headers, b"", o, watch, "the GitHub Copilot token endpoint")
        except PiError as e:
            if e.status is None or e.status in _RETRY_STATUSES:
                raise
            github = auth.token_url.rsplit("/copilot_internal/", 1)[0]
            raise PiError(f"{e}; check that {auth.source} is a GitHub token of an account with Copilot access "
                          f"(a Copilot plan, or a seat in an organisation that allows it) and that {github} is "
                          f"its GitHub API (PI_COPILOT_GITHUB_API_BASE or GITHUB_API_URL for GitHub "
                          f"Enterprise)", "auth", e.status) from None
        token = obj.get("token")
        if not isinstance(token, str) or not token.strip() or _bad_chars(token):
            raise PiError("the GitHub Copilot token endpoint answered without a usable token", "auth")
        endpoints = obj.get("endpoints")
        api = endpoints.get("api") if isinstance(endpoints, dict) else None
        api = api.strip().rstrip("/") if isinstance(api, str) else ""
        if api and _origin(api) is None:
            raise PiError(f"the GitHub Copilot token endpoint named an API host that is not a URL: {api[:100]!r}",
                          "protocol")
        expires = float(_count(obj.get("expires_at")))
        expires = expires / 1000 if expires > 1e11 else expires  # seconds, as GitHub sends; ms tolerated
        return json.dumps([token.strip(), api]), expires or time.time() + float(_count(obj.get("refresh_in")) or 1500)

    key = ("copilot", auth.token_url, hashlib.sha256(auth.github_token.encode()).hexdigest())
    token, api = json.loads(_cached_token(key, fetch))  # packed: the cache holds one string per key
    return str(token), str(api)


def _copilot_context_headers(ctx: Context) -> dict[str, str]:
    """Copilot's per-request headers: X-Initiator says whether a person asked (the last
    message is the user's) or the agent goes on by itself (after tool results), which
    Copilot counts differently; Copilot-Vision-Request must come with any image."""
    messages = ctx.get("messages") or []
    last = messages[-1].get("role") if messages else "user"
    headers = {"X-Initiator": "user" if last == "user" else "agent"}
    if any(isinstance(m.get("content"), list) and any(isinstance(b, dict) and b.get("type") == "image"
                                                      for b in m["content"]) for m in messages):
        headers["Copilot-Vision-Request"] = "true"
    return headers


# style -> prepare(pid, model, row, models.json entry, o): credentials of their own shape
_AUTH_RESOLVERS: dict[str, Callable[[str, Model, "_Row | None", dict[str, Any], _Options], None]] = {
    "sigv4": _br_credentials, "sap": _sap_prepare, "google-cloud": _gc_resolve, "copilot": _copilot_prepare}


# ==== public API ===============================================================

_RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504, 529))


def _rpc_details(err: dict[str, Any]) -> tuple[str | None, float | None]:
    """Google's error details (google.rpc.Status): the ErrorInfo reason, which says
    more than the status (API_KEY_INVALID inside an INVALID_ARGUMENT 400), and the
    RetryInfo delay ("41s"), which Google sends instead of a Retry-After header."""
    reason, delay = None, None
    details = err.get("details")
    for d in details if isinstance(details, list) else ():
        if not isinstance(d, dict):
            continue
        if isinstance(d.get("reason"), str) and reason is None:
            reason = d["reason"]
        wait = d.get("retryDelay")
        if isinstance(wait, str) and wait.endswith("s"):
            try:
                delay = max(0.0, float(wait[:-1]))
            except ValueError:
                pass
    return reason, delay


def _http_error(resp: _Reply, provider: str) -> PiError:
    """A PiError from an HTTP error response (reads its body)."""
    try:
        raw = resp.read_all(1 << 20)
    except PiError:
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    message, code, delay = text, None, None
    try:
        obj = json.loads(text) if text[:1] in "[{\"" and text else None
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else (err.get("type") or err.get("status"))
            reason, delay = _rpc_details(err)
            code = reason or code
            message = _error_message(err)
        elif isinstance(err, str):
            message = err
            if isinstance(obj.get("error_description"), str):  # OAuth 2 token endpoints (RFC 6749)
                message = f"{err}: {obj['error_description']}"
    elif isinstance(obj, str):
        message = obj
    elif text[:1] == "<":
        message = f"(HTML error page, {len(text)} bytes)"
    message = " ".join((message or resp.reason or "no body").split())[:20000]  # cut after redaction, in _run
    if 300 <= resp.status < 400:
        where = resp.headers.get("location") or "elsewhere"
        message = f"redirected to {where}; use that as the base URL"
    e = PiError(f"HTTP {resp.status} from {provider}: {message}", _classify(resp.status, message, code), resp.status)
    e.retry_after = _parse_retry_after(resp.headers)
    if e.retry_after is None:
        e.retry_after = delay
    e.no_retry = code in ("insufficient_quota", "credit_balance_exhausted") or "insufficient_quota" in text
    return e


def _retry_delay(e: PiError, attempt: int, o: _Options) -> float | None:
    """Seconds to wait before retrying after e, or None when not retryable."""
    if attempt >= o.max_retries or e.no_retry:
        return None
    if e.status in _RETRY_STATUSES or e.transient or (e.kind == "network" and e.status is None):
        return e.retry_after if e.retry_after is not None else min(8.0, 0.5 * 2 ** attempt)
    return None


def _merge_headers(headers: dict[str, str], extra: dict[str, Any], what: str, secrets: list[str] | None = None) -> None:
    """Merge extra into headers, names compared case-insensitively (one Authorization:
    the later one); a None value removes the header. Framing headers and control
    characters are ConfigErrors; with ``secrets``, the values are redacted like keys."""
    for name, value in extra.items():
        if not isinstance(name, str) or not name or _bad_chars(name) or ":" in name or " " in name:
            raise ConfigError(f"{what}: bad header name {name!r}")
        if name.lower() in _FRAMING_HEADERS:
            raise ConfigError(f"{what}: {name} may not be set; pi_min frames the request itself")
        for old in [k for k in headers if k.lower() == name.lower()]:
            del headers[old]
        if value is None:
            continue
        value = str(value)
        if _bad_chars(value):
            raise ConfigError(f"{what}: header {name} contains a line break or control character")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise ConfigError(f"{what}: header {name} must be latin-1 text") from None
        headers[name] = value
        if secrets is not None:
            secrets.append(value)


def _build_request(model: Model, ctx: Context, o: _Options) -> _RequestParts:
    """The family's request with every header merged and checked, before a byte is
    sent: what is wrong here is a ConfigError raised by stream()."""
    family = _FAMILIES[model["api"]]
    url, headers, body = family.build(model, ctx, o)
    if o.context_headers is not None:
        headers.update(o.context_headers(ctx))
    if family.open is None:
        scheme, host, _, _ = _split_url(url)
        proxy = _proxy_for(scheme, host)
        if proxy:  # its password is a secret too, also when a proxy echoes it back
            o.secrets.extend(v.partition(" ")[2] for v in _proxy_auth(proxy).values())
            creds = proxy.partition("://")[2].partition("/")[0].rpartition("@")[0]
            from urllib.parse import unquote
            o.secrets.extend(x for x in (creds, unquote(creds), unquote(creds.partition(":")[2])) if x)
        if scheme == "https":
            _tls_context()
    headers["User-Agent"] = f"pi_min/{__version__}"
    _merge_headers(headers, o.auth_headers, f"{model['provider']} headers")
    _merge_headers(headers, o.headers or {}, "headers=", o.hidden)
    return url, headers, body


def _run(model: Model, ctx: Context, o: _Options, request: _RequestParts) -> "Generator[Event, None, None]":
    b = _Builder(model, o.secrets)
    yield {"type": "start", "partial": b.msg}
    watch = None
    finished = False
    try:
        url, headers, body = request
        if o.on_payload is not None:
            try:
                replaced = o.on_payload(body, model)
            except Exception as e:  # the caller's code: its error ends the stream, named as such
                raise PiError(f"on_payload raised {type(e).__name__}: {e}", "invalid_request") from None
            if replaced is not None and not isinstance(replaced, dict):
                raise PiError(f"on_payload must return a dict (or None), not {type(replaced).__name__}",
                              "invalid_request")
            if replaced is not None:
                body = replaced
        if o.signal is not None:
            watch = _Watch(o.signal)
        yield from _attempts(model, ctx, o, b, url, headers, body, watch)
        finished = True
    except PiError as e:
        aborted = e.kind == "aborted" or (o.signal is not None and o.signal.is_set())
        message = "Request was aborted" if aborted else _redact(str(e), o.secrets + o.hidden)[:2000]
        kind = "aborted" if aborted else e.kind if e.kind in ERROR_KINDS else "invalid_request"
        if b.out:
            yield from b.out
            b.out.clear()
        finished = True
        yield b.fail(kind, message, None if aborted else e.status)
    except (GeneratorExit, KeyboardInterrupt):  # closed or interrupted: no event can follow
        if not finished:
            b.msg["stopReason"] = "aborted"
            b.msg["errorMessage"] = "Request was aborted"
            b.msg["errorKind"] = "aborted"
        raise
    except Exception as e:  # a bug or an unexpected shape: still an event, never a traceback
        finished = True
        if b.out:  # the events of what was built so far come first, as for any error
            yield from b.out
            b.out.clear()
        yield b.fail("protocol", _redact(f"unexpected {type(e).__name__}: {e}", o.secrets + o.hidden))
    finally:
        if watch is not None:
            watch.stop()


def _attempts(model: Model, ctx: Context, o: _Options, b: _Builder, url: str, headers: dict[str, str],
              body: dict[str, Any], watch: _Watch | None) -> Generator[Event, None, None]:
    """The retry loop: one attempt after another until one ends the turn, a failure
    is not worth retrying, or content was already yielded."""
    relax = _FAMILIES[model["api"]].relax
    data = _json_body(body)
    attempt = 0
    while True:
        try:
            if o.signal is not None and o.signal.is_set():
                raise _aborted()
            yield from _attempt(model, ctx, o, b, url, headers, data, watch)
            return
        except PiError as e:
            relaxed = relax(body, e) if relax is not None and not b.has_content() else None
            if relaxed is not None:  # the server rejected an optional field: once more without it
                body, relax = relaxed, None
                data = _json_body(body)
                continue
            delay = None if b.has_content() else _retry_delay(e, attempt, o)
            if delay is None:
                raise
            if delay > MAX_RETRY_AFTER:
                raise PiError(f"{e} (the server asked to retry in {delay:.0f} s; pi_min waits at most "
                              f"{MAX_RETRY_AFTER:.0f} s)", e.kind, e.status) from None
            if o.signal is not None:
                if o.signal.wait(delay):
                    raise _aborted() from None
            elif delay:
                time.sleep(delay)
            attempt += 1
            b.set_usage(0, 0)


def _attempt(model: Model, ctx: Context, o: _Options, b: _Builder, url: str, headers: dict[str, str], data: bytes,
             watch: _Watch | None) -> Generator[Event, None, None]:
    """One HTTP exchange: authenticate, send, check the status, decode the body
    into the translator, and end the turn (b.done) once the provider said so."""
    family = _FAMILIES[model["api"]]
    tr = family.translator(b, o)
    if family.open is not None:
        resp = family.open(model, ctx, o)
    else:
        if o.auth_step is not None:  # signatures and tokens are made per attempt, on the final bytes
            headers = dict(headers)
            url = o.auth_step(o, "POST", url, headers, data, watch) or url  # a token may name its API host
        resp = _request("POST", url, headers, data, o.timeout, watch)
    try:
        if not 200 <= resp.status < 300:
            raise _http_error(resp, model["provider"])
        decoder = family.decoder
        ctype = resp.headers.get("content-type", "").lower()
        head = _sniff(resp)
        streamed = decoder is not None and decoder.CONTENT_TYPE in ctype
        if streamed and decoder is SSEParser and head.lstrip()[:1] in (b"{", b"["):
            streamed = False  # one JSON body (an error, most often) under an event-stream label
        if streamed or decoder is not None and decoder.looks_like(head):
            # a stream in the family's framing, also when a proxy mislabels it
            try:
                ended = yield from _feed(decoder(), resp, head, tr, b, o.signal)  # type: ignore[misc]  # not None
            except PiError as e:
                if e.kind not in ("network", "timeout") or (o.signal is not None and o.signal.is_set()):
                    raise
                try:  # the connection failed: fine once the provider had said the turn is over
                    reason = tr.end(True)
                except PiError:
                    raise e from None
                ended = False
            else:
                reason = tr.end(not ended)
            resp.finish() if ended else resp.release()
        else:
            obj = _whole_json(head + resp.read_all(), ctype, model["provider"])
            resp.release()
            tr.whole(obj)
            reason = tr.end(False)
        b.done(reason)
        yield from b.out
        b.out.clear()
    finally:
        resp.close()


def _feed(decoder: _Decoder, resp: _Reply, head: bytes, tr: _Translator, b: _Builder,
          signal: _Signal | None) -> Generator[Event, None, bool]:
    """Feed the body through the family's decoder into its translator, yielding
    the builder's events per frame. -> True when the translator saw the
    provider's terminator (nothing after it is waited for)."""
    out = b.out
    pieces = resp.iter_body()
    for piece in _chain(head, pieces) if head else pieces:
        for kind, data in decoder.feed(piece):
            ended = tr.event(kind, data)
            if out:  # per frame, so partial is in step with the events
                yield from out
                out.clear()
            if ended:
                return True
            if signal is not None and signal.is_set():  # set while the caller handled this frame's events
                raise _aborted()
        if signal is not None and signal.is_set():
            raise _aborted()
    for kind, data in decoder.close():
        if tr.event(kind, data):
            return True
    return False


def _whole_json(raw: bytes, ctype: str, provider: str) -> Any:
    """A body that is not an event stream: the family's whole answer as JSON, or
    an error object (in-band error), or a protocol error."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text) if "json" in ctype or text[:1] in "{[" else None
    except (ValueError, RecursionError):
        obj = None
    if obj is None:
        what = ctype.split(";")[0] or "no content type"
        raise PiError(f"expected an event stream from {provider}, got {what}: "
                      f"{' '.join(text[:200].split())!r}", "protocol")
    if isinstance(obj, dict) and obj.get("error"):
        raise _in_band_error(obj["error"])
    return obj


def _sniff(resp: _Reply) -> bytes:
    """The first body bytes: until a few non-blank ones came, all of a short body,
    or 64 KiB of blank ones (then the decoder judges the rest)."""
    head = bytearray()
    for piece in resp.iter_body():
        head += piece
        if len(head) > 65536 or len(head.lstrip()) >= 6:
            break
    return bytes(head)


def _chain(first: bytes, rest: Iterable[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


_BLOCK_FIELDS = {  # block type -> (its text fields, the roles it may appear in)
    "text": (("text",), ("user", "assistant", "toolResult")),
    "thinking": (("thinking",), ("assistant",)),
    "image": (("data", "mimeType"), ("user", "toolResult")),
    "toolCall": (("id", "name"), ("assistant",)),
}


def _check_block(n: int, role: str, b: Mapping[str, Any]) -> None:
    """One content block of a context message has the shape of CONTRACT §2."""
    kind = b.get("type")
    fields, roles = _BLOCK_FIELDS.get(str(kind), ((), ()))
    if role not in roles:
        raise ConfigError(f"context message {n} ({role}): a {kind!r} block cannot be there")
    for name in fields:
        if not isinstance(b.get(name), str):
            raise ConfigError(f"context message {n} ({role}): the {kind} block's {name} must be a text")
    if kind == "toolCall" and not isinstance(b.get("arguments", {}), dict):
        raise ConfigError(f"context message {n}: a toolCall's arguments must be a dict")


def _context(context: Context | str) -> Context:
    if isinstance(context, str):
        return {"messages": [{"role": "user", "content": context, "timestamp": _now_ms()}]}
    if not isinstance(context, dict) or not isinstance(context.get("messages"), list):
        raise ConfigError("context must be a string or a dict with a \"messages\" list")
    for n, m in enumerate(context["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "toolResult"):
            raise ConfigError(f"context message {n}: role must be user, assistant or toolResult: {str(m)[:80]}")
        content = m.get("content")
        if not (isinstance(content, list) and all(isinstance(b, dict) for b in content)
                or isinstance(content, str) and m["role"] != "assistant"
                or content is None and m["role"] == "assistant"):
            raise ConfigError(f"context message {n} ({m['role']}): content must be a list of blocks"
                              + (" or a string" if m["role"] != "assistant" else ""))
        for b in content if isinstance(content, list) else ():
            _check_block(n, m["role"], b)
    tools = context.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("name")
                                                                      for t in tools)):
        raise ConfigError("context tools must be a list of {name, description, parameters}")
    return context


def stream(model: Model | str, context: Context | str, *, api_key: str | None = None, base_url: str | None = None,
           headers: dict[str, Any] | None = None, temperature: float | None = None, max_tokens: int | None = None,
           reasoning: ThinkingLevel | None = None, tool_choice: str | dict[str, Any] | None = None,
           session_id: str | None = None, cache_retention: CacheRetention | None = None, signal: _Signal | None = None,
           timeout: float = 120.0, max_retries: int = 2, on_payload: "_PayloadHook | None" = None,
           **extra: Any) -> "Generator[Event, None, None]":
    """Stream one assistant turn as events (see the module docs and CONTRACT §4).

    ``model`` is a Model dict or "provider" / "provider/model-id"; ``context`` a
    Context dict or a user prompt string. Raises ConfigError for what the user
    must fix; once this returns, every failure is the terminal ``error`` event.

    ``on_payload(body, model)`` is called once before the request is sent, with
    the request body dict and the Model; it may inspect the body or return a
    replacement dict to send instead (returning None keeps the body).
    """
    o = _Options(api_key=api_key, base_url=base_url, headers=headers, temperature=temperature,
                 max_tokens=max_tokens, reasoning=reasoning, tool_choice=tool_choice, session_id=session_id,
                 cache_retention=cache_retention, signal=signal, timeout=timeout, max_retries=max_retries,
                 on_payload=on_payload, extra=extra)
    if isinstance(model, str):
        model = get_model(model)
    elif not isinstance(model, dict) or not all(k in model for k in ("id", "api", "provider")):
        raise ConfigError("model must be a Model dict (see get_model) or a \"provider/model\" string")
    ctx = _context(context)
    _prepare(model, o)
    request = _build_request(model, ctx, o)
    return _run(model, ctx, o, request)


def complete(model: Model | str, context: Context | str, **options: Any) -> AssistantMessage:
    """Run stream() to the end and return the final AssistantMessage."""
    message: AssistantMessage = {}  # type: ignore[typeddict-item]  # never returned empty: a stream ends with done or error
    events = stream(model, context, **options)
    for event in events:
        if event["type"] == "done":
            message = event["message"]
        elif event["type"] == "error":
            message = event["error"]
    return message


# ==== CLI ======================================================================

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp"}


def _cli_parser() -> argparse.ArgumentParser:
    import argparse
    p = argparse.ArgumentParser(
        prog="pi-min", description="Stream an answer from any LLM provider (pi_min %s)." % __version__,
        epilog="Keys come from --api-key, the provider's env vars (see --list-providers), "
               "$PI_CODING_AGENT_DIR/auth.json or models.json. Try: pi-min --provider faux \"hi\"")
    p.add_argument("prompt", nargs="*", help="the prompt (joined with piped stdin)")
    p.add_argument("--provider", help="provider id or alias (default: $PI_PROVIDER, settings.json)")
    p.add_argument("-m", "--model", help="model id (default: the provider's default model)")
    p.add_argument("-s", "--system", help="system prompt")
    p.add_argument("--api-key", help="API key (default: the provider's env vars, auth.json)")
    p.add_argument("--base-url", help="override the provider's base URL")
    p.add_argument("--thinking", choices=THINKING_LEVELS, help="reasoning effort")
    p.add_argument("--max-tokens", type=int, metavar="N")
    p.add_argument("--temperature", type=float, metavar="T")
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="attach an image (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON event per line")
    p.add_argument("--no-stream", action="store_true", help="print the answer when it is complete")
    p.add_argument("-u", "--usage", action="store_true", help="print token usage and cost to stderr")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds without data before giving up")
    p.add_argument("--list-providers", action="store_true", help="list providers and exit")
    p.add_argument("--version", action="version", version=f"pi_min {__version__}")
    return p


def _cli_target(args: argparse.Namespace) -> tuple[str, str | None]:
    """(provider, model id or None) from flags, then env, then settings.json.
    A default model is only taken from the same place as the provider or a
    more specific one, so --provider groq never inherits another provider's model."""
    def from_settings() -> tuple[Any, Any]:  # read only when flags and env do not decide
        settings = _read_config("settings.json")
        return (settings.get("default_provider") or settings.get("defaultProvider"),
                settings.get("default_model") or settings.get("defaultModel"))
    sources = [lambda: (args.provider, args.model),
               lambda: (os.environ.get("PI_PROVIDER"), os.environ.get("PI_MODEL")), from_settings]
    model = None
    for source in sources:
        provider, model_here = source()
        model = model or model_here or None
        if provider:
            return provider, model
        prefix, slash, rest = (model or "").partition("/")
        if slash and (_canonical(prefix) or prefix.strip().lower() in list_providers()):  # models.json ones too
            return prefix, rest
    raise ConfigError("no provider: pass --provider (see --list-providers) or set PI_PROVIDER")


def _cli_image(path: str) -> ImageContent:
    import base64
    mime = _MIME.get(os.path.splitext(path)[1].lower())
    if mime is None:
        raise ConfigError(f"--image {path}: unsupported type (use {', '.join(sorted(_MIME))})")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"--image {path}: {e.strerror}") from None
    return {"type": "image", "data": base64.b64encode(data).decode("ascii"), "mimeType": mime}


def _cli_stdin() -> str:
    stdin = sys.stdin
    try:
        if stdin is None or stdin.isatty():
            return ""
        return stdin.read()
    except (OSError, ValueError, AttributeError):
        return ""


def _stdin_is_tty() -> bool:
    try:
        return bool(sys.stdin and sys.stdin.isatty())
    except (ValueError, AttributeError):
        return False


def _usage_line(msg: AssistantMessage) -> str:
    u = msg.get("usage") or _zero_usage()
    cache = ""
    if u["cacheRead"] or u["cacheWrite"]:
        cache = f" (+{u['cacheRead']} cache read, +{u['cacheWrite']} cache write)"
    return (f"usage: {u['input']} in{cache}, {u['output']} out, {u['totalTokens']} total; "
            f"cost ${u['cost']['total']:.6f}")


def _cli_turn(model: Model, ctx: Context, opts: dict[str, Any], args: argparse.Namespace) -> AssistantMessage:
    """Run one turn, printing as it streams; -> the final message."""
    out, err = sys.stdout, sys.stderr
    dim = err.isatty() if hasattr(err, "isatty") else False
    message: AssistantMessage = {}  # type: ignore[typeddict-item]  # set by the terminal event
    last = "\n"
    if args.no_stream and not args.json:
        message = complete(model, ctx, **opts)
        for block in message.get("content") or ():
            if block["type"] == "thinking":
                err.write((f"\x1b[2m{block['thinking']}\x1b[0m" if dim else block["thinking"]) + "\n")
            elif block["type"] == "text" and block["text"]:
                out.write(block["text"])
                last = block["text"][-1]
            elif block["type"] == "toolCall":
                err.write(f"[tool call] {block['name']}({json.dumps(block['arguments'])})\n")
    else:
        events: Generator[Mapping[str, Any], None, None] = stream(model, ctx, **opts)  # dicts told apart by kind
        try:
            for ev in events:
                kind = ev["type"]
                if args.json:
                    out.write(json.dumps({k: v for k, v in ev.items() if k != "partial"}) + "\n")
                    out.flush()
                elif kind == "text_delta":
                    out.write(ev["delta"])
                    out.flush()
                    last = ev["delta"][-1]
                elif kind == "thinking_delta":
                    err.write(f"\x1b[2m{ev['delta']}\x1b[0m" if dim else ev["delta"])
                    err.flush()
                elif kind == "thinking_end":
                    err.write("\n")
                elif kind == "toolcall_end":
                    call = ev["toolCall"]
                    err.write(f"[tool call] {call['name']}({json.dumps(call['arguments'])})\n")
                if kind == "done":
                    message = ev["message"]
                elif kind == "error":
                    message = ev["error"]
        finally:
            events.close()
    if last != "\n" and not args.json:
        out.write("\n")
    out.flush()
    if message.get("stopReason") in ("error", "aborted"):
        err.write("pi-min: error: " + " ".join(str(message.get("errorMessage")).split()) + "\n")
    if args.usage and message:
        err.write(_usage_line(message) + "\n")
    return message


def _print_providers() -> None:
    t = _table()
    aliases: dict[str, list[str]] = {}
    for alias, pid in t.ALIASES.items():
        aliases.setdefault(pid, []).append(alias)
    rows = [("PROVIDER", "FAMILY", "KEY ENV VARS", "DEFAULT MODEL")]
    for pid in list_providers():
        row = t.PROVIDERS.get(pid)
        if row is None:
            rows.append((pid, "(models.json)", "", ""))
            continue
        family = row["api"]
        if family not in _FAMILIES or not _auth_built(row.get("auth") or "bearer"):
            family += " (planned)"
        env = list(row.get("envKeys") or ())
        env_text = ", ".join(env[:2]) + (", ..." if len(env) > 2 else "")
        if not env:
            env_text = "(none: keyless)" if row.get("auth") == "none" else "(auth.json)"
        model = row.get("defaultModel") or ""
        if pid in aliases:
            model += "   aliases: " + ", ".join(sorted(aliases[pid]))
        rows.append((pid, family, env_text, model))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] + "\n")


def _chat(model: Model, opts: dict[str, Any], args: argparse.Namespace) -> int:
    """Interactive multi-turn chat on a terminal."""
    try:
        import readline  # noqa: F401  (line editing for input())
    except ImportError:
        pass
    ctx: Context = {"messages": []}
    if args.system:
        ctx["systemPrompt"] = args.system
    sys.stderr.write(f"pi-min chat with {model['provider']}/{model['id']}. Ctrl-D quits, Ctrl-C stops an answer.\n")
    while True:
        try:
            if sys.stdout.isatty():
                line = input("> ")
            else:  # keep a redirected stdout to the answers alone
                sys.stderr.write("> ")
                sys.stderr.flush()
                line = input()
        except EOFError:
            sys.stderr.write("\n")
            return 0
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            return 130
        if not line.strip():
            continue
        ctx["messages"].append({"role": "user", "content": line, "timestamp": _now_ms()})
        try:
            message = _cli_turn(model, ctx, opts, args)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            sys.stderr.write("[stopped]\n")
            continue
        ctx["messages"].append(message)


def main(argv: list[str] | None = None) -> int:
    """The pi-min command. Exit codes: 0 ok, 1 provider/network failure,
    2 usage or configuration error, 130 interrupted."""
    for stream_ in (sys.stdout, sys.stderr):  # a non-UTF-8 console must not crash on an emoji
        if hasattr(stream_, "reconfigure"):
            try:
                stream_.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass
    try:
        args = _cli_parser().parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.list_providers:
            _print_providers()
            return 0
        provider, model_id = _cli_target(args)
        model = get_model(provider, model_id)
        _built_provider(model)  # a family not built yet fails before stdin is read or a chat starts
        if args.thinking not in (None, "off") and not model["reasoning"]:
            sys.stderr.write(f"pi-min: note: {model['provider']}/{model['id']} is not listed as a reasoning "
                             "model, so --thinking is ignored (set \"reasoning\": true for it in models.json)\n")
        opts = {"api_key": args.api_key, "base_url": args.base_url, "reasoning": args.thinking,
                "max_tokens": args.max_tokens, "temperature": args.temperature}
        if args.timeout is not None:
            opts["timeout"] = args.timeout
        opts = {k: v for k, v in opts.items() if v is not None}
        prompt = " ".join(args.prompt)
        piped = _cli_stdin()
        if piped.strip():
            prompt = piped.rstrip("\n") + ("\n" + prompt if prompt else "")
        if not prompt.strip() and not args.image:
            if _stdin_is_tty() and not args.json:
                stream(model, "", **opts).close()  # check key and options before the chat starts
                return _chat(model, opts, args)
            raise ConfigError("no prompt: give one as arguments or on stdin")
        content = [{"type": "text", "text": prompt}] + [_cli_image(p) for p in args.image] if args.image else prompt
        if args.image and "image" not in model["input"]:  # an explicit --image wins over the table
            sys.stderr.write(f"pi-min: note: {model['provider']}/{model['id']} is not listed as accepting "
                             "images; sending them anyway\n")
            model["input"] = list(model["input"]) + ["image"]
        ctx: Context = {"messages": [{"role": "user", "content": content, "timestamp": _now_ms()}]}  # type: ignore[typeddict-item]  # text, then images
        if args.system:
            ctx["systemPrompt"] = args.system
        message = _cli_turn(model, ctx, opts, args)
        if message.get("stopReason") == "aborted":
            return 130
        return 1 if message.get("stopReason") == "error" else 0
    except ConfigError as e:
        sys.stderr.write(f"pi-min: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        try:  # stdout closed early (| head): stay quiet at exit too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except Exception as e:  # a bug: one line, never a traceback
        sys.stderr.write(f"pi-min: internal error: {type(e).__name__}: {_redact(str(e))}\n")
        return 1


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
