"""Decoding cost of AWS event-stream frames (Bedrock) against a stdlib floor.

    python benchmarks/bench_eventstream.py [--frames 20000] [--runs 7]

"floor" is the least any decoder must do with the same bytes: walk the frames,
check both CRC-32s and json.loads each payload. "pi_min" feeds the bytes through
_EventStream (64 KiB reads, as the transport delivers them) and the Bedrock
translator and builder, i.e. every event stream() would yield. Medians are
printed with their ratio; nothing is asserted.
"""

import argparse
import json
import os
import statistics
import struct
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pi_min  # noqa: E402


def frame(event_type: str, payload: dict) -> bytes:
    def header(name, value):
        raw, data = name.encode(), value.encode()
        return bytes([len(raw)]) + raw + b"\x07" + struct.pack(">H", len(data)) + data
    hb = header(":message-type", "event") + header(":event-type", event_type) + header(":content-type",
                                                                                       "application/json")
    body = json.dumps(payload, separators=(",", ":")).encode()
    prelude = struct.pack(">II", 16 + len(hb) + len(body), len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + hb + body
    return msg + struct.pack(">I", zlib.crc32(msg))


def make_body(n: int) -> bytes:
    out = [frame("messageStart", {"role": "assistant"})]
    for i in range(n):
        out.append(frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "tok%d " % i}, "p": "abcd"}))
    out.append(frame("contentBlockStop", {"contentBlockIndex": 0}))
    out.append(frame("messageStop", {"stopReason": "end_turn"}))
    out.append(frame("metadata", {"usage": {"inputTokens": 5, "outputTokens": n, "totalTokens": n + 5}}))
    return b"".join(out)


def floor(body: bytes) -> int:
    n, pos = 0, 0
    while pos < len(body):
        total, hlen = struct.unpack_from(">II", body, pos)
        if zlib.crc32(body[pos:pos + 8]) != struct.unpack_from(">I", body, pos + 8)[0]:
            raise SystemExit("bad prelude")
        if zlib.crc32(body[pos:pos + total - 4]) != struct.unpack_from(">I", body, pos + total - 4)[0]:
            raise SystemExit("bad crc")
        json.loads(body[pos + 12 + hlen:pos + total - 4])
        pos += total
        n += 1
    return n


def run_pi_min(body: bytes) -> int:
    model = pi_min.get_model("amazon-bedrock")
    b = pi_min._Builder(model)
    tr = pi_min._BRTranslator(b, None)
    d = pi_min._EventStream()
    n = 0
    for i in range(0, len(body), 65536):
        for kind, data in d.feed(body[i:i + 65536]):
            tr.event(kind, data)
            n += len(b.out)
            b.out.clear()
    b.done(tr.end(False))
    return n


def timed(fn, body, runs):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(body)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    for scale in (0.1, 1, 10):
        body = make_body(int(args.frames * scale))
        frames = floor(body)
        f = timed(floor, body, args.runs)
        p = timed(run_pi_min, body, args.runs)
        print("%7d frames (%6.1f KiB): floor %6.2f us/frame, pi_min %6.2f us/frame, ratio %.2fx"
              % (frames, len(body) / 1024, f / frames * 1e6, p / frames * 1e6, p / f))


if __name__ == "__main__":
    main()
