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
    from typing import Callable, Generator, Iterator

__version__ = "0.1.0"
__all__ = ["get_model", "stream", "complete", "list_providers", "PiError", "ConfigError"]

THINKING_LEVELS = ("off", "minimal", "low", "medium", "high", "xhigh")
CACHE_RETENTIONS = ("none", "short", "long")
ERROR_KINDS = ("auth", "rate_limit", "context_overflow", "invalid_request", "not_found",
               "server", "network", "timeout", "protocol", "aborted")
MAX_FRAME = 16 * 1024 * 1024  # longest SSE line / event we accept
MAX_RETRY_AFTER = 60.0  # a server asking for a longer wait fails at once


def _now_ms() -> int:
    return int(time.time() * 1000)


# ==== errors ===================================================================

class PiError(Exception):
    """Every failure pi_min reports. ``kind`` is one of ERROR_KINDS (or "config"),
    ``status`` the HTTP status when there was one."""

    def __init__(self, message: str, kind: str = "protocol", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after: float | None = None  # seconds the server asked us to wait
        self.no_retry = False                  # never worth retrying (quota, in-band errors)


class ConfigError(PiError):
    """Something the user must fix: unknown provider, missing key, bad option."""

    def __init__(self, message: str):
        super().__init__(message, "config")


_SECRET_PATTERNS = None


def _redact(text: str, secrets=()) -> str:
    """Replace known secrets, and anything shaped like a credential, by ***."""
    global _SECRET_PATTERNS
    for s in secrets:
        if s and len(s) >= 6 and s in text:
            text = text.replace(s, "***")
    if _SECRET_PATTERNS is None:
        import re
        _SECRET_PATTERNS = [
            (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"), r"\1***"),
            (re.compile(r"\b(?:sk|pk|rk|gsk|xai|csk|nvapi|hf|sk-ant-api\d\d|sk-ant-oat\d\d)[-_]"
                        r"[A-Za-z0-9_-]{16,}"), "***"),
            (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), "***"),
            (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "***"),
            (re.compile(r"(?i)([?&](?:key|api_key|apikey|token|access_token|sig)=)[^&\s\"']+"), r"\1***"),
        ]
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


_OVERFLOW_RE = None


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


def _classify(status: int | None, message: str = "", code=None) -> str:
    """Map an HTTP status / provider error code and message to an errorKind."""
    if _is_overflow(message) or (isinstance(code, str) and _is_overflow(code)):
        return "context_overflow"
    if isinstance(code, str):
        c = code.lower()
        if "rate_limit" in c or "quota" in c or "resource_exhausted" in c:
            return "rate_limit"
        if "auth" in c or "api_key" in c or "permission" in c:
            return "auth"
        if "overloaded" in c or "server" in c or "unavailable" in c or c == "api_error":
            return "server"
        if "not_found" in c:
            return "not_found"
        if "invalid" in c:
            return "invalid_request"
    if status is None:
        return "server"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 408:
        return "timeout"
    if status in (402, 429):
        return "rate_limit"
    if status >= 500:
        return "server"
    return "invalid_request"


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

    def __init__(self):
        self._parts: list = []      # pieces of the line not yet terminated
        self._size = 0
        self._data: list = []       # data lines of the event being built
        self._data_size = 0
        self._event = ""
        self._cr = False            # previous chunk ended in CR: a leading LF is part of it
        self._started = False
        self.last_event_id = ""

    def feed(self, chunk: bytes) -> list:
        if self._cr and chunk:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            if chunk:
                self._parts.append(chunk)
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

    def close(self) -> list:
        """End of stream: take a last unterminated line, then act as if the
        missing blank line came (dispatching a pending event)."""
        raw = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return self._lines([raw, b""] if raw else [b""])

    def _lines(self, lines: list) -> list:
        out: list = []
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
        self._data_size += len(value)
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


# ==== transport ================================================================
# One function opens connections (_connect); _request sends one HTTP/1.1 request
# and returns a _Response whose body is read with an idle timeout and an abort
# check. Idle keep-alive sockets are pooled per (scheme, host, port, proxy).

_POOL: dict = {}
_POOL_MAX = 8
_POOL_IDLE = 50.0  # seconds an idle socket is trusted to still be open
_TLS: dict = {}  # CA file (or None: the system store) -> ssl.SSLContext
_CERTIFI: list = []  # [path or None] once looked up
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")


def _is_loopback(host: str) -> bool:
    return host in _LOOPBACK or host.startswith("127.") or host.endswith(".localhost")


def _tls_context():
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
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        _TLS[cafile] = ctx
    return ctx


def _split_url(url: str):
    """-> (scheme, host, port, target) for an http(s) URL."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise ConfigError(f"not an http(s) URL: {url!r}")
    authority, slash, path = rest.partition("/")
    target = slash + path if slash else "/"
    if "?" in authority:
        authority, _, query = authority.partition("?")
        target = "/?" + query
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        host, _, port_txt = authority[1:].partition("]")
        port_txt = port_txt.lstrip(":")
    else:
        host, _, port_txt = authority.partition(":")
    if not host:
        raise ConfigError(f"URL has no host: {url!r}")
    try:
        port = int(port_txt) if port_txt else (443 if scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"bad port in URL: {url!r}") from None
    return scheme, host.lower(), port, target


def _host_of(url: str) -> str:
    try:
        return _split_url(url)[1]
    except PiError:
        return ""


def _proxy_for(scheme: str, host: str):
    """The proxy URL from the environment for this host, or None (curl's rules)."""
    env = os.environ
    if _is_loopback(host):
        return None
    names = ("https_proxy", "HTTPS_PROXY") if scheme == "https" else ("http_proxy", "HTTP_PROXY")
    proxy = None
    for name in names + ("all_proxy", "ALL_PROXY"):
        if env.get(name):
            proxy = env[name]
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
    return proxy


def _proxy_auth(proxy: str) -> str:
    authority = proxy.partition("://")[2].partition("/")[0]
    if "@" not in authority:
        return ""
    import base64
    from urllib.parse import unquote
    cred = unquote(authority.rpartition("@")[0])
    return "Proxy-Authorization: Basic " + base64.b64encode(cred.encode()).decode() + "\r\n"


def _read_head(sock, buf: bytes, deadline: float, signal):
    """Read a response head; -> (status, reason, headers, version, rest)."""
    while True:
        end = buf.find(b"\r\n\r\n")
        sep = 4
        if end < 0:
            end = buf.find(b"\n\n")
            sep = 2
        if end >= 0:
            break
        if len(buf) > 65536:
            raise PiError("response headers larger than 64 KiB", "protocol")
        more = _recv(sock, deadline, signal)
        if not more:
            raise PiError("connection closed before the response headers", "network")
        buf += more
    head, rest = buf[:end], buf[end + sep:]
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise PiError(f"not an HTTP response: {lines[0][:80]!r}", "protocol")
    try:
        status = int(parts[1])
    except ValueError:
        raise PiError(f"bad HTTP status line: {lines[0][:80]!r}", "protocol") from None
    headers: dict = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    return status, parts[2] if len(parts) > 2 else "", headers, parts[0], rest


def _recv(sock, deadline: float, signal) -> bytes:
    """One recv with the idle deadline and the abort signal checked while waiting."""
    import socket
    while True:
        if signal is not None and signal.is_set():
            raise PiError("Request was aborted", "aborted")
        try:
            return sock.recv(65536)
        except socket.timeout:
            if time.monotonic() >= deadline - 0.005:
                raise PiError("no data from the server within the timeout", "timeout") from None
        except OSError as e:
            raise PiError(f"connection error: {e}", "network") from None


def _open_socket(host: str, port: int, timeout: float, signal, where: str):
    """TCP connect that gives up after ``timeout`` and notices the abort signal."""
    import errno
    import select
    import socket
    deadline = time.monotonic() + timeout
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise PiError(f"cannot resolve {host}: {e}", "network") from None
    error = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            while err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, 10035):
                if signal is not None and signal.is_set():
                    raise PiError("Request was aborted", "aborted")
                left = deadline - time.monotonic()
                if left <= 0:
                    err = errno.ETIMEDOUT
                    break
                _, writable, _ = select.select([], [sock], [], min(left, 0.05) if signal is not None else left)
                if writable:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            sock.settimeout(timeout)
            return sock
        except OSError as e:
            sock.close()
            error = e
        except BaseException:
            sock.close()
            raise
    raise PiError(f"cannot connect to {where}: {error}", "network")


def _connect(scheme: str, host: str, port: int, proxy, timeout: float, signal):
    """The one function that opens connections: proxy tunnel, TLS, TCP_NODELAY."""
    import socket
    target_host, target_port = host, port
    if proxy:
        _, target_host, target_port, _ = _split_url(proxy)
    where = f"proxy {target_host}:{target_port}" if proxy else f"{host}:{port}"
    sock = _open_socket(target_host, target_port, min(timeout, 30.0), signal, where)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if proxy and scheme == "https":
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            sock.sendall((f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n"
                          + _proxy_auth(proxy) + "\r\n").encode("latin-1"))
            status, reason, _, _, _ = _read_head(sock, b"", time.monotonic() + timeout, signal)
            if status != 200:
                raise PiError(f"proxy refused the tunnel to {hostport}: HTTP {status} {reason}", "network", status)
        if scheme == "https":
            import ssl
            try:
                sock = _tls_context().wrap_socket(sock, server_hostname=host)
            except ssl.SSLCertVerificationError as e:
                raise PiError(f"TLS certificate of {host} not trusted: {e.verify_message}", "network") from None
            except (ssl.SSLError, OSError) as e:
                raise PiError(f"TLS handshake with {host} failed: {e}", "network") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _pooled(key):
    idle = _POOL.get(key)
    now = time.monotonic()
    while idle:
        try:
            sock, since = idle.pop()
        except IndexError:
            break
        if now - since < _POOL_IDLE and _still_open(sock):
            return sock
        sock.close()
    return None


def _still_open(sock) -> bool:
    """An idle keep-alive socket is usable when nothing is readable on it."""
    import select
    try:
        if getattr(sock, "pending", None) and sock.pending():
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable
    except (OSError, ValueError):
        return False


def _request(method: str, url: str, headers: dict, body: bytes, timeout: float, signal) -> "_Response":
    """Send one request; -> _Response after its head arrived. Raises PiError."""
    import socket
    scheme, host, port, target = _split_url(url)
    proxy = _proxy_for(scheme, host)
    key = (scheme, host, port, proxy)
    hostport = host if port == (443 if scheme == "https" else 80) else f"{host}:{port}"
    if ":" in host:
        hostport = f"[{host}]" + hostport[len(host):]
    if proxy and scheme == "http":
        target = f"http://{hostport}{target}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {hostport}", "Accept-Encoding: identity"]
    for name, value in headers.items():
        value = str(value)
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ConfigError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n"
    if proxy and scheme == "http":
        head += _proxy_auth(proxy)
    try:
        data = (head + "\r\n").encode("latin-1") + body
    except UnicodeEncodeError:
        raise ConfigError("header values must be ASCII/latin-1 text") from None
    poll = min(0.05, timeout) if signal is not None else timeout
    for attempt in (0, 1):
        sock = _pooled(key) if attempt == 0 else None
        reused = sock is not None
        if sock is None:
            sock = _connect(scheme, host, port, proxy, timeout, signal)
        try:
            sock.settimeout(timeout)
            sock.sendall(data)
            sock.settimeout(poll)
            status, reason, rheaders, version, rest = _read_head(
                sock, b"", time.monotonic() + timeout, signal)
            while 100 <= status < 200:  # 100 Continue and friends
                status, reason, rheaders, version, rest = _read_head(
                    sock, rest, time.monotonic() + timeout, signal)
        except (PiError, OSError, socket.timeout) as e:
            sock.close()
            # a pooled socket the server already dropped: try once on a fresh one
            if reused and not (isinstance(e, PiError) and e.kind in ("aborted", "timeout")):
                continue
            if isinstance(e, PiError):
                raise
            if isinstance(e, socket.timeout):
                raise PiError(f"{host} did not answer within {timeout:g} s", "timeout") from None
            raise PiError(f"connection to {host} failed: {e}", "network") from None
        return _Response(sock, key, status, reason, rheaders, version, rest, timeout, signal)
    raise PiError(f"connection to {host} failed", "network")  # pragma: no cover


class _Response:
    """An HTTP/1.1 response whose body is read lazily, piece by piece."""

    __slots__ = ("status", "reason", "headers", "_sock", "_key", "_buf", "_timeout",
                 "_signal", "_mode", "_left", "_done", "_reusable", "_body")

    def __init__(self, sock, key, status, reason, headers, version, rest, timeout, signal):
        self.status, self.reason, self.headers = status, reason, headers
        self._sock, self._key, self._buf = sock, key, rest
        self._timeout, self._signal = timeout, signal
        self._done = False
        self._body = None
        te = headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        conn = headers.get("connection", "").lower()
        self._reusable = version == "HTTP/1.1" and "close" not in conn
        if status in (204, 304):
            self._mode, self._left = "length", 0
        elif "chunked" in te:
            self._mode, self._left = "chunked", 0
        elif length is not None and length.strip().isdigit():
            self._mode, self._left = "length", int(length)
        else:
            self._mode, self._left = "close", 0
            self._reusable = False

    def _recv(self) -> bytes:
        return _recv(self._sock, time.monotonic() + self._timeout, self._signal)

    def iter_body(self) -> "Iterator[bytes]":
        """The body bytes as they arrive (chunked framing removed); calling it
        again continues where the last iteration stopped."""
        if self._body is None:
            body = self._iter_body()
            encoding = self.headers.get("content-encoding", "identity").strip().lower()
            if encoding in ("gzip", "x-gzip", "deflate"):  # sent despite Accept-Encoding: identity
                body = _inflate(body)
            elif encoding not in ("", "identity"):
                raise PiError(f"unsupported Content-Encoding {encoding!r}", "protocol")
            self._body = body
        return self._body

    def _iter_body(self):
        if self._mode == "chunked":
            yield from self._iter_chunked()
        elif self._mode == "length":
            left = self._left
            buf, self._buf = self._buf, b""
            if buf:
                buf = buf[:left]
                left -= len(buf)
                yield buf
            while left > 0:
                more = self._recv()
                if not more:
                    raise PiError("connection closed before the end of the response body", "network")
                if len(more) > left:
                    more = more[:left]
                left -= len(more)
                yield more
        else:
            buf, self._buf = self._buf, b""
            if buf:
                yield buf
            while True:
                more = self._recv()
                if not more:
                    break
                yield more
        self._done = True

    def _iter_chunked(self):
        buf, pos = self._buf, 0
        self._buf = b""
        recv = self._recv
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if len(buf) - pos > 4096:
                    raise PiError("bad chunked encoding in response", "protocol")
                more = recv()
                if not more:
                    raise PiError("connection closed before the end of the response body", "network")
                buf = buf[pos:] + more
                pos = 0
                continue
            size_txt = buf[pos:nl].split(b";", 1)[0].strip()
            pos = nl + 1
            if not size_txt:  # the CRLF that ends a chunk's data
                continue
            try:
                size = int(size_txt, 16)
            except ValueError:
                raise PiError("bad chunked encoding in response", "protocol") from None
            if size == 0:
                self._skip_trailers(buf[pos:])
                return
            end = pos + size
            if end <= len(buf):
                yield buf[pos:end]
                pos = end
                continue
            if pos < len(buf):
                yield buf[pos:]
            left = end - len(buf)
            buf, pos = b"", 0
            while left:
                more = recv()
                if not more:
                    raise PiError("connection closed before the end of the response body", "network")
                if len(more) <= left:
                    left -= len(more)
                    yield more
                else:
                    yield more[:left]
                    buf, pos, left = more, left, 0

    def _skip_trailers(self, buf: bytes) -> None:
        while True:
            if buf.startswith(b"\r\n") or buf.startswith(b"\n") or b"\n\r\n" in buf or b"\n\n" in buf:
                return
            if len(buf) > 65536:
                raise PiError("bad chunked trailers in response", "protocol")
            more = self._recv()
            if not more:
                self._reusable = False
                return
            buf += more

    def read_all(self, limit: int = MAX_FRAME) -> bytes:
        parts, size = [], 0
        for piece in self.iter_body():
            parts.append(piece)
            size += len(piece)
            if size > limit:
                self.close()
                raise PiError("response body larger than 16 MiB", "protocol")
        return b"".join(parts)

    def release(self) -> None:
        """Done with the body: pool the socket when the response ended cleanly."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._done and self._reusable and not self._buf:
            idle = _POOL.setdefault(self._key, [])
            if len(idle) < _POOL_MAX:
                idle.append((sock, time.monotonic()))
                return
        sock.close()

    def drain(self, max_bytes: int = 65536) -> None:
        """Read what is left of a body we no longer need, then release."""
        if not self._done and self._sock is not None:
            self._timeout = min(self._timeout, 0.5)
            self._signal = None
            try:
                self._sock.settimeout(self._timeout)
                size = 0
                for piece in self.iter_body():
                    size += len(piece)
                    if size > max_bytes:
                        break
            except PiError:
                pass
        self.release()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _inflate(pieces):
    import zlib
    d = zlib.decompressobj(47)  # gzip or zlib header, detected
    try:
        for piece in pieces:
            data = d.decompress(piece)
            if data:
                yield data
        data = d.flush()
    except zlib.error as e:
        raise PiError(f"bad compressed response body: {e}", "protocol") from None
    if data:
        yield data


def _parse_retry_after(headers: dict):
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

    def __init__(self):
        self.text = ""
        self.stack: list = []   # open "{" / "["
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

    def value(self):
        """Best-effort parse of the text so far: a dict, or None if not closable."""
        t = self.text
        self._parsed_len = len(t)
        if not self.stack:
            if not t.strip():
                return {}
            candidates: tuple = (t,)
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
            except ValueError:
                continue
            return v if isinstance(v, dict) else None
        return None

    def due(self) -> bool:
        """Re-parse on every piece while small, then when the text grew by 1/8,
        so following a huge argument stays linear overall."""
        n = len(self.text)
        return n < 8192 or n - self._parsed_len >= n >> 3


def parse_partial_json(text: str) -> dict:
    """Best-effort parse of a (possibly truncated) JSON object; ``{}`` at worst."""
    p = _JSONPrefix()
    p.feed(text)
    v = p.value()
    return v if v is not None else {}


# ==== message builder ==========================================================

def _zero_usage() -> dict:
    return {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "totalTokens": 0,
            "cost": {"input": 0.0, "output": 0.0, "cacheRead": 0.0, "cacheWrite": 0.0, "total": 0.0}}


_DELTA = {"text": "text_delta", "thinking": "thinking_delta"}


class _Builder:
    """Builds the one AssistantMessage of a stream and the events about it.

    Families call text()/thinking()/tool_start()/tool_delta(); the events pile up
    in ``out`` and the runner yields and clears them after each network read.
    """

    __slots__ = ("msg", "content", "out", "model", "cur", "cur_type", "tools", "open_tools")

    def __init__(self, model: dict):
        self.model = model
        self.content: list = []
        self.msg = {"role": "assistant", "content": self.content, "api": model["api"],
                    "provider": model["provider"], "model": model["id"], "usage": _zero_usage(),
                    "stopReason": "stop", "timestamp": _now_ms()}
        self.out: list = []
        self.cur = -1           # index of the open text/thinking block, -1 if none
        self.cur_type = ""
        self.tools: dict = {}   # family key -> [content index, _JSONPrefix]
        self.open_tools: list = []

    # -- text and thinking ------------------------------------------------------
    def _open(self, kind: str, signature=None) -> dict:
        self.close_current()
        block = {"type": kind, kind: ""}
        if signature is not None:
            block["thinkingSignature" if kind == "thinking" else "textSignature"] = signature
        self.content.append(block)
        self.cur = len(self.content) - 1
        self.cur_type = kind
        self.out.append({"type": kind + "_start", "contentIndex": self.cur, "partial": self.msg})
        return block

    def text(self, delta: str, signature=None) -> None:
        self._grow("text", delta, signature)

    def thinking(self, delta: str, signature=None) -> None:
        self._grow("thinking", delta, signature)

    def _grow(self, kind: str, delta: str, signature) -> None:
        """Append to the open block of this kind (the block's field is named like
        the kind), opening one first when the kind changes."""
        if not delta:
            return
        block = self.content[self.cur] if self.cur_type == kind else self._open(kind, signature)
        t = block[kind]
        block[kind] = None      # drop the dict's reference so += grows in place
        t += delta
        block[kind] = t
        self.out.append({"type": _DELTA[kind], "contentIndex": self.cur, "delta": delta, "partial": self.msg})

    def close_current(self) -> None:
        if self.cur_type:
            block = self.content[self.cur]
            kind = self.cur_type
            self.out.append({"type": kind + "_end", "contentIndex": self.cur, "content": block[kind],
                             "partial": self.msg})
            self.cur, self.cur_type = -1, ""

    # -- tool calls -------------------------------------------------------------
    def tool_start(self, key, call_id: str | None, name: str | None) -> dict:
        self.close_current()
        block = {"type": "toolCall", "id": call_id or _new_call_id(), "name": name or "", "arguments": {}}
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

    def tool_block(self, key) -> dict:
        return self.content[self.tools[key][0]]

    def tool_delta(self, key, fragment: str) -> None:
        if not fragment:
            return
        index, prefix = self.tools[key]
        prefix.feed(fragment)
        if prefix.due():
            value = prefix.value()
            if value is not None:
                self.content[index]["arguments"] = value
        self.out.append({"type": "toolcall_delta", "contentIndex": index, "delta": fragment, "partial": self.msg})

    def tool_end(self, key, cut: bool = False) -> None:
        """cut: the provider ended the turn for length, so unfinished arguments keep
        their best-effort parse instead of failing the stream."""
        index, prefix = self.tools[key]
        block = self.content[index]
        raw = prefix.text
        if raw.strip():
            try:
                args = json.loads(raw)
            except ValueError:
                args = None
            if not isinstance(args, dict):
                value = prefix.value()
                if value is not None:
                    block["arguments"] = value
                if not cut:
                    raise PiError(f"arguments of tool call {block['name'] or block['id']!r} are not a complete "
                                  f"JSON object (the stream was cut?): {raw[:200]!r}", "protocol")
            else:
                block["arguments"] = args
        self.open_tools.remove(key)
        self.out.append({"type": "toolcall_end", "contentIndex": index, "toolCall": block, "partial": self.msg})

    # -- usage and the end ------------------------------------------------------
    def set_usage(self, inp: int, out: int, cache_read: int = 0, cache_write: int = 0) -> None:
        u = self.msg["usage"]
        u["input"], u["output"], u["cacheRead"], u["cacheWrite"] = inp, out, cache_read, cache_write
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

    def done(self, reason: str) -> None:
        """Close every open block and emit done. reason: stop | length | toolUse.
        A turn cut for length stays "length" even with tool calls: its last call
        may be unfinished and more may have been due, so none is to be run."""
        self.close_current()
        for key in list(self.open_tools):
            self.tool_end(key, reason == "length")
        if reason != "length" and any(b["type"] == "toolCall" for b in self.content):
            reason = "toolUse"
        elif reason == "toolUse":
            reason = "stop"
        self.msg["stopReason"] = reason
        self.out.append({"type": "done", "reason": reason, "message": self.msg})

    def fail(self, kind: str, message: str, status: int | None = None) -> dict:
        reason = "aborted" if kind == "aborted" else "error"
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

def _same_model(msg: dict, model: dict) -> bool:
    return (msg.get("provider") == model["provider"] and msg.get("api") == model["api"]
            and msg.get("model") == model["id"])


def transform_messages(messages: list, model: dict, normalize_id=None) -> list:
    """Make a conversation from any provider acceptable to ``model`` (pi-ai's
    transformMessages): thinking of other models becomes text, signatures go back
    only to the model that made them, tool-call ids are rewritten by
    ``normalize_id``, errored/aborted assistant turns are dropped and tool calls
    left without a result get a synthetic error result."""
    id_map: dict = {}  # original tool-call id -> the id sent
    taken: dict = {}   # id sent -> original id
    kept: list = []
    for m in messages:
        role = m.get("role")
        if role == "assistant":
            if m.get("stopReason") in ("error", "aborted"):
                continue
            same = _same_model(m, model)
            blocks = []
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
                    if normalize_id is not None:
                        old_id = b.get("id") or ""
                        new_id = id_map.get(old_id) or normalize_id(old_id)
                        if taken.get(new_id, old_id) != old_id:  # two ids collapsed into one
                            import hashlib
                            tag = hashlib.sha256(old_id.encode()).hexdigest()[:6]
                            new_id = normalize_id(new_id[:max(1, len(new_id) - 7)] + "_" + tag)
                        taken[new_id] = old_id
                        if new_id != old_id:
                            id_map[old_id] = new_id
                            b = dict(b, id=new_id)
                    blocks.append(b)
            kept.append(dict(m, content=blocks))
        elif role == "toolResult":
            old = m.get("toolCallId")
            kept.append(dict(m, toolCallId=id_map[old]) if old in id_map else m)
        else:
            kept.append(m)
    result: list = []
    pending: dict = {}  # tool-call id -> name, calls still waiting for a result
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


def _user_parts(content) -> list:
    """A user/tool content (str or list of blocks) -> list of blocks."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or () if isinstance(b, dict)]


def _text_of(blocks: list) -> str:
    return "\n".join(b.get("text") or "" for b in blocks if b.get("type") == "text")


def _json_body(body) -> bytes:
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
# A family is a request builder, a stream translator and one row in _FAMILIES.
# Translators get parsed frames and drive the _Builder; they raise PiError.

def _join_url(base: str, suffix: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/" + suffix) else base + "/" + suffix


# ---- openai-completions -------------------------------------------------------

_OC_COMPAT = {
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

_OC_FINISH = {
    "stop": "stop", "end": "stop", "end_turn": "stop", "eos": "stop", "stop_sequence": "stop",
    "length": "length", "max_tokens": "length",
    "tool_calls": "toolUse", "function_call": "toolUse", "tool_use": "toolUse",
}


def _oc_compat(model: dict, o: "_Options | None" = None) -> dict:
    """Defaults, then the compat of the table row serving the request's host (so
    a custom provider pointed at a known service inherits its quirks), then the
    model's own compat (from the table, models.json or overrides)."""
    compat = dict(_OC_COMPAT)
    row = o.host_row if o is not None else None
    if row and row.get("compat") and row.get("api") == "openai-completions":
        compat.update(row["compat"])
    compat.update(model.get("compat") or {})
    return compat


def _oc_normalizer(compat: dict):
    if compat.get("toolIdFormat") == "mistral":
        import hashlib

        def mistral(call_id: str) -> str:
            alnum = "".join(c for c in call_id if c.isascii() and c.isalnum())
            if len(alnum) == 9:
                return alnum
            digest = hashlib.sha256(call_id.encode()).hexdigest()
            return digest[:9]
        return mistral
    return lambda call_id: _sanitize_id(call_id.split("|", 1)[0], 40)


def _json_or_none(text):
    try:
        return json.loads(text) if isinstance(text, str) and text[:1] == "{" else None
    except ValueError:
        return None


def _image_url(block: dict) -> dict:
    return {"type": "image_url",
            "image_url": {"url": f"data:{block.get('mimeType') or 'image/png'};base64,{block.get('data') or ''}"}}


def _oc_messages(model: dict, ctx: dict, compat: dict) -> list:
    out: list = []
    system = ctx.get("systemPrompt")
    if system:
        role = "developer" if model.get("reasoning") and compat["supportsDeveloperRole"] else "system"
        out.append({"role": role, "content": system})
    images_ok = "image" in (model.get("input") or ())
    bridge = {"role": "assistant", "content": "I have processed the tool results."}
    pending_images: list = []  # images of a run of tool results, sent after it as a user message
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
            msg: dict = {"role": "assistant", "content": None}
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


def _supports_xhigh(model_id: str) -> bool:
    return any(s in model_id for s in ("gpt-5.2", "gpt-5.3", "gpt-5.4", "gpt-5.5", "opus-4-6", "opus-4.6"))


def _oc_reasoning(body: dict, model: dict, compat: dict, level: str | None) -> None:
    # Only when the caller asked (a level, "off" included: it switches thinking off
    # where a dialect can) and the model is known to reason: servers reject these
    # fields for other models, and unasked they would override the model's default.
    if level is None or not model.get("reasoning"):
        return
    fmt = compat.get("thinkingFormat") or "openai"
    on = level != "off"
    effort = level if level != "xhigh" or _supports_xhigh(model["id"]) else "high"
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


def _oc_fixed_temperature(model: dict, url: str) -> bool:
    """OpenAI's own reasoning models (o1, o3, o4-mini, the gpt-5 family) reject any
    temperature but the default, so none is sent to them."""
    return (bool(model.get("reasoning")) and "api.openai.com" in url
            and model["id"].startswith(("o1", "o3", "o4", "gpt-5")))


def _oc_tool_choice(choice):
    if choice is None or isinstance(choice, dict):
        return choice
    if choice in ("auto", "none", "required"):
        return choice
    if choice == "any":
        return "required"
    return {"type": "function", "function": {"name": choice}}


def _oc_build(model: dict, ctx: dict, o: "_Options"):
    compat = o.compat = _oc_compat(model, o)
    body: dict = {"model": model["id"], "messages": _oc_messages(model, ctx, compat), "stream": True}
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
            fn = {"name": t.get("name"), "description": t.get("description") or "",
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
    if prefix and model["id"].startswith(prefix) and o.cache_retention != "none":
        _mark_cache(body["messages"])
    if compat.get("openRouterRouting"):
        body["provider"] = compat["openRouterRouting"]
    routing = compat.get("vercelGatewayRouting")
    if isinstance(routing, dict) and (routing.get("only") or routing.get("order")):
        body["providerOptions"] = {"gateway": {k: routing[k] for k in ("only", "order") if routing.get(k)}}
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    return _join_url(o.url, "chat/completions"), headers, body


def _mark_cache(messages: list) -> None:
    """Anthropic models behind an OpenAI-style gateway cache up to a marked block:
    mark the last text of the last user or assistant message."""
    for msg in reversed(messages):
        if msg["role"] not in ("user", "assistant"):
            continue
        content = msg.get("content")
        if isinstance(content, str) and content:
            msg["content"] = [{"type": "text", "text": content, "cache_control": {"type": "ephemeral"}}]
            return
        if isinstance(content, list):
            for part in reversed(content):
                if part.get("type") == "text":
                    part["cache_control"] = {"type": "ephemeral"}
                    return


def _oc_relax(body: dict, error: PiError):
    """A 400/422 that names stream_options (servers that reject the field):
    the same body without it, else None."""
    if "stream_options" in body and error.status in (400, 422) and "stream_options" in str(error):
        return {k: v for k, v in body.items() if k != "stream_options"}
    return None


def _count(value) -> int:
    """A token count from a usage field: ints, floats or numeric strings; 0 otherwise."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _oc_usage(b: _Builder, usage: dict) -> None:
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


def _error_message(err) -> str:
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


def _in_band_error(err) -> PiError:
    code = err.get("code") if isinstance(err, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    message = _error_message(err)
    status = code if isinstance(code, int) and 400 <= code < 600 else None
    kind = _classify(status, message, code if isinstance(code, str) else etype) if (status or code or etype) \
        else ("context_overflow" if _is_overflow(message) else "server")
    e = PiError(message, kind, status)
    e.no_retry = True  # retries follow the HTTP status; this one came with a 200
    return e


def _oc_name(have: str, piece: str) -> str:
    """A tool name comes whole once (OpenAI), in pieces to concatenate (as the SDK
    does), or whole again with every fragment (MiniMax). A piece that starts with
    the name so far repeats or extends it and replaces it; any other is appended.
    (A name cut into two equal halves, "ab" + "ab", would read as a resend.)"""
    return piece if piece.startswith(have) else have + piece


class _OCTranslator:
    """openai-completions chunks -> builder calls."""

    __slots__ = ("b", "finish", "ended", "slots", "signatures", "refusal", "rid")

    def __init__(self, b: _Builder, o: "_Options"):
        self.b = b
        self.finish: str | None = None
        self.ended = False
        self.slots: dict = {}   # tool_calls[].index -> [builder key, the call's id from the wire or None]
        self.signatures: dict = {}  # tool-call id -> encrypted reasoning detail (JSON)
        self.refusal = ""       # delta.refusal pieces: never text, the message of the error at the end
        self.rid = ""           # the response id of the chunks, for the id of a legacy function_call

    def event(self, kind: str, data: str) -> bool:
        if data[:6] == "[DONE]":
            self.ended = True
            return True
        try:
            chunk = json.loads(data)
        except ValueError:
            if kind == "error":
                raise PiError(data[:2000] or "the server sent an error event", "server") from None
            raise PiError(f"invalid JSON in the stream: {data[:200]!r}", "protocol") from None
        if isinstance(chunk, dict):
            if kind == "error" and not chunk.get("error"):  # "event: error" with a bare error object
                raise _in_band_error(chunk)
            self.chunk(chunk)
        return False

    def chunk(self, chunk: dict) -> None:
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
            finish = choice.get("finish_reason")
            if finish:
                if finish == "error":
                    raise PiError("the provider ended the stream with finish_reason 'error'", "server")
                self.finish = str(finish)
        if isinstance(usage, dict):
            _oc_usage(self.b, usage)

    def delta(self, delta: dict) -> None:
        b = self.b
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

    def details(self, details: list, have_text: bool) -> None:
        """OpenRouter-style reasoning_details: readable ones become thinking when
        no plain reasoning field carried it; encrypted ones are the signature of
        the tool call with the same id, echoed back with it next turn."""
        for d in details:
            if not isinstance(d, dict):
                continue
            kind = d.get("type")
            if kind == "reasoning.encrypted" and d.get("id") and d.get("data"):
                self.signatures[d["id"]] = json.dumps(d)
                self.sign_tools()
            elif not have_text and kind in ("reasoning.text", "reasoning.summary"):
                text = d.get("text") if kind == "reasoning.text" else d.get("summary")
                if isinstance(text, str):
                    self.b.thinking(text, "reasoning_details")

    def sign_tools(self) -> None:
        for block in self.b.content:
            if block["type"] == "toolCall" and block["id"] in self.signatures:
                block["thoughtSignature"] = self.signatures[block["id"]]

    def tool(self, index, call: dict) -> None:
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
                    block["id"] = slot[1] = call_id
                    if self.signatures:
                        self.sign_tools()
                if name:
                    block["name"] = _oc_name(block["name"], name)
                b.tool_delta(slot[0], args)
                return
        b.end_finished_tools()
        key = len(b.tools)
        block = b.tool_start(key, call_id, name)
        self.slots[index] = [key, call_id]
        if self.signatures:
            self.sign_tools()
        extra = call.get("extra_content")
        if isinstance(extra, dict) and extra:  # Gemini's thought signature on its OpenAI endpoint
            block["thoughtSignature"] = json.dumps({"extra_content": extra})
        b.tool_delta(key, args)

    def whole(self, obj) -> None:
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

    def end(self, eof: bool):
        """-> the done reason, or raise when the stream did not complete."""
        # finish_reason is the provider's word that the turn is over; [DONE] after it
        # only closes the stream, and the SDK (and CONTRACT §6) do not wait for it.
        if not self.ended and self.finish is None:
            raise PiError("the stream ended before a finish_reason or data: [DONE] (cut off?)", "protocol")
        if self.refusal:  # OpenAI ends a refusal with finish_reason "stop"; it is not an answer
            raise PiError(f"the model refused: {self.refusal}", "invalid_request")
        finish = self.finish or "stop"
        reason = _OC_FINISH.get(finish)
        if reason is None:
            if finish == "model_context_window_exceeded":
                raise PiError("the model's context window was exceeded (model_context_window_exceeded)",
                              "context_overflow")
            if finish in ("content_filter", "safety", "refusal", "sensitive"):
                raise PiError(f"the provider stopped the answer: finish_reason {finish!r}", "invalid_request")
            # the stream itself was well formed: the server ended the turn for a reason we
            # cannot vouch for (vLLM's "abort", a gateway's own word), so a server failure
            raise PiError(f"the provider ended the answer with an unknown finish_reason {finish!r}", "server")
        return reason


# ---- faux (offline) -------------------------------------------------------------

def _faux_script(model: dict, ctx: dict, o: "_Options") -> dict:
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


def _faux_sse(model: dict, ctx: dict, o: "_Options", script: dict) -> list:
    """Canned OpenAI chat-completions SSE bytes for a scripted reply."""
    size = int(script.get("chunkSize") or 8)
    env = {"id": "chatcmpl-faux", "object": "chat.completion.chunk", "created": int(time.time()),
           "model": model["id"]}
    frames = []

    def frame(choice_delta=None, finish=None, **extra):
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
        err: dict = {"message": str(script["error"]), "type": "server_error"}
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

    def __init__(self, frames: list, delay: float, signal):
        self.frames, self.delay, self.signal = frames, delay, signal

    def iter_body(self):
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

    drain = close = release


def _faux_build(model: dict, ctx: dict, o: "_Options"):
    return "faux://local", {}, {"model": model["id"], "messages": ctx.get("messages") or []}


def _faux_open(model: dict, ctx: dict, o: "_Options"):
    script = _faux_script(model, ctx, o)
    if script.get("errorStatus") and not script.get("error"):
        raise PiError(f"faux: scripted HTTP {script['errorStatus']}", _classify(int(script["errorStatus"])),
                      int(script["errorStatus"]))
    delay = float(script.get("delay", 0.0))
    return _FauxResponse(_faux_sse(model, ctx, o, script), delay, o.signal)


# ==== registry of families =====================================================

# api name -> (build request, translator class, opener or None for HTTP, relax or None)
# relax(body, error) returns a body to send once more after a rejected request.
_FAMILIES = {
    "openai-completions": (_oc_build, _OCTranslator, None, _oc_relax),
    "faux": (_faux_build, _OCTranslator, _faux_open, None),
}


# ==== providers, credentials, config ===========================================

_TABLE = None
_BY_HOST: "dict | None" = None
_AUTH_STYLES = ("bearer", "x-api-key", "api-key", "x-goog-api-key", "none")
_MODEL_FIELDS = ("id", "name", "api", "provider", "baseUrl", "reasoning", "input", "cost",
                 "contextWindow", "maxTokens", "headers", "compat", "faux")


def _table():
    """providers_table, loaded on first use from the file next to this one."""
    global _TABLE
    if _TABLE is None:
        mod = sys.modules.get("providers_table")
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "providers_table.py")
        if mod is None and os.path.isfile(path):
            import importlib.util
            spec = importlib.util.spec_from_file_location("providers_table", path)
            if spec is not None and spec.loader is not None:
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                sys.modules["providers_table"] = mod
        if mod is None:
            try:
                import providers_table as mod
            except ImportError:
                raise ConfigError("providers_table.py is missing: keep it next to pi_min.py") from None
        _TABLE = mod
    return _TABLE


_MODELS: dict = {}


def _known_models(pid: str) -> dict:
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


def _rows_by_host() -> dict:
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


def _read_config(name: str) -> dict:
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


def _canonical(name: str):
    """Canonical table id for a provider name or alias, or None."""
    key = name.strip().lower()
    t = _table()
    if key in t.PROVIDERS:
        return key
    return t.ALIASES.get(key)


def _provider_config(pid: str, cfg: dict) -> dict:
    """The models.json entry for a provider (matched through its aliases)."""
    providers = cfg.get("providers") or {}
    if not isinstance(providers, dict):
        raise ConfigError("models.json: 'providers' must be an object")
    merged: dict = {}
    for key, value in providers.items():
        if isinstance(value, dict) and (key.lower() == pid or _canonical(key) == pid):
            merged.update(value)
    return merged


def _resolve_provider(name: str, cfg: dict):
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


def _merge(model: dict, source: dict) -> None:
    for k in _MODEL_FIELDS:
        if k in source and source[k] is not None and k not in ("id", "provider"):
            v = source[k]
            if k in ("headers", "compat", "cost") and isinstance(v, dict):
                model[k] = {**(model.get(k) or {}), **v}
            elif isinstance(v, (list, dict)):
                model[k] = json.loads(json.dumps(v))  # callers may mutate what we return
            else:
                model[k] = v


def get_model(provider: str, model_id: str | None = None, **overrides) -> dict:
    """A Model dict for ``provider`` (any alias, any case) and ``model_id``
    (default: the provider's default model; "provider/model-id" works too). Filled from the provider table,
    then ``models.json``, then ``overrides`` (baseUrl=, headers=, compat=, ...).
    Unknown model ids are allowed; unknown providers raise ConfigError."""
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
    mid = model_id or (row["defaultModel"] if row else next(iter(listed), None))
    if not mid:
        raise ConfigError(f"no model given for {pid!r} and models.json lists none")
    model = {"id": mid, "name": mid, "api": "openai-completions", "provider": pid, "baseUrl": "",
             "reasoning": False, "input": ["text"],
             "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
             "contextWindow": 128000, "maxTokens": 16384}
    if row:
        _merge(model, row)
        known = _known_models(pid).get(mid)
        if known:
            _merge(model, known)
    _merge(model, pconf)
    if mid in listed:
        _merge(model, listed[mid])
    _merge(model, overrides)
    return model


def list_providers() -> list:
    """Canonical provider ids (built in and from models.json), sorted."""
    ids = set(_table().PROVIDERS)
    for key in (_read_config("models.json").get("providers") or {}):
        ids.add(_canonical(key) or key.lower())
    return sorted(ids)


def _resolve_value(value: str, base_dir: str, what: str):
    """models.json value sources: "!command", "env:NAME", "file:PATH", a bare
    UPPER_CASE_NAME (that env var), else the literal. -> str or None."""
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
        return os.environ.get(value[4:].strip(), "").strip() or None
    if value.startswith("file:"):
        path = os.path.join(base_dir, os.path.expanduser(value[5:].strip()))
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError as e:
            raise ConfigError(f"cannot read the file for {what} in models.json: {path}: {e.strerror}") from None
    if "_" in value and value.replace("_", "").isalnum() and value.isupper() and value[0].isalpha():
        return os.environ.get(value, "").strip() or None
    return value


def _auth_style(model: dict, row, pconf: dict) -> str:
    if pconf.get("authHeader") is False:
        return "none"
    if row and row.get("auth") and (not pconf.get("api") or pconf.get("api") == row.get("api")):
        return row["auth"]
    api = str(model.get("api") or "")
    return {"anthropic-messages": "x-api-key", "google-generative-ai": "x-goog-api-key",
            "faux": "none"}.get(api, "bearer")


def _auth_json_key(pid: str):
    """An API key or unexpired OAuth access token for pid from auth.json."""
    data = _read_config("auth.json")
    entry = None
    for key, value in data.items():
        if key.lower() == pid or _canonical(key) == pid:
            entry = value
            if key.lower() == pid:
                break
    if isinstance(entry, str):
        return entry.strip() or None
    if not isinstance(entry, dict):
        return None
    kind = entry.get("type")
    if kind in ("oauth", "o_auth"):
        expires = entry.get("expires")
        if isinstance(expires, (int, float)) and expires <= _now_ms():
            return None
        return entry.get("access") or entry.get("access_token") or None
    if kind == "bearer_token":
        return entry.get("token") or None
    return entry.get("key") or entry.get("api_key") or None


def _fill_url(url: str, row, model: dict) -> str:
    """Fill {placeholders} of a templated base URL from env vars / defaults."""
    if "{" not in url:
        return url
    import re
    row = row or {}
    env_map = row.get("urlVars") or {}
    defaults = row.get("urlDefaults") or {}

    def fill(m):
        name = m.group(1)
        for env in env_map.get(name, ()):
            value = os.environ.get(env, "").strip()
            if value:
                return value
        if name in defaults:
            return defaults[name]
        if name in ("model", "deployment", "deployment_id"):
            return model["id"]
        names = " or ".join(env_map.get(name, ())) or "a baseUrl in models.json"
        raise ConfigError(f"{model['provider']}: the base URL needs {{{name}}}: set {names}")
    return re.sub(r"\{([A-Za-z_]+)\}", fill, url)


class _Options:
    """Validated keyword options of stream()/complete() plus what they resolve to."""

    __slots__ = ("api_key", "base_url", "headers", "temperature", "max_tokens", "reasoning", "tool_choice",
                 "session_id", "cache_retention", "signal", "timeout", "max_retries", "on_payload", "extra",
                 "url", "host_row", "compat", "auth_headers", "secrets", "unsupported")

    def __init__(self, api_key=None, base_url=None, headers=None, temperature=None, max_tokens=None,
                 reasoning=None, tool_choice=None, session_id=None, cache_retention=None, signal=None,
                 timeout=120.0, max_retries=2, on_payload=None, extra=None):
        self.api_key: str | None = api_key
        self.base_url: str | None = base_url
        self.headers: dict | None = headers
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
        self.extra: dict = extra or {}
        # resolved by _prepare() / the family's request builder
        self.url = ""
        self.host_row: dict | None = None   # table row serving the request's host
        self.compat: dict | None = None     # the family's resolved compat flags
        self.auth_headers: dict = {}        # credentials and model headers
        self.secrets: list = []             # values redacted from every message
        self.unsupported: str | None = None  # why this request cannot run (family not built)
        self._validate()

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
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or self.timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, not {self.max_retries!r}")
        if self.signal is not None and not callable(getattr(self.signal, "is_set", None)):
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


def _own_hosts(row, pconf: dict, model: dict) -> set:
    """Hosts a provider's stored key may be sent to: those of its table and
    models.json base URLs. Any other host (a base_url= override, a local proxy)
    gets a key only when the caller passes it."""
    hosts = set()
    for url in (row and row.get("baseUrl"), pconf.get("baseUrl")):
        if url and "{" not in url.partition("://")[2].partition("/")[0]:
            hosts.add(_host_of(_fill_url(url, row, model)))
    return hosts


def _stored_key(pid: str, row, pconf: dict):
    """The provider's key from, in order, its env vars, auth.json, models.json."""
    for name in (row.get("envKeys") or ()) if row else ():
        value = os.environ.get(name, "").strip()
        if value:
            return value
    key = _auth_json_key(pid)
    if key is None and pconf.get("apiKey"):
        key = _resolve_value(pconf["apiKey"], _agent_dir(), f"{pid} apiKey")
    return key


def _prepare(model: dict, o: _Options) -> None:
    """Resolve URL, credentials and headers (raises ConfigError), or mark the
    request as unsupported when its family is not implemented yet."""
    cfg = _read_config("models.json")
    pid = _canonical(model.get("provider") or "") or (model.get("provider") or "").lower()
    row = _table().PROVIDERS.get(pid)
    pconf = _provider_config(pid, cfg)
    api = model.get("api")
    style = _auth_style(model, row, pconf)
    if api == "faux":
        return
    env_keys = list(row.get("envKeys") or ()) if row else []
    o.secrets.extend(os.environ[n].strip() for n in env_keys if os.environ.get(n, "").strip())
    if style not in _AUTH_STYLES:
        o.unsupported = f"{pid}: {style!r} authentication is not implemented yet in pi_min {__version__}"
        return
    ready = api in _FAMILIES  # else: check the key, then stream a "not implemented yet" error
    trusted = True
    if ready:
        o.url = _fill_url(o.base_url or model.get("baseUrl") or "", row, model)
        if not o.url:
            raise ConfigError(f"{pid}: no base URL: set baseUrl in models.json or pass base_url=")
        host = _split_url(o.url)[1]
        trusted = host in _own_hosts(row, pconf, model)
        o.host_row = _rows_by_host().get(host)
    key = o.api_key
    # a stored key goes only to its provider's own host; an explicit one anywhere
    if key is None and trusted:
        key = _stored_key(pid, row, pconf)
        if key is None and env_keys and style != "none":
            raise ConfigError(f"no API key for {pid}: set {' or '.join(env_keys)}, add it to "
                              f"{os.path.join(_agent_dir(), 'auth.json')}, or pass api_key= (--api-key)")
    if not ready:
        o.unsupported = f"the {api!r} API family (provider {pid}) is not implemented yet in pi_min {__version__}"
        return
    headers = o.auth_headers
    if key and key.strip():
        key = key.strip()
        o.secrets.append(key)
        name, value = {"x-api-key": ("x-api-key", key), "api-key": ("api-key", key),
                       "x-goog-api-key": ("x-goog-api-key", key)}.get(style, ("Authorization", f"Bearer {key}"))
        headers[name] = value
    for name, value in (model.get("headers") or {}).items():
        if isinstance(value, str) and value.startswith(("!", "env:", "file:")):
            value = _resolve_value(value, _agent_dir(), f"header {name}")
        if value is not None:
            headers[name] = str(value)
            if name.lower() in ("authorization", "x-api-key", "api-key", "x-goog-api-key"):
                o.secrets.append(str(value))


# ==== public API ===============================================================

_RETRY_STATUSES = frozenset((408, 429, 500, 502, 503, 504, 529))


def _http_error(resp, provider: str) -> PiError:
    """A PiError from an HTTP error response (reads its body)."""
    try:
        raw = resp.read_all(1 << 20)
    except PiError:
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    message, code = text, None
    try:
        obj = json.loads(text) if text[:1] in "[{\"" and text else None
    except ValueError:
        obj = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else (err.get("type") or err.get("status"))
            message = _error_message(err)
        elif isinstance(err, str):
            message = err
    elif isinstance(obj, str):
        message = obj
    elif text[:1] == "<":
        message = f"(HTML error page, {len(text)} bytes)"
    message = " ".join((message or resp.reason or "no body").split())[:2000]
    if 300 <= resp.status < 400:
        where = resp.headers.get("location") or "elsewhere"
        message = f"redirected to {where}; use that as the base URL"
    e = PiError(f"HTTP {resp.status} from {provider}: {message}", _classify(resp.status, message, code), resp.status)
    e.retry_after = _parse_retry_after(resp.headers)
    e.no_retry = code in ("insufficient_quota", "credit_balance_exhausted") or "insufficient_quota" in text
    return e


def _retry_delay(e: PiError, attempt: int, o: _Options):
    """Seconds to wait before retrying after e, or None when not retryable."""
    if attempt >= o.max_retries or e.no_retry:
        return None
    if e.status in _RETRY_STATUSES or (e.kind == "network" and e.status is None):
        return e.retry_after if e.retry_after is not None else min(8.0, 0.5 * 2 ** attempt)
    return None


def _run(model: dict, ctx: dict, o: _Options) -> "Generator[dict, None, None]":
    b = _Builder(model)
    yield {"type": "start", "partial": b.msg}
    resp = None
    finished = False
    try:
        if o.unsupported:
            raise PiError(o.unsupported, "invalid_request")
        build, translator, opener, relax = _FAMILIES[model["api"]]
        url, headers, body = build(model, ctx, o)
        headers["User-Agent"] = f"pi_min/{__version__}"
        headers.update(o.auth_headers)
        for name, value in (o.headers or {}).items():
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = str(value)
        if o.on_payload is not None:
            replaced = o.on_payload(body, model)
            if replaced is not None:
                body = replaced
        data = _json_body(body)
        attempt = 0
        while True:
            tr = translator(b, o)
            try:
                if o.signal is not None and o.signal.is_set():
                    raise PiError("Request was aborted", "aborted")
                resp = opener(model, ctx, o) if opener else _request("POST", url, headers, data, o.timeout, o.signal)
                if not 200 <= resp.status < 300:
                    err = _http_error(resp, model["provider"])
                    resp.close()
                    resp = None
                    raise err
                ctype = resp.headers.get("content-type", "").lower()
                out = b.out
                head = b"" if "event-stream" in ctype else _sniff(resp)
                if "event-stream" in ctype or head.lstrip().startswith((b"data:", b"event:", b":", b"id:")):
                    # an event stream, also when a proxy mislabels it
                    parser = SSEParser()
                    ended = False
                    signal = o.signal
                    pieces = resp.iter_body()
                    for piece in _chain(head, pieces) if head else pieces:
                        for ev in parser.feed(piece):
                            ended = tr.event(ev[0], ev[1])
                            if out:  # per frame, so partial is in step with the events
                                yield from out
                                out.clear()
                            if ended:
                                break
                        if ended:
                            break
                        if signal is not None and signal.is_set():
                            raise PiError("Request was aborted", "aborted")
                    if not ended:
                        for ev in parser.close():
                            if tr.event(ev[0], ev[1]):
                                break
                    reason = tr.end(not ended)
                    resp.drain() if ended else resp.release()
                else:
                    raw = head + resp.read_all()
                    resp.release()
                    text = raw.decode("utf-8", "replace").strip()
                    try:
                        obj = json.loads(text) if "json" in ctype or text[:1] in "{[" else None
                    except ValueError:
                        obj = None
                    if obj is None:
                        what = ctype.split(";")[0] or "no content type"
                        raise PiError(f"expected an event stream from {model['provider']}, got {what}: "
                                      f"{' '.join(text[:200].split())!r}", "protocol")
                    if isinstance(obj, dict) and obj.get("error"):
                        raise _in_band_error(obj["error"])
                    tr.whole(obj)
                    reason = tr.end(False)
                resp = None
                b.done(reason)
                finished = True
                yield from out
                out.clear()
                return
            except PiError as e:
                if resp is not None:
                    resp.close()
                    resp = None
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
                        raise PiError("Request was aborted", "aborted") from None
                elif delay:
                    time.sleep(delay)
                attempt += 1
                b.set_usage(0, 0)
    except PiError as e:
        aborted = e.kind == "aborted" or (o.signal is not None and o.signal.is_set())
        message = "Request was aborted" if aborted else _redact(str(e), o.secrets)
        if b.out:
            yield from b.out
            b.out.clear()
        finished = True
        yield b.fail("aborted" if aborted else e.kind, message, None if aborted else e.status)
    except (GeneratorExit, KeyboardInterrupt):  # closed or interrupted: no event can follow
        if not finished:
            b.msg["stopReason"] = "aborted"
            b.msg["errorMessage"] = "Request was aborted"
            b.msg["errorKind"] = "aborted"
        raise
    except Exception as e:  # a bug or an unexpected shape: still an event, never a traceback
        finished = True
        yield b.fail("protocol", _redact(f"unexpected {type(e).__name__}: {e}", o.secrets))
    finally:
        if resp is not None:
            resp.close()


def _sniff(resp) -> bytes:
    """The first body bytes (at least a few non-blank ones, or all of a short body)."""
    head = b""
    for piece in resp.iter_body():
        head += piece
        if len(head.lstrip()) >= 6:
            break
    return head


def _chain(first: bytes, rest):
    yield first
    yield from rest


def _context(context) -> dict:
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
    tools = context.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("name")
                                                                      for t in tools)):
        raise ConfigError("context tools must be a list of {name, description, parameters}")
    return context


def stream(model, context, *, api_key: str | None = None, base_url: str | None = None,
           headers: dict | None = None, temperature: float | None = None, max_tokens: int | None = None,
           reasoning: str | None = None, tool_choice=None, session_id: str | None = None,
           cache_retention: str | None = None, signal=None, timeout: float = 120.0, max_retries: int = 2,
           on_payload: "Callable | None" = None, **extra) -> "Generator[dict, None, None]":
    """Stream one assistant turn as events (see the module docs and CONTRACT §4).

    ``model`` is a Model dict or "provider" / "provider/model-id"; ``context`` a
    Context dict or a user prompt string. Raises ConfigError for what the user
    must fix; once this returns, every failure is the terminal ``error`` event.
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
    return _run(model, ctx, o)


def complete(model, context, **options) -> dict:
    """Run stream() to the end and return the final AssistantMessage."""
    message: dict = {}
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


def _cli_parser():
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


def _cli_target(args) -> tuple:
    """(provider, model id or None) from flags, then env, then settings.json.
    A default model is only taken from the same place as the provider or a
    more specific one, so --provider groq never inherits another provider's model."""
    settings = _read_config("settings.json")
    sources = [
        (args.provider, args.model),
        (os.environ.get("PI_PROVIDER"), os.environ.get("PI_MODEL")),
        (settings.get("default_provider") or settings.get("defaultProvider"),
         settings.get("default_model") or settings.get("defaultModel")),
    ]
    model = None
    for provider, model_here in sources:
        model = model or model_here or None
        if provider:
            return provider, model
        if model and "/" in model and _canonical(model.partition("/")[0]):
            return model.partition("/")[0], model.partition("/")[2]
    raise ConfigError("no provider: pass --provider (see --list-providers) or set PI_PROVIDER")


def _cli_image(path: str) -> dict:
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


def _usage_line(msg: dict) -> str:
    u = msg.get("usage") or _zero_usage()
    cache = ""
    if u["cacheRead"] or u["cacheWrite"]:
        cache = f" (+{u['cacheRead']} cache read, +{u['cacheWrite']} cache write)"
    return (f"usage: {u['input']} in{cache}, {u['output']} out, {u['totalTokens']} total; "
            f"cost ${u['cost']['total']:.6f}")


def _cli_turn(model: dict, ctx: dict, opts: dict, args) -> dict:
    """Run one turn, printing as it streams; -> the final message."""
    out, err = sys.stdout, sys.stderr
    dim = err.isatty() if hasattr(err, "isatty") else False
    message: dict = {}
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
        events = stream(model, ctx, **opts)
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
    if message.get("stopReason") in ("error", "aborted") and not args.json:
        err.write("pi-min: error: " + " ".join(str(message.get("errorMessage")).split()) + "\n")
    if args.usage and message:
        err.write(_usage_line(message) + "\n")
    return message


def _print_providers() -> None:
    t = _table()
    aliases: dict = {}
    for alias, pid in t.ALIASES.items():
        aliases.setdefault(pid, []).append(alias)
    rows = [("PROVIDER", "FAMILY", "KEY ENV VARS", "DEFAULT MODEL")]
    for pid in list_providers():
        row = t.PROVIDERS.get(pid)
        if row is None:
            rows.append((pid, "(models.json)", "", ""))
            continue
        family = row["api"]
        if family not in _FAMILIES or row.get("auth") not in _AUTH_STYLES:
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


def _chat(model: dict, opts: dict, args) -> int:
    """Interactive multi-turn chat on a terminal."""
    try:
        import readline  # noqa: F401  (line editing for input())
    except ImportError:
        pass
    ctx: dict = {"messages": []}
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


def main(argv: list | None = None) -> int:
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
        ctx: dict = {"messages": [{"role": "user", "content": content, "timestamp": _now_ms()}]}
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


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
