"""The request body pi_min would send, without sending it: on_payload records the body and
sets the abort signal, so the stream ends before any connection is made."""

import threading

import pi_min


def sent_body(model, context, **options):
    seen = {}
    signal = threading.Event()

    def capture(body, _model):
        seen.update(body)
        signal.set()

    msg = pi_min.complete(model, context, on_payload=capture, signal=signal, **options)
    assert msg["stopReason"] == "aborted", msg.get("errorMessage")
    return seen
