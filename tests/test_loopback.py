"""Self-tests of the loopback server, driven by a raw socket client (no pi_min involved)."""

from __future__ import annotations

import json
import socket

import pytest

from loopback import Loopback, Reply, pieces


def _connect(srv: Loopback) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    return sock


def _send_request(sock: socket.socket, body: bytes = b'{"x": 1}', path: str = "/v1/chat/completions",
                  extra: str = "") -> None:
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (path, len(body), extra))
    sock.sendall(head.encode("latin-1") + body)


def _read_head(sock: socket.socket, buf: bytearray):
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "connection closed before the response head"
        buf.extend(data)
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[:end + 4]
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers


def _read_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = sock.recv(65536)
        assert data, "connection closed early"
        buf.extend(data)
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _read_line(sock: socket.socket, buf: bytearray) -> bytes:
    while b"\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "connection closed early"
        buf.extend(data)
    end = buf.index(b"\r\n")
    out = bytes(buf[:end])
    del buf[:end + 2]
    return out


def _read_chunks(sock: socket.socket, buf: bytearray):
    sizes, body = [], bytearray()
    while True:
        size = int(_read_line(sock, buf), 16)
        if size == 0:
            assert _read_line(sock, buf) == b""
            return sizes, bytes(body)
        sizes.append(size)
        body.extend(_read_exact(sock, buf, size))
        assert _read_exact(sock, buf, 2) == b"\r\n"


def _read_to_eof(sock: socket.socket, buf: bytearray) -> bytes:
    while True:
        data = sock.recv(65536)
        if not data:
            return bytes(buf)
        buf.extend(data)


BODY = b"data: {\"a\": 1}\n\ndata: [DONE]\n\n"


def test_pieces_cycle_one_to_three():
    assert pieces(b"abcdefg") == [b"a", b"bc", b"def", b"g"]
    assert b"".join(pieces(BODY)) == BODY
    assert {len(p) for p in pieces(BODY)} <= {1, 2, 3}


def test_length_mode_keep_alive_and_recorded_requests(server):
    server.script([Reply(body=BODY), Reply(status=429, headers={"Retry-After": "0"}, body=b"{}")])
    sock = _connect(server)
    buf = bytearray()
    with sock:
        _send_request(sock)
        status, headers = _read_head(sock, buf)
        assert status == 200 and headers["content-type"] == "text/event-stream"
        assert _read_exact(sock, buf, int(headers["content-length"])) == BODY
        _send_request(sock, b'{"y": 2}', "/other")  # same connection
        status, headers = _read_head(sock, buf)
        assert status == 429 and headers["retry-after"] == "0"
        assert _read_exact(sock, buf, int(headers["content-length"])) == b"{}"
    assert [r.path for r in server.requests] == ["/v1/chat/completions", "/other"]
    assert server.requests[0].method == "POST"
    assert server.requests[0].headers["authorization"] == "Bearer k"
    assert server.requests[0].json == {"x": 1} and server.requests[1].body == b'{"y": 2}'


def test_unscripted_request_gets_500(server):
    with _connect(server) as sock:
        buf = bytearray()
        _send_request(sock)
        status, headers = _read_head(sock, buf)
        assert status == 500
        assert b"no scripted reply" in _read_exact(sock, buf, int(headers["content-length"]))


@pytest.mark.parametrize("split", [False, True])
def test_chunked_mode(server, split):
    server.script([Reply(body=BODY, mode="chunked", split=split)])
    with _connect(server) as sock:
        buf = bytearray()
        _send_request(sock)
        status, headers = _read_head(sock, buf)
        assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
        sizes, body = _read_chunks(sock, buf)
        assert body == BODY
        assert sizes == ([len(p) for p in pieces(BODY)] if split else [len(BODY)])


def test_close_mode(server):
    server.script([Reply(body=BODY, mode="close", split=True)])
    with _connect(server) as sock:
        buf = bytearray()
        _send_request(sock)
        status, headers = _read_head(sock, buf)
        assert headers["connection"] == "close" and "content-length" not in headers
        assert _read_to_eof(sock, buf) == BODY


def test_truncate_closes_without_final_chunk(server):
    server.script([Reply(body=BODY, truncate=True)])
    with _connect(server) as sock:
        buf = bytearray()
        _send_request(sock)
        _read_head(sock, buf)
        rest = _read_to_eof(sock, buf)
        assert rest == b"%x\r\n%s\r\n" % (len(BODY), BODY)
        assert not rest.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_hang_keeps_response_open_until_client_closes(server, mode):
    server.script([Reply(body=BODY, mode=mode, hang=True)])
    sock = _connect(server)
    buf = bytearray()
    _send_request(sock)
    status, headers = _read_head(sock, buf)
    if mode == "length":
        assert int(headers["content-length"]) > len(BODY)
        _read_exact(sock, buf, len(BODY))
    else:
        assert _read_line(sock, buf) == b"%x" % len(BODY)
        _read_exact(sock, buf, len(BODY) + 2)
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(1)  # nothing more comes
    sock.close()


def test_close_releases_hanging_connections():
    srv = Loopback()
    srv.script([Reply(body=BODY, mode="chunked", hang=True)])
    sock = _connect(srv)
    buf = bytearray()
    _send_request(sock)
    _read_head(sock, buf)
    srv.close()
    sock.settimeout(5)
    _read_to_eof(sock, buf)  # returns once the server side is shut down
    sock.close()


def test_request_body_chunked(server):
    server.script([Reply(body=b"ok", headers={"Content-Type": "text/plain"})])
    with _connect(server) as sock:
        payload = json.dumps({"k": "v"}).encode()
        head = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
        buf = bytearray()
        status, headers = _read_head(sock, buf)
        assert _read_exact(sock, buf, int(headers["content-length"])) == b"ok"
    assert server.requests[0].json == {"k": "v"}
