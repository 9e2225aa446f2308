"""The Open Inference Protocol over gRPC on the shared two-worker `bentoml serve`, with Triton's own gRPC
client (`tritonclient.grpc`) and, where a test needs the wire itself (typed contents, garbage bytes,
trailers), grpc's generic stub. Every task type is also asked over gRPC in test_endpoints.py, and a
rollout is driven by gRPC traffic alone in test_rollouts.py."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from models.families.digits import splits
from tests.integration.conftest import AUTH, deploy
from tests.servers import Served

pytestmark = pytest.mark.integration
SERVICE = "inference.GRPCInferenceService"
X_TEST, _ = splits()["test"]


@pytest.fixture
def triton(server: Served) -> Iterator[tc.InferenceServerClient]:
    assert server.grpc is not None
    client = tc.InferenceServerClient(server.grpc)
    yield client
    client.close()


@pytest.fixture
def stub(server: Served) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    assert server.grpc is not None
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def redeploy(server: Served, versions: list[tuple[str, str, int]], sticky: bool = False) -> None:
    """A new split, then a second: both workers poll the control plane every 0.25 s."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert deploy(c, "digits", versions, sticky=sticky).status_code == 200
    time.sleep(1)


@pytest.fixture
def mlp_only(server: Served, tags: dict[str, str]) -> Iterator[None]:
    """digits at its default (the MLP alone) before and after the test."""
    redeploy(server, [(tags["mlp"], "stable", 100)])
    try:
        yield
    finally:
        redeploy(server, [(tags["mlp"], "stable", 100)])


def pixels(rows: np.ndarray) -> tc.InferInput:
    tensor = tc.InferInput("pixels", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows.astype(np.float32))
    return tensor


def status_of(info: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(info.value.status()).removeprefix("StatusCode.")


def test_health_metadata_and_reflection(server: Served, triton: tc.InferenceServerClient,
                                        tags: dict[str, str]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("digits")
    assert triton.get_server_metadata().name == "switchyard"
    meta = triton.get_model_metadata("digits")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("pixels", "FP32", [-1, 64])]
    assert tags["mlp"] in meta.versions
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata("no-such-model")
    assert status_of(info) == "NOT_FOUND" and "unknown endpoint 'no-such-model'" in info.value.message()

    assert server.grpc is not None
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):  # "" is what a Kubernetes gRPC probe asks
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services, services
    listener = httpx.get(f"{server.url}/v1/health", timeout=30).json()["grpc"]
    assert listener["up"] is True and f"127.0.0.1:{listener['port']}" == server.grpc


def test_grpc_answers_equal_http_answers(server: Served, triton: tc.InferenceServerClient, mlp_only: None,
                                         tags: dict[str, str]) -> None:
    rows = X_TEST[:8].astype(np.float32)
    over_grpc = triton.infer("digits", [pixels(rows)])
    assert over_grpc.get_response().model_version == tags["mlp"]
    over_http = httpx.post(f"{server.url}/v1/digits/predict", json={"inputs": rows.tolist()}, timeout=30).json()
    expected = np.array([p["probabilities"] for p in over_http["predictions"]], np.float32)
    np.testing.assert_allclose(over_grpc.as_numpy("probabilities"), expected, rtol=1e-5, atol=1e-6)

    texts = np.array([b"hello world", b"bonjour le monde"], dtype=object)
    text = tc.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(texts)
    embeddings = triton.infer("minilm", [text]).as_numpy("embeddings")
    http = httpx.post(f"{server.url}/v1/minilm/embed", json={"texts": ["hello world", "bonjour le monde"]},
                      timeout=30).json()["embeddings"]
    np.testing.assert_allclose(embeddings, np.array(http, np.float32), rtol=1e-4, atol=1e-5)


def test_typed_contents_in_typed_contents_out(stub: service_pb2_grpc.GRPCInferenceServiceStub,
                                              triton: tc.InferenceServerClient, mlp_only: None) -> None:
    rows = X_TEST[:3].astype(np.float32)
    request = pb.ModelInferRequest(model_name="digits", id="typed-1")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[3, 64])
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    answer, call = stub.ModelInfer.with_call(request, metadata=(("x-request-id", "my-request-7"),))
    assert answer.id == "typed-1" and not answer.raw_output_contents
    typed = np.array(answer.outputs[0].contents.fp32_contents, np.float32).reshape(3, 10)
    np.testing.assert_allclose(typed, triton.infer("digits", [pixels(rows)]).as_numpy("probabilities"), rtol=1e-6)
    assert ("x-request-id", "my-request-7") in tuple(call.trailing_metadata())

    request.parameters["binary_data_output"].bool_param = True  # asked for: raw, whatever the inputs
    assert len(stub.ModelInfer(request).raw_output_contents) == 1


@pytest.mark.parametrize(("case", "code", "needle"), [
    ("garbage", "INVALID_ARGUMENT", "not a ModelInferRequest message"),
    ("datatype", "INVALID_ARGUMENT", "input pixels: datatype INT32 does not match the model's FP32"),
    ("shape", "INVALID_ARGUMENT", "input pixels: shape [2, 63] does not fit the model's [-1, 64]"),
    ("short", "INVALID_ARGUMENT", "input pixels: 100 bytes do not make FP32 of shape [2, 64] (512 bytes)"),
    ("rows", "INVALID_ARGUMENT", "inputs: at most 64 rows (limits.max_rows)"),
    ("size", "RESOURCE_EXHAUSTED", "exceeds 1000000 bytes (limits.max_body_bytes)"),
    ("model", "NOT_FOUND", "unknown endpoint 'nope'"),
    ("unknown", "INVALID_ARGUMENT", "unknown input 'pixel'; the model takes pixels"),
])
def test_bad_input_gets_its_status_and_the_server_stays_ready(server: Served, triton: tc.InferenceServerClient,
                                                              case: str, code: str, needle: str) -> None:
    assert server.grpc is not None

    def message(name: str, datatype: str, shape: list[int], raw: bytes, model: str = "digits") -> bytes:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        return bytes(request.SerializeToString())

    body = {
        "garbage": b"\xff\xfe not protobuf \x00\x01",
        "datatype": message("pixels", "INT32", [2, 64], bytes(512)),
        "shape": message("pixels", "FP32", [2, 63], bytes(504)),
        "short": message("pixels", "FP32", [2, 64], bytes(100)),
        "rows": message("pixels", "FP32", [65, 64], bytes(65 * 256)),
        "size": message("pixels", "FP32", [4000, 64], bytes(4000 * 256)),
        "model": message("pixels", "FP32", [1, 64], bytes(256), model="nope"),
        "unknown": message("pixel", "FP32", [1, 64], bytes(256)),
    }[case]
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes in, bytes out: the wire as sent
        with pytest.raises(grpc.RpcError) as err:
            infer(body, timeout=30)
    assert err.value.code().name == code and needle in err.value.details(), err.value.details()
    assert any(k == "x-request-id" for k, _ in err.value.trailing_metadata())
    assert triton.is_server_ready() and triton.is_model_ready("digits")


def test_a_pin_a_sticky_key_and_the_stream(server: Served, triton: tc.InferenceServerClient,
                                            tags: dict[str, str], mlp_only: None) -> None:
    redeploy(server, [(tags["mlp"], "stable", 50), (tags["cnn"], "canary", 50)], sticky=True)
    rows = X_TEST[:1]
    seen_by_key: dict[str, set[str]] = {}
    for key in (f"user-{i}" for i in range(12)):
        for _ in range(5):
            version = triton.infer("digits", [pixels(rows)], headers={"x-routing-key": key}).get_response()
            seen_by_key.setdefault(key, set()).add(version.model_version)
    assert all(len(v) == 1 for v in seen_by_key.values()), seen_by_key  # one version per key
    assert set().union(*seen_by_key.values()) == {tags["mlp"], tags["cnn"]}  # and keys spread over both
    pinned = triton.infer("digits", [pixels(rows)], model_version=tags["cnn"].split(":")[1])
    assert pinned.get_response().model_version == tags["cnn"]
    header_pin = triton.infer("digits", [pixels(rows)], headers={"x-model-version": tags["mlp"]})
    assert header_pin.get_response().model_version == tags["mlp"]

    # ModelStreamInfer: 20 requests and a bad one on one stream; one answer or error each, the stream goes on.
    answers: list[Any] = []
    done = threading.Event()

    def collect(result: Any, error: Any) -> None:
        answers.append(error if error is not None else result)
        if len(answers) == 21:
            done.set()

    triton.start_stream(callback=collect)
    for i in range(20):
        triton.async_stream_infer("digits", [pixels(X_TEST[i:i + 1])], request_id=str(i))
    triton.async_stream_infer("digits", [pixels(np.zeros((1, 63)))], request_id="bad")
    assert done.wait(60), f"{len(answers)} of 21 answers"
    triton.stop_stream()
    errors = [a for a in answers if isinstance(a, InferenceServerException)]
    assert len(errors) == 1 and "shape [1, 63]" in errors[0].message()
    ids = sorted(int(a.get_response().id) for a in answers if not isinstance(a, InferenceServerException))
    assert ids == list(range(20))


def test_ninety_ten_split_over_grpc_lands_as_over_http(server: Served, tags: dict[str, str],
                                                       mlp_only: None) -> None:
    redeploy(server, [(tags["mlp"], "stable", 90), (tags["cnn"], "canary", 10)])
    assert server.grpc is not None
    versions = asyncio.run(_spread(server.grpc, 2000))
    canary = versions[tags["cnn"]]
    assert canary + versions[tags["mlp"]] == 2000, versions
    assert abs(canary - 200) <= 4 * math.sqrt(2000 * 0.1 * 0.9), versions  # test_serving's tolerance over HTTP
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    grpc_lines = [line for line in metrics.splitlines()
                  if line.startswith("switchyard_requests_total{") and 'protocol="grpc"' in line]
    assert any('route="canary"' in line for line in grpc_lines), grpc_lines


async def _spread(target: str, n: int, concurrency: int = 32) -> Counter[str]:
    """n one-row requests over a few channels (so both workers take some), concurrently."""
    versions: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        request = pb.ModelInferRequest(model_name="digits")
        request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        request.raw_input_contents.append(X_TEST[i % len(X_TEST)].astype("<f4").tobytes())
        async with sem:
            answer = await service_pb2_grpc.GRPCInferenceServiceStub(channels[i % 4]).ModelInfer(request, timeout=60)
        versions[answer.model_version] += 1

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        for channel in channels:
            await channel.close()
    return versions


def test_keys_and_rates_over_grpc(server: Served, triton: tc.InferenceServerClient, tags: dict[str, str],
                                  mlp_only: None) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/admin/keys", json={"name": "grpc-caller", "reason": "test", "rate": 1, "burst": 3},
                   headers=AUTH)
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
    time.sleep(1)  # made through one worker; the other learns it at its next poll (0.25 s)
    try:
        assert server.grpc is not None
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="digits")
            request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
            request.raw_input_contents.append(X_TEST[0].astype("<f4").tobytes())
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request, metadata=(("authorization", "Bearer sy_not-a-key"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            bearer = (("authorization", f"Bearer {secret}"),)
            codes, retry_after = Counter(), []
            for _ in range(8):  # a burst of 3, then 1/s
                try:
                    stub.ModelInfer(request, metadata=bearer)
                    codes["OK"] += 1
                except grpc.RpcError as e:
                    codes[e.code().name] += 1
                    retry_after += [v for k, v in e.trailing_metadata() if k == "retry-after"]
            assert codes["OK"] in (3, 4) and codes["RESOURCE_EXHAUSTED"] == 8 - codes["OK"], codes
            assert retry_after and all(int(v) >= 1 for v in retry_after)
            pinned = pb.ModelInferRequest()
            pinned.CopyFrom(request)
            pinned.model_version = tags["mlp"].split(":")[1]
            time.sleep(1.5)  # a token back in the bucket
            with pytest.raises(grpc.RpcError) as err:  # a key without the pin scope may not pin
                stub.ModelInfer(pinned, metadata=(("x-api-key", secret),))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    finally:
        httpx.delete(f"{server.url}/v1/admin/keys/grpc-caller", params={"reason": "test"}, headers=AUTH, timeout=30)
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert any('key="grpc-caller"' in line and 'protocol="grpc"' in line for line in metrics.splitlines())
