"""Throughput of pi_min.stream against the stdlib floor, on loopback.

    python benchmarks/bench_stream.py [--deltas 20000] [--runs 7] [--family openai|anthropic|gemini|responses|all]

The server sends one recorded-style stream of the family (N text deltas, then a
tool call of N/10 argument fragments): OpenAI chat completions, Anthropic
Messages or OpenAI Responses (named events), or Gemini (whole chunks; the call in
one part). "floor" is the least work
any stdlib client must do for it: http.client reads the body, splits lines and
json.loads each data line. "pi_min" runs the full stream(): SSE parser,
translator, event builder and partial-JSON on tool arguments. Medians of the
runs are printed with their ratio; nothing here is asserted.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pi_min  # noqa: E402


def make_body(deltas: int) -> bytes:
    env = '{"id":"chatcmpl-b","object":"chat.completion.chunk","created":1,"model":"m","choices":[%s]}'
    lines = []
    for i in range(deltas):
        lines.append(env % json.dumps({"index": 0, "delta": {"content": "tok%d " % i}, "finish_reason": None}))
    lines.append(env % json.dumps({"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "write", "arguments": ""}}]}}))
    lines.append(env % json.dumps({"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '{"content":"'}}]}}))
    for i in range(deltas // 10):
        lines.append(env % json.dumps({"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "line %d\\n" % i}}]}}))
    lines.append(env % json.dumps({"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": '"}'}}]}}))
    lines.append(env % json.dumps({"index": 0, "delta": {}, "finish_reason": "tool_calls"}))
    body = "".join("data: %s\n\n" % line for line in lines) + "data: [DONE]\n\n"
    return body.encode()


def make_am_body(deltas: int) -> bytes:
    """The same answer as make_body, as Anthropic Messages events."""
    def ev(name, data):
        return "event: %s\ndata: %s\n\n" % (name, json.dumps(data, separators=(",", ":")))
    out = [ev("message_start", {"type": "message_start", "message": {
        "id": "msg_b", "type": "message", "role": "assistant", "content": [], "model": "m", "stop_reason": None,
        "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}})]
    for i in range(deltas):
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": "tok%d " % i}}))
    out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(ev("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "write", "input": {}}}))
    pieces = ['{"content":"'] + ["line %d\\n" % i for i in range(deltas // 10)] + ['"}']
    for piece in pieces:
        out.append(ev("content_block_delta", {"type": "content_block_delta", "index": 1,
                                              "delta": {"type": "input_json_delta", "partial_json": piece}}))
    out.append(ev("content_block_stop", {"type": "content_block_stop", "index": 1}))
    out.append(ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                    "usage": {"output_tokens": deltas}}))
    out.append(ev("message_stop", {"type": "message_stop"}))
    return "".join(out).encode()


def make_gemini_body(deltas: int) -> bytes:
    """The same answer as Gemini streams it: one whole GenerateContentResponse per
    event, with the usage snapshot Google puts on every chunk, `\r\n\r\n` between
    events; the call comes whole (its N/10 lines in one part) with the finishReason."""
    def chunk(parts, usage, finish=None):
        cand = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        return "data: %s\r\n\r\n" % json.dumps({"candidates": [cand], "usageMetadata": usage,
                                                 "modelVersion": "gemini-2.5-flash", "responseId": "bench"},
                                                separators=(",", ": "))
    usage = {"promptTokenCount": 10, "totalTokenCount": 10,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]}
    out = [chunk([{"text": "tok%d " % i}], usage) for i in range(deltas)]
    args = {"content": "".join("line %d\n" % i for i in range(deltas // 10))}
    out.append(chunk([{"functionCall": {"name": "write", "args": args}}],
                     dict(usage, candidatesTokenCount=deltas, totalTokenCount=deltas + 10), "STOP"))
    return "".join(out).encode()


def make_or_body(deltas: int) -> bytes:
    """The same answer as make_body, as OpenAI Responses events (ids and sequence numbers as sent live)."""
    seq = [0]

    def ev(data):
        data["sequence_number"] = seq[0]
        seq[0] += 1
        return "event: %s\ndata: %s\n\n" % (data["type"], json.dumps(data, separators=(",", ":")))
    resp = {"id": "resp_b", "object": "response", "status": "in_progress", "model": "m", "output": [], "usage": None}
    msg = {"id": "msg_b", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    call = {"id": "fc_b", "type": "function_call", "status": "in_progress", "arguments": "", "call_id": "call_b",
            "name": "write"}
    out = [ev({"type": "response.created", "response": resp}),
           ev({"type": "response.output_item.added", "output_index": 0, "item": msg}),
           ev({"type": "response.content_part.added", "item_id": "msg_b", "output_index": 0, "content_index": 0,
               "part": {"type": "output_text", "annotations": [], "text": ""}})]
    text = []
    for i in range(deltas):
        text.append("tok%d " % i)
        out.append(ev({"type": "response.output_text.delta", "item_id": "msg_b", "output_index": 0,
                       "content_index": 0, "delta": text[-1], "logprobs": []}))
    done = dict(msg, status="completed", content=[{"type": "output_text", "annotations": [], "text": "".join(text)}])
    out.append(ev({"type": "response.output_item.done", "output_index": 0, "item": done}))
    out.append(ev({"type": "response.output_item.added", "output_index": 1, "item": call}))
    pieces = ['{"content":"'] + ["line %d\\n" % i for i in range(deltas // 10)] + ['"}']
    for piece in pieces:
        out.append(ev({"type": "response.function_call_arguments.delta", "item_id": "fc_b", "output_index": 1,
                       "delta": piece}))
    args = "".join(pieces)
    out.append(ev({"type": "response.function_call_arguments.done", "item_id": "fc_b", "output_index": 1,
                   "arguments": args}))
    out.append(ev({"type": "response.output_item.done", "output_index": 1,
                   "item": dict(call, status="completed", arguments=args)}))
    out.append(ev({"type": "response.completed", "response": dict(resp, status="completed", output=[], usage={
        "input_tokens": 10, "output_tokens": deltas, "total_tokens": 10 + deltas})}))
    return "".join(out).encode()


FAMILIES = {  # name -> (body maker, provider, base path)
    "openai": (make_body, "groq", "/v1"),
    "anthropic": (make_am_body, "anthropic", ""),
    "gemini": (make_gemini_body, "google", "/v1beta"),
    "responses": (make_or_body, "openai", "/v1"),
}


def serve(body: bytes):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    payload = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def handle(conn):
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head_end = buf.index(b"\r\n\r\n") + 4
                length = 0
                for line in buf[:head_end].split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(buf) < head_end + length:
                    buf += conn.recv(65536)
                buf = buf[head_end + length:]
                conn.sendall(payload)

    def loop():
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


def floor(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", "/v1/chat/completions", body=b"{}", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    n = 0
    for line in resp.read().split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            json.loads(line[6:])
            n += 1
    conn.close()
    return n


def run_pi_min(port: int, family: str = "openai") -> int:
    _, provider, path = FAMILIES[family]
    n = 0
    for event in pi_min.stream(provider, "hi", base_url="http://127.0.0.1:%d%s" % (port, path), api_key="k"):
        n += 1
        if event["type"] == "error":
            raise SystemExit(event["error"]["errorMessage"])
    return n


def timed(fn, port, runs, *args):
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(port, *args)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def import_time(runs: int) -> float:
    """Median cumulative import time of pi_min in microseconds (-X importtime),
    which is steadier than timing whole interpreter starts."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys; sys.path.insert(0, %r); import pi_min" % root
    samples = []
    for _ in range(runs):
        err = subprocess.run([sys.executable, "-I", "-X", "importtime", "-c", code],
                             capture_output=True, text=True, check=True).stderr
        line = [ln for ln in err.splitlines() if ln.rstrip().endswith("| pi_min")][-1]
        samples.append(int(line.split("|")[1]))
    return statistics.median(samples)


def bench(family: str, deltas: int, runs: int, scales) -> None:
    make = FAMILIES[family][0]
    body = make(deltas)
    port = serve(body)
    run_pi_min(port, family)  # warm up (table load, pooled connection)
    f = timed(floor, port, runs)
    p = timed(run_pi_min, port, runs, family)
    frames = body.count(b"data: ")  # one data line per frame in every family
    print("[%s] body %.1f KiB, %d frames, %d runs (medians)" % (family, len(body) / 1024, frames, runs))
    print("floor  (http.client + json.loads per line): %7.1f ms  %6.2f us/frame" % (f * 1e3, f / frames * 1e6))
    print("pi_min (stream(), all events)             : %7.1f ms  %6.2f us/frame  ratio %.2fx"
          % (p * 1e3, p / frames * 1e6, p / f))
    for scale in scales:
        big = make(int(deltas * scale))
        port2 = serve(big)
        run_pi_min(port2, family)  # the server builds its payload outside the traced run
        tracemalloc.start()
        run_pi_min(port2, family)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t = timed(run_pi_min, port2, 3, family)
        print("x%g deltas (%d frames): %.1f ms, %.2f us/frame, peak traced memory %.1f MiB"
              % (scale, big.count(b"data: "), t * 1e3, t / big.count(b"data: ") * 1e6, peak / 2**20))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deltas", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--family", choices=sorted(FAMILIES) + ["all"], default="all")
    args = ap.parse_args()
    for family in sorted(FAMILIES) if args.family == "all" else [args.family]:
        scales = (0.1, 1, 10) if family in ("anthropic", "gemini", "responses") else (1, 4)  # 2k to 200k events
        bench(family, args.deltas, args.runs, scales)
    print("import pi_min (cumulative, -X importtime, median): %.1f ms" % (import_time(max(5, args.runs)) / 1e3))


if __name__ == "__main__":
    main()
