"""Unit tests of the sans-IO SSE parser (pi_min.SSEParser).

feed(bytes) -> [(event_type, data)], close() -> [(event_type, data)]. WHATWG rules apply
(wire.md §7.1), with two documented deviations: close() dispatches a last event that has
data but no terminating blank line, and invalid UTF-8 / lines over 16 MiB raise a
"protocol" PiError instead of being replaced or buffered without bound.

Every vector is checked fed whole, byte by byte, and in seeded random splits.
"""

from __future__ import annotations

import random

import pytest

import pi_min

M = "message"

# (id, input bytes, expected events over feed()+close())
VECTORS = [
    # --- BOM (WPT format-bom, format-bom-2)
    ("bom-once", b"\xef\xbb\xbfdata:1\n\ndata:2\n\n", [(M, "1"), (M, "2")]),
    ("bom-twice", b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3", [(M, "2"), (M, "3")]),
    ("bom-not-at-start", b"data:1\n\n\xef\xbb\xbfdata:2\n\ndata:3\n\n", [(M, "1"), (M, "3")]),
    # --- field value: exactly one leading space removed
    ("data-no-space", b"data:x\n\n", [(M, "x")]),
    ("data-one-space", b"data: x\n\n", [(M, "x")]),
    ("data-two-spaces", b"data:  x\n\n", [(M, " x")]),
    ("data-trailing-space-kept", b"data: x \n\n", [(M, "x ")]),
    ("colon-in-value", b"data: a:b: c\n\n", [(M, "a:b: c")]),
    # --- WPT format-field-data: empty data, bare data lines, normal
    ("field-data", b"data:\n\ndata\ndata\n\ndata:test\n\n", [(M, ""), (M, "\n"), (M, "test")]),
    # --- multi-line data (OpenAI SDK test)
    ("multi-line-json", b'data: {\ndata: "foo":\ndata: \ndata:\ndata: true}\n\n', [(M, '{\n"foo":\n\n\ntrue}')]),
    # --- comments
    ("comments", b": keep-alive\n\ndata: x\n: OPENROUTER PROCESSING\ndata: y\n\n:\n\n", [(M, "x\ny")]),
    ("comment-only-stream", b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\n", []),
    # --- event field
    ("event-type", b"event: ping\ndata: {}\n\n", [("ping", "{}")]),
    ("event-empty-value", b"event: \ndata:data\n\n", [(M, "data")]),
    ("event-reset-after-dispatch", b"event: a\ndata: 1\n\ndata: 2\n\n", [("a", "1"), (M, "2")]),
    ("event-last-wins", b"event: a\nevent: b\ndata: 1\n\n", [("b", "1")]),
    ("event-no-space", b"event:content_block_delta\ndata:{\"x\":1}\n\n", [("content_block_delta", '{"x":1}')]),
    # --- a block without data dispatches nothing, and resets the event type
    ("no-data-no-event", b"event: ping\n\n", []),
    ("no-data-resets-type", b"event: ping\n\ndata: x\n\n", [(M, "x")]),
    ("blank-lines-only", b"\n\n\n\r\n\r\r", []),
    # --- id (with NUL ignored), retry and unknown fields never dispatch or break anything
    ("id-field", b"id: 7\ndata: x\n\n", [(M, "x")]),
    ("id-with-nul", b"id: a\x00b\ndata: x\n\n", [(M, "x")]),
    ("retry-fields", b"retry: 1000\nretry: 1000x\ndata: x\n\n", [(M, "x")]),
    ("unknown-field", b"foo: bar\nDATA: no\nData: no\ndata: yes\n\n", [(M, "yes")]),
    ("field-case-sensitive", b"Data: x\n\nEvent: e\ndata: y\n\n", [(M, "y")]),
    # --- line terminators
    ("lf", b"data: a\n\ndata: b\n\n", [(M, "a"), (M, "b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [(M, "a"), (M, "b")]),
    ("cr", b"data: a\r\rdata: b\r\r", [(M, "a"), (M, "b")]),
    ("mixed", b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r\n", [(M, "a\nb\nc"), (M, "d")]),
    ("cr-then-lf-blank", b"data: a\r\n\ndata: b\n\r", [(M, "a"), (M, "b")]),
    ("crlf-multi-line", b"data: a\r\ndata: b\r\ndata: c\r\n\r\n", [(M, "a\nb\nc")]),
    # --- only CR/LF split lines: U+2028, U+2029, U+0085, FS, VT, FF are data
    ("u2028-in-json", b'data: {"content":" \xe2\x80\xa8"}\n\n', [(M, '{"content":" \u2028"}')]),
    ("unicode-separators", b"data: a\xe2\x80\xa8b\xe2\x80\xa9c\xc2\x85d\x1ce\x0bf\x0cg\x1dh\x1ei\n\n",
     [(M, "a\u2028b\u2029c\u0085d\x1ce\x0bf\x0cg\x1dh\x1ei")]),
    ("escaped-newlines-in-json", b'data: {"t":"my long\\n\\ncontent"}\n\n', [(M, '{"t":"my long\\n\\ncontent"}')]),
    # --- multi-byte UTF-8
    ("multi-byte", 'data: {"content":"известни"}\n\n'.encode("utf-8"), [(M, '{"content":"известни"}')]),
    ("emoji", "data: \U0001F642 caf\u00e9\n\n".encode("utf-8"), [(M, "\U0001F642 caf\u00e9")]),
    # --- OpenAI-style sentinel is just data to the SSE layer
    ("done-sentinel", b"data: {\"a\":1}\n\ndata: [DONE]\n\n", [(M, '{"a":1}'), (M, "[DONE]")]),
    # --- close(): lenient flush of a final event without its blank line
    ("eof-after-data-line", b"data: x\n", [(M, "x")]),
    ("eof-mid-line", b"data: 1\n\ndata: tail", [(M, "1"), (M, "tail")]),
    ("eof-keeps-event-type", b"event: e\ndata: y", [("e", "y")]),
    ("eof-after-cr", b"data: y\r", [(M, "y")]),
    ("eof-no-data", b"event: e\n", []),
    ("eof-partial-field", b"data: 1\n\nda", [(M, "1")]),
    ("empty", b"", []),
]

IDS = [v[0] for v in VECTORS]


def run(chunks) -> list:
    parser = pi_min.SSEParser()
    out = []
    for chunk in chunks:
        got = parser.feed(chunk)
        assert isinstance(got, list)
        out.extend(got)
    out.extend(parser.close())
    return [tuple(e) for e in out]


def byte_by_byte(data: bytes):
    return [data[i:i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: int):
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(data):
        n = rng.randint(0, 5)  # zero-length feeds included on purpose
        chunks.append(data[pos:pos + n])
        pos += n
    return chunks


@pytest.mark.parametrize("name, data, expected", VECTORS, ids=IDS)
def test_vector_whole(name, data, expected):
    assert run([data]) == expected


@pytest.mark.parametrize("name, data, expected", VECTORS, ids=IDS)
def test_vector_byte_by_byte(name, data, expected):
    assert run(byte_by_byte(data)) == expected


@pytest.mark.parametrize("name, data, expected", VECTORS, ids=IDS)
def test_vector_random_splits(name, data, expected):
    for seed in range(25):
        assert run(random_splits(data, seed)) == expected, "seed %d" % seed


@pytest.mark.parametrize("name, data, expected", VECTORS, ids=IDS)
def test_vector_every_two_way_split(name, data, expected):
    for cut in range(len(data) + 1):
        assert run([data[:cut], data[cut:]]) == expected, "cut at %d" % cut


def test_feed_returns_events_as_soon_as_complete():
    parser = pi_min.SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\n") == [(M, "a")]
    assert parser.feed(b"data: b\n\ndata: c") == [(M, "b")]
    assert parser.close() == [(M, "c")]


def test_crlf_split_across_feeds_is_one_line_end():
    # A phantom blank line after the CR would dispatch "a" on its own.
    parser = pi_min.SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r\n") == []
    assert parser.feed(b"\r") == [(M, "a\nb")]
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: c\r\n\r\n") == [(M, "c")]
    assert parser.close() == []


def test_empty_feed_between_cr_and_lf():
    # An empty read between the CR and the LF must not turn the LF into a blank line.
    parser = pi_min.SSEParser()
    out = parser.feed(b"data: a\r") + parser.feed(b"") + parser.feed(b"\ndata: b\r\n\r\n")
    assert out + parser.close() == [(M, "a\nb")]


def test_cr_cr_across_feeds_is_a_blank_line():
    parser = pi_min.SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [(M, "a")]


def test_multi_byte_character_split_across_feeds():
    # OpenAI SDK test_multi_byte_character_multiple_chunks
    parser = pi_min.SSEParser()
    out = []
    for chunk in (b'data: {"content":"', b"\xd0", b"\xb8\xd0\xb7\xd0", b"\xb2\xd0\xb5\xd1\x81\xd1\x82\xd0\xbd\xd0\xb8",
                  b'"}\n', b"\n"):
        out.extend(parser.feed(chunk))
    out.extend(parser.close())
    assert out == [(M, '{"content":"известни"}')]


def test_bom_split_across_feeds_is_still_stripped():
    parser = pi_min.SSEParser()
    out = parser.feed(b"\xef") + parser.feed(b"\xbb") + parser.feed(b"\xbfdata: x\n\n")
    assert out == [(M, "x")]


def test_parser_reusable_after_many_events():
    body = b"".join(b"data: %d\n\n" % i for i in range(500))
    assert run(random_splits(body, 7)) == [(M, str(i)) for i in range(500)]


def test_close_twice_is_harmless():
    parser = pi_min.SSEParser()
    parser.feed(b"data: x")
    assert parser.close() == [(M, "x")]
    assert parser.close() == []


# --- errors --------------------------------------------------------------------------------

def _expect_protocol_error(chunks):
    parser = pi_min.SSEParser()
    with pytest.raises(pi_min.PiError) as info:
        for chunk in chunks:
            parser.feed(chunk)
        parser.close()
    assert info.value.kind == "protocol"
    assert str(info.value)
    return info.value


@pytest.mark.parametrize("data", [
    b"data: \xff\n\n",                    # never valid
    b"data: \xc3\x28\n\n",                # bad continuation byte
    b"data: \xed\xa0\x80\n\n",            # UTF-8-encoded surrogate
    b"data: \xc0\xaf\n\n",                # overlong encoding
    b"\xff\xfed\x00a\x00\n\x00\n\x00",    # UTF-16 with BOM
    b"data: ok\n\ndata: \xd0",            # truncated sequence at end of stream
], ids=["ff", "bad-continuation", "surrogate", "overlong", "utf16", "truncated-at-eof"])
def test_invalid_utf8_is_a_protocol_error(data):
    _expect_protocol_error([data])
    _expect_protocol_error(byte_by_byte(data))


def test_invalid_utf8_error_does_not_hide_earlier_events():
    parser = pi_min.SSEParser()
    assert parser.feed(b"data: fine\n\n") == [(M, "fine")]
    with pytest.raises(pi_min.PiError) as info:
        parser.feed(b"data: \xff\n\n")
    assert info.value.kind == "protocol"


LIMIT = 16 * 1024 * 1024


def test_line_over_16_mib_in_one_feed_is_a_protocol_error():
    _expect_protocol_error([b"data: " + b"a" * (LIMIT + (1 << 20))])


def test_line_over_16_mib_across_feeds_is_a_protocol_error():
    piece = b"a" * (1 << 20)
    parser = pi_min.SSEParser()
    with pytest.raises(pi_min.PiError) as info:
        parser.feed(b"data: ")
        for _ in range(17):
            parser.feed(piece)  # never a newline: the buffer must not grow without bound
        parser.close()
    assert info.value.kind == "protocol"


def test_long_line_under_the_limit_is_fine():
    value = "b" * (2 << 20)
    parser = pi_min.SSEParser()
    data = ("data: " + value + "\n\n").encode()
    out = []
    for i in range(0, len(data), 65536):
        out.extend(parser.feed(data[i:i + 65536]))
    assert out == [(M, value)]
