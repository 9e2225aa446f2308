"""The Open Inference Protocol (v2 REST), spoken by Triton, KServe, MLServer and Seldon clients.

Every endpoint is a v2 model of the same name. Inference goes through the endpoint's own
routing, batching, fallback and metrics; `/versions/{version}/infer` is a pin. Inputs come
as JSON `data` or in the binary tensor extension (Inference-Header-Content-Length), and
outputs go back in binary when the client asks, as tritonclient does by default.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import EngineHolder
from bentos.api.http import ascii_int, counted, http_meta, read_body
from bentos.api.problems import first_error, json_response, oip_problem
from bentos.dataplane.endpoint import Endpoint
from bentos.errors import InvalidInput, NoDeployment, ServingError
from bentos.tasks.base import OIP_DTYPES, Codec, oip_datatype

HEADER = "inference-header-content-length"


class OipError(ServingError):
    status = 400


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    shape: list[int] = Field(max_length=8)
    datatype: str
    data: Any = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class OutputRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    inputs: list[TensorIn] = Field(min_length=1, max_length=64)
    outputs: list[OutputRequest] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


def _shape(spec: dict[str, Any]) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in spec["shape"]]


def tensor_meta(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": s["name"], "datatype": oip_datatype(s["dtype"]), "shape": _shape(s)} for s in specs]


def _bytes_elements(raw: bytes, count: int, name: str) -> np.ndarray:
    """BYTES in the binary extension: each element a 4-byte little-endian length, then the bytes."""
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise OipError(f"input {name}: binary BYTES data ends early")
        (n,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4:offset + 4 + n])
        offset += 4 + n
    return np.array(out, dtype=object)


def decode_input(t: TensorIn, spec: dict[str, Any], binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    want = oip_datatype(spec["dtype"])
    if t.datatype != want:
        raise OipError(f"input {t.name}: datatype {t.datatype} does not match the model's {want}")
    expected = _shape(spec)
    if len(t.shape) != len(expected) or any(e not in (-1, g) for e, g in zip(expected, t.shape, strict=True)):
        raise OipError(f"input {t.name}: shape {t.shape} does not fit the model's {expected}")
    count = math.prod(t.shape)
    size = t.parameters.get("binary_data_size")
    if size is not None:
        raw = binary[offset:offset + int(size)]
        if len(raw) != int(size):
            raise OipError(f"input {t.name}: binary_data_size {size} runs past the request body")
        if want == "BYTES":
            return _bytes_elements(raw, count, t.name).reshape(t.shape), offset + int(size)
        dtype = np.dtype(OIP_DTYPES[want]).newbyteorder("<")
        if len(raw) != count * dtype.itemsize:
            raise OipError(f"input {t.name}: {len(raw)} bytes do not make {want} of shape {t.shape}")
        return np.frombuffer(raw, dtype).reshape(t.shape), offset + int(size)
    if t.data is None:
        raise OipError(f"input {t.name}: no data and no binary_data_size")
    try:
        arr = np.array(t.data, dtype=object if want == "BYTES" else OIP_DTYPES[want])
    except (TypeError, ValueError, OverflowError):
        raise OipError(f"input {t.name}: data is not {want}") from None
    if arr.size != count:
        raise OipError(f"input {t.name}: {arr.size} values do not fill shape {t.shape}")
    return arr.reshape(t.shape), offset


def encode_outputs(tensors: dict[str, np.ndarray], request: InferRequest) -> tuple[list[dict[str, Any]], bytes]:
    wanted = {o.name: o for o in request.outputs} if request.outputs else None
    if wanted:
        unknown = [n for n in wanted if n not in tensors]
        if unknown:
            raise OipError(f"unknown output {unknown[0]!r}; outputs: {', '.join(tensors)}")
    all_binary = bool(request.parameters.get("binary_data_output"))
    outputs, chunks = [], []
    for name, arr in tensors.items():
        if wanted is not None and name not in wanted:
            continue
        binary = bool(wanted[name].parameters.get("binary_data", all_binary)) if wanted else all_binary
        entry: dict[str, Any] = {"name": name, "datatype": oip_datatype(arr.dtype.name), "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outputs.append(entry)
    return outputs, b"".join(chunks)


def _codec(endpoint: Endpoint) -> Codec:
    if endpoint.spec is None or endpoint.spec.stable.tag not in endpoint.slots:
        raise NoDeployment(f"model {endpoint.name} has no deployed version yet")
    return endpoint.slots[endpoint.spec.stable.tag].version.codec


def oip_routes(holder: EngineHolder) -> list[Route]:
    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        ok = holder.get().ready
        return json_response({"ready": ok}, 200 if ok else 503)

    async def server(request: Request) -> Response:
        return json_response({"name": "switchyard", "version": "1", "extensions": ["binary_tensor_data"]})

    async def metadata(request: Request) -> Response:
        try:
            endpoint = await holder.serving().endpoint(request.path_params["model"])
            codec = _codec(endpoint)
        except ServingError as exc:
            return oip_problem(exc)
        versions = [v.tag for v in endpoint.spec.versions] if endpoint.spec else []
        return json_response({"name": endpoint.name, "versions": versions, "platform": "onnxruntime_onnx",
                              "parameters": {"task": endpoint.task.name},
                              "inputs": tensor_meta(codec.oip_inputs()), "outputs": tensor_meta(codec.oip_outputs())})

    async def model_ready(request: Request) -> Response:
        try:
            endpoint = await holder.serving().endpoint(request.path_params["model"])
        except ServingError as exc:
            return oip_problem(exc)
        return json_response({"name": endpoint.name, "ready": endpoint.ready}, 200 if endpoint.ready else 503)

    async def infer(request: Request) -> Response:
        # A version in the path is a pin, with the same rules as X-Model-Version, and may name a stored version.
        name = request.path_params["model"]
        try:
            meta = http_meta(request, name, "oip", request.path_params.get("version"), stored_pins=True)
            async with holder.serving().admit(meta) as ticket:
                endpoint = ticket.endpoint
                body = await read_body(counted(request, ticket), endpoint.limits.max_body_bytes,
                                       "limits.max_body_bytes")
                parsed, binary = _parse(body, request.headers.get(HEADER))
                codec = _codec(endpoint)
                items = codec.from_oip(_inputs(parsed, codec, binary))
                if len(items) > endpoint.limits.max_rows:
                    raise InvalidInput("inputs", f"at most {endpoint.limits.max_rows} rows (limits.max_rows)")
                answer = await ticket.infer(items)
            outputs, raw = encode_outputs(answer.codec.to_oip(answer.outputs), parsed)
        except ServingError as exc:
            return oip_problem(exc)
        head = json.dumps({"model_name": endpoint.name, "model_version": answer.version,
                           **({"id": parsed.id} if parsed.id is not None else {}), "outputs": outputs}).encode()
        headers = {"X-Model-Version": answer.version, "X-Route": answer.route}
        if raw:
            headers["Inference-Header-Content-Length"] = str(len(head))
            return Response(head + raw, headers=headers, media_type="application/octet-stream")
        return Response(head, headers=headers, media_type="application/json")

    return [
        Route("/v2", server, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version:path}/infer", infer, methods=["POST"]),
    ]


def _parse(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    split = len(body)
    if header_length is not None:
        declared = ascii_int(header_length)
        if declared is None or declared > len(body):
            raise OipError(f"Inference-Header-Content-Length {header_length!r} does not fit a {len(body)}-byte body")
        split = declared
    try:
        return InferRequest.model_validate_json(body[:split] or b"{}"), body[split:]
    except ValidationError as exc:
        raise OipError(first_error(exc)) from None


def _inputs(request: InferRequest, codec: Codec, binary: bytes) -> dict[str, np.ndarray]:
    specs = {s["name"]: s for s in codec.oip_inputs()}
    names = [t.name for t in request.inputs]
    for name in names:
        if name not in specs:
            raise OipError(f"unknown input {name!r}; the model takes {', '.join(specs)}")
    missing = [n for n in specs if n not in names]
    if missing:
        raise OipError(f"missing input {missing[0]!r}; the model takes {', '.join(specs)}")
    tensors, offset = {}, 0
    for t in request.inputs:
        tensors[t.name], offset = decode_input(t, specs[t.name], binary, offset)
    batch = {len(a) for a in tensors.values()}
    if len(batch) != 1 or 0 in batch:
        raise OipError("every input needs the same, non-zero first dimension (the batch)")
    return tensors
