"""A tiny scripted HTTP/1.1 server on 127.0.0.1 for replaying recorded responses.

Built on raw sockets (not http.server) so the tests decide every byte that goes on the
wire: framing (Content-Length, chunked, close-delimited), piece sizes, and the ways a
response can fail to finish (hang, truncated chunked body).

    srv = Loopback()
    srv.script([Reply(body=b"data: [DONE]\\n\\n")])
    ... point the client at srv.url ...
    srv.requests[0].json
    srv.close()
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Dict, List, Optional

__all__ = ["Loopback", "Reply", "Request", "pieces"]

SOCKET_TIMEOUT = 10.0  # every blocking socket operation is bounded by this
HANG_LIMIT = 10.0  # a hanging reply keeps its socket open at most this long
MAX_HEADER_BYTES = 1 << 20

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 413: "Payload Too Large", 429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 529: "Site Overloaded",
}


def pieces(data: bytes, sizes=(1, 2, 3)) -> List[bytes]:
    """Cut data into consecutive pieces whose sizes cycle through `sizes` (deterministic)."""
    out = []
    pos = 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            break
        out.append(data[pos:pos + size])
        pos += size
    return out


class Reply:
    """One scripted response.

    mode: "length" (Content-Length), "chunked" (Transfer-Encoding: chunked) or "close"
    (no length, Connection: close, the socket closes after the body).
    split: send the body in 1-3 byte pieces (each its own HTTP chunk in chunked mode).
    hang: after the body send nothing more and never finish the response; keep the socket
    open until the client closes it or HANG_LIMIT passes. In "length" mode the advertised
    Content-Length is larger than the body so the response is still unfinished.
    truncate: chunked framing, the final 0-chunk is never sent and the socket is closed.
    raw: exact bytes instead of all of the above: a list of byte strings, each sent with
    its own sendall, and numbers, seconds to sleep between them; then the socket closes
    (or, with hang, stays open).
    """

    def __init__(self, status: int = 200, headers: Optional[Dict[str, str]] = None,
                 body: bytes = b"", mode: str = "length", split: bool = False,
                 hang: bool = False, truncate: bool = False, raw: Optional[list] = None):
        if mode not in ("length", "chunked", "close"):
            raise ValueError("mode must be length, chunked or close: %r" % (mode,))
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.status = status
        self.headers = dict({"Content-Type": "text/event-stream"} if headers is None else headers)
        self.body = body
        self.mode = "chunked" if truncate else mode
        self.split = split
        self.hang = hang
        self.truncate = truncate
        self.raw = raw

    def __repr__(self) -> str:
        return "Reply(status=%d, mode=%s, split=%s, hang=%s, truncate=%s, %d bytes)" % (
            self.status, self.mode, self.split, self.hang, self.truncate, len(self.body))


class Request:
    """One request as the server received it."""

    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes):
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError):
            self.json = None

    def __repr__(self) -> str:
        return "Request(%s %s, %d bytes)" % (self.method, self.path, len(self.body))


class _Closed(Exception):
    pass


class Loopback:
    """Threaded HTTP/1.1 server on 127.0.0.1:<ephemeral port> answering from a script."""

    def __init__(self, tls=None) -> None:
        self._tls = tls  # an ssl.SSLContext (server side) to serve https
        self._lock = threading.Lock()
        self._queue: List[Reply] = []
        self.requests: List[Request] = []
        self._conns: List[socket.socket] = []
        self.connections = 0  # TCP connections accepted
        self._stopped = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(1.0)
        self.port = self._listener.getsockname()[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        self._thread = threading.Thread(target=self._accept_loop, name="loopback-accept", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------

    def script(self, replies: List[Reply]) -> None:
        """Queue replies; each incoming request takes the next one, in order."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def close(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:  # wake the accept() call so the accept thread sees the stop flag at once
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self._thread.join(timeout=2)
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)

    def __enter__(self) -> "Loopback":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self._stopped.is_set():
                _shutdown(conn)
                return
            conn.settimeout(SOCKET_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), name="loopback-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray()
        if self._tls is not None:
            try:
                tls_conn = self._tls.wrap_socket(conn, server_side=True)
            except (OSError, ValueError):
                _shutdown(conn)  # the client refused our certificate
                return
            with self._lock:
                self._conns = [tls_conn if c is conn else c for c in self._conns]
            conn = tls_conn
        try:
            while not self._stopped.is_set():
                req = self._read_request(conn, buf)
                if req is None:
                    return  # client closed the connection between requests
                with self._lock:
                    self.requests.append(req)
                    reply = self._queue.pop(0) if self._queue else None
                if reply is None:
                    reply = Reply(500, {"Content-Type": "text/plain"}, b"no scripted reply")
                keep_open = self._send(conn, reply)
                if not keep_open or req.headers.get("connection", "").lower() == "close":
                    return
        except (_Closed, OSError):
            return
        finally:
            _shutdown(conn)
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def _recv(self, conn: socket.socket, buf: bytearray) -> bool:
        data = conn.recv(65536)
        if not data:
            return False
        buf.extend(data)
        return True

    def _read_request(self, conn: socket.socket, buf: bytearray) -> Optional[Request]:
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEADER_BYTES:
                raise _Closed()
            if not self._recv(conn, buf):
                if buf:
                    raise _Closed()
                return None
        end = buf.index(b"\r\n\r\n")
        head = bytes(buf[:end]).decode("latin-1")
        del buf[:end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) < 3:
            raise _Closed()
        method, path = parts[0], parts[1]
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                name = name.strip().lower()
                value = value.strip()
                headers[name] = headers[name] + ", " + value if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(conn, buf)
        else:
            length = int(headers.get("content-length", "0") or "0")
            while len(buf) < length:
                if not self._recv(conn, buf):
                    raise _Closed()
            body = bytes(buf[:length])
            del buf[:length]
        return Request(method, path, headers, body)

    def _read_chunked(self, conn: socket.socket, buf: bytearray) -> bytes:
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                if not self._recv(conn, buf):
                    raise _Closed()
            end = buf.index(b"\r\n")
            size = int(bytes(buf[:end]).split(b";")[0].strip() or b"0", 16)
            del buf[:end + 2]
            if size == 0:
                while b"\r\n" not in buf:  # (no trailers expected) final CRLF
                    if not self._recv(conn, buf):
                        raise _Closed()
                del buf[:buf.index(b"\r\n") + 2]
                return bytes(body)
            while len(buf) < size + 2:
                if not self._recv(conn, buf):
                    raise _Closed()
            body.extend(buf[:size])
            del buf[:size + 2]

    def _send(self, conn: socket.socket, reply: Reply) -> bool:
        """Send one reply; return True when the connection may serve another request."""
        if reply.raw is not None:
            for step in reply.raw:
                if isinstance(step, (int, float)):
                    time.sleep(step)
                else:
                    conn.sendall(step)
            if reply.hang:
                self._hang(conn)
            return False
        headers = [(k, v) for k, v in reply.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "connection")]
        if reply.mode == "length":
            length = len(reply.body) + (1_000_000 if reply.hang else 0)
            headers.append(("Content-Length", str(length)))
        elif reply.mode == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Connection", "close"))
        head = "HTTP/1.1 %d %s\r\n" % (reply.status, _REASONS.get(reply.status, "Status"))
        head += "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n"
        conn.sendall(head.encode("latin-1"))

        parts = pieces(reply.body) if reply.split else ([reply.body] if reply.body else [])
        for part in parts:
            if reply.mode == "chunked":
                conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            else:
                conn.sendall(part)

        if reply.hang:
            self._hang(conn)
            return False
        if reply.truncate:
            return False
        if reply.mode == "chunked":
            conn.sendall(b"0\r\n\r\n")
        return reply.mode != "close"

    def _hang(self, conn: socket.socket) -> None:
        """Keep the response open: wait for the client to close, the server to stop or time out."""
        deadline = time.monotonic() + HANG_LIMIT
        conn.settimeout(0.1)
        while not self._stopped.is_set() and time.monotonic() < deadline:
            try:
                if not conn.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
