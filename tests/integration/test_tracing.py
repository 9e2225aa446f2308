"""One request produces the expected OpenTelemetry span tree, exported by BentoML's OTLP exporter to a
receiver that decodes the protocol as a collector does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import serve_with
from tests.otlp import OtlpReceiver
from tests.servers import Served, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def traced(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, OtlpReceiver]]:
    receiver = OtlpReceiver()
    tracing = "services.switchyard.tracing"
    options = (f"{tracing}.exporter_type=otlp {tracing}.sample_rate=1.0 {tracing}.otlp.protocol=http "
               f"{tracing}.otlp.endpoint={receiver.url}")
    for served in serve_with(tags, tmp_path_factory.mktemp("state-traced"), 1, bentoml_options=options,
                             grpc_port=str(free_port())):
        yield served, receiver
    receiver.close()


def test_one_request_gives_route_queue_and_inference_spans_under_the_http_span(
        traced: tuple[Served, OtlpReceiver], tags: dict[str, str]) -> None:
    served, receiver = traced
    r = httpx.post(f"{served.url}/v1/digits/predict", json={"inputs": [[0.0] * 64]}, timeout=30)
    assert r.status_code == 200
    tree: list[dict] = []
    end = time.monotonic() + 30
    while time.monotonic() < end:  # the SDK exports in batches, every few seconds
        ours = [s for s in receiver.spans if s["name"] == "switchyard.request"]
        if ours:
            trace_id = ours[-1]["trace_id"]
            tree = [s for s in receiver.spans if s["trace_id"] == trace_id]
            if {"switchyard.route", "switchyard.queue", "switchyard.inference"} <= {s["name"] for s in tree}:
                break
        time.sleep(0.5)
    names = {s["name"]: s for s in tree}
    print(sorted((s["name"], s["parent_id"][:6], s["span_id"][:6]) for s in tree))
    request = names["switchyard.request"]
    assert request["attributes"]["switchyard.version"] == r.headers["x-model-version"] == tags["mlp"]
    assert request["attributes"]["switchyard.route"] == "stable"
    for child in ("switchyard.route", "switchyard.queue", "switchyard.inference"):
        assert names[child]["parent_id"] == request["span_id"], child
    inference = names["switchyard.inference"]
    assert inference["attributes"]["switchyard.version"] == tags["mlp"]
    assert inference["attributes"]["switchyard.batch_rows"] >= 1
    assert names["switchyard.queue"]["end"] <= inference["start"] + 1000
    http = [s for s in tree if s["span_id"] == request["parent_id"]]
    assert http, "switchyard.request has no parent: BentoML's HTTP span is missing"


def test_a_generation_gives_prefill_and_decode_spans(traced: tuple[Served, OtlpReceiver],
                                                     lm_tags: dict[str, str]) -> None:
    from tests.integration.conftest import AUTH

    served, receiver = traced
    tag = lm_tags["fp32"]
    r = httpx.post(f"{served.url}/v1/admin/endpoints", headers=AUTH, timeout=60,
                   json={"name": "traced-writer", "task": "text-generation", "model": tag, "reason": "test"})
    assert r.status_code == 201, r.text
    with httpx.stream("POST", f"{served.url}/v1/traced-writer/generate", timeout=30,
                      json={"prompt": "The cat", "max_tokens": 12, "ignore_eos": True, "stream": True}) as s:
        assert s.status_code == 200 and sum(1 for _ in s.iter_lines()) > 12
    end, phases = time.monotonic() + 30, {}
    while time.monotonic() < end and len(phases) < 2:
        phases = {s["name"]: s for s in receiver.spans if s["name"] in ("switchyard.prefill", "switchyard.decode")
                  and s["attributes"].get("switchyard.endpoint") == "traced-writer"}
        time.sleep(0.5)
    seen = sorted({(s["name"], str(s["attributes"].get("switchyard.endpoint"))) for s in receiver.spans})
    assert len(phases) == 2, seen
    prefill, decode = phases["switchyard.prefill"], phases["switchyard.decode"]
    assert prefill["end"] <= decode["start"] + 1000 and decode["end"] > decode["start"]
    assert decode["attributes"]["switchyard.completion_tokens"] == 12
    assert prefill["trace_id"] == decode["trace_id"]


def test_a_grpc_call_continues_the_callers_trace(traced: tuple[Served, OtlpReceiver], tags: dict[str, str]) -> None:
    """No HTTP server makes a span for gRPC: Switchyard's own server span takes the caller's traceparent, and the
    request's spans hang under it as under BentoML's HTTP span."""
    import numpy as np
    import tritonclient.grpc as tc

    served, receiver = traced
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert served.grpc is not None
    client = tc.InferenceServerClient(served.grpc)
    pixels = tc.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(np.zeros((1, 64), np.float32))
    client.infer("digits", [pixels], headers={"traceparent": f"00-{trace_id}-{caller}-01"})
    end, tree = time.monotonic() + 30, []
    while time.monotonic() < end:
        tree = [s for s in receiver.spans if s["trace_id"] == trace_id]
        if {"switchyard.grpc.ModelInfer", "switchyard.request", "switchyard.inference"} <= {s["name"] for s in tree}:
            break
        time.sleep(0.5)
    names = {s["name"]: s for s in tree}
    print(sorted((s["name"], s["parent_id"][:6], s["span_id"][:6]) for s in tree))
    server = names["switchyard.grpc.ModelInfer"]
    assert server["parent_id"] == caller
    assert names["switchyard.request"]["parent_id"] == server["span_id"]
    assert names["switchyard.request"]["attributes"]["switchyard.version"] == tags["mlp"]
    assert names["switchyard.inference"]["parent_id"] == names["switchyard.request"]["span_id"]
