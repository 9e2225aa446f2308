"""OIP gRPC messages to tensors and back (bentos/api/grpc/messages.py), the status table's gRPC side, and the
peer address: no server, Triton's generated messages."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from bentos.api.grpc.messages import parameters, parse, response, tensors_of, wants_raw
from bentos.api.grpc.servicer import peer_host
from bentos.api.grpc.status import code_of, trailers_of
from bentos.api.oip_tensors import raw_of
from bentos.errors import KINDS, RateLimited, ServingError


class Declared:
    """A codec as far as decoding asks: the inputs a model declares."""

    def __init__(self, *specs: dict[str, Any]) -> None:
        self.specs = list(specs)

    def oip_inputs(self) -> list[dict[str, Any]]:
        return self.specs


TWO = Declared({"name": "a", "dtype": "float32", "shape": ["batch", 3]},
               {"name": "t", "dtype": "object", "shape": ["batch"]})


def request(raw: bool, a: np.ndarray, texts: list[bytes]) -> pb.ModelInferRequest:
    r = pb.ModelInferRequest(model_name="m")
    ta = r.inputs.add(name="a", datatype="FP32", shape=list(a.shape))
    tt = r.inputs.add(name="t", datatype="BYTES", shape=[len(texts)])
    if raw:
        r.raw_input_contents.extend([raw_of(a), raw_of(np.array(texts, dtype=object))])
    else:
        ta.contents.fp32_contents.extend(a.reshape(-1).tolist())
        tt.contents.bytes_contents.extend(texts)
    return r


@pytest.mark.parametrize("raw", [True, False])
def test_raw_and_typed_inputs_decode_to_the_same_tensors(raw: bool) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = tensors_of(request(raw, a, [b"x", "é".encode()]), TWO)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got["a"], a)
    assert got["t"].tolist() == [b"x", "é".encode()]
    assert wants_raw(request(raw, a, [b"x", b"y"])) is raw


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda r: r.raw_input_contents.pop(), "raw_input_contents: 1 entries for 2 inputs"),
    (lambda r: r.raw_input_contents.__setitem__(1, b"\x05\x00\x00\x00ab"), "input t: a BYTES element of 5 bytes"),
    (lambda r: r.raw_input_contents.__setitem__(1, raw_of(np.array([b"x", b"y"], object)) + b"!"),
     "input t: 1 bytes left over after 2 BYTES elements"),
    (lambda r: r.inputs[0].shape.__setitem__(0, -2), "input a: shape [-2, 3] must be at most 8 sizes, none negative"),
    (lambda r: r.inputs[1].__setattr__("name", "a"), "input 'a' is sent more than once"),
    (lambda r: r.inputs[0].__setattr__("datatype", "FP16"), "datatype FP16 does not match the model's FP32"),
])
def test_bad_tensors_name_the_input_and_the_rule(mutate: Any, needle: str) -> None:
    r = request(True, np.zeros((2, 3), np.float32), [b"x", b"y"])
    mutate(r)
    with pytest.raises(ServingError) as info:
        tensors_of(r, TWO)  # type: ignore[arg-type]
    assert needle in info.value.message and info.value.kind == "invalid"


def test_an_fp16_input_must_come_raw() -> None:
    codec = Declared({"name": "h", "dtype": "float16", "shape": ["batch", 2]})
    r = pb.ModelInferRequest()
    r.inputs.add(name="h", datatype="FP16", shape=[1, 2])
    with pytest.raises(ServingError, match="FP16 has no typed contents; send it in raw_input_contents"):
        tensors_of(r, codec)  # type: ignore[arg-type]
    r.raw_input_contents.append(np.array([[1.5, -2]], "<f2").tobytes())
    assert tensors_of(r, codec)["h"].tolist() == [[1.5, -2.0]]  # type: ignore[arg-type]


def test_responses_are_raw_or_typed_and_fp16_is_always_raw() -> None:
    probs = np.array([[0.25, 0.75]], np.float32)
    typed = response(pb.ModelInferRequest(id="7"), "m", "m:v1", {"p": probs}, raw=False, route="stable")
    assert typed.id == "7" and list(typed.outputs[0].contents.fp32_contents) == [0.25, 0.75]
    assert not typed.raw_output_contents and parameters(typed.parameters) == {"route": "stable"}
    raw = response(pb.ModelInferRequest(), "m", "m:v1", {"p": probs}, raw=True)
    assert np.frombuffer(raw.raw_output_contents[0], "<f4").tolist() == [0.25, 0.75]
    half = response(pb.ModelInferRequest(), "m", "m:v1", {"p": probs, "h": probs.astype(np.float16)}, raw=False)
    assert len(half.raw_output_contents) == 2 and [o.datatype for o in half.outputs] == ["FP32", "FP16"]


def test_unreadable_bytes_are_the_callers_fault() -> None:
    with pytest.raises(ServingError) as info:
        parse(pb.ModelInferRequest, b"\xff\xfe not protobuf")
    assert info.value.kind == "malformed" and code_of(info.value) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_a_grpc_status(kind: str) -> None:
    exc = type("E", (ServingError,), {"kind": kind})("x")
    assert isinstance(code_of(exc), grpc.StatusCode) and code_of(exc) != grpc.StatusCode.OK


def test_a_rate_limit_says_when_to_retry() -> None:
    exc = RateLimited("API key k: over its rate of 1/s", 0.2)
    assert code_of(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ("retry-after", "1") in trailers_of(exc)


@pytest.mark.parametrize(("peer", "host"), [("ipv4:10.0.0.5:5123", "10.0.0.5"), ("ipv6:[::1]:5123", "::1"),
                                            ("unix:/tmp/s.sock", None)])
def test_the_client_address_comes_from_the_peer(peer: str, host: str | None) -> None:
    assert peer_host(peer) == host
