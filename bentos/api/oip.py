"""The Open Inference Protocol (v2 REST), spoken by Triton, KServe, MLServer and Seldon clients.

Every endpoint is a v2 model of the same name. Inference goes through the endpoint's own
routing, batching, fallback and metrics; `/versions/{version}/infer` is a pin. Inputs come
as JSON `data` or in the binary tensor extension (Inference-Header-Content-Length), and
outputs go back in binary when the client asks, as tritonclient does by default.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import EngineHolder
from bentos.api.http import ascii_int, counted, http_meta, read_body
from bentos.api.oip_tensors import (
    MAX_DIMS,
    MAX_INPUTS,
    OipError,
    check_batch,
    check_names,
    check_tensor,
    chosen,
    from_raw,
    from_values,
    items_of,
    raw_of,
    served_codec,
    tensor_meta,
)
from bentos.api.problems import first_error, json_response, oip_problem
from bentos.errors import ServingError
from bentos.tasks.base import Codec, oip_datatype

HEADER = "inference-header-content-length"
# What GET /v2 and gRPC's ServerMetadata say.
SERVER = {"name": "switchyard", "version": "1", "extensions": ["binary_tensor_data", "model_repository"]}


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    shape: list[int] = Field(max_length=MAX_DIMS)
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
    inputs: list[TensorIn] = Field(min_length=1, max_length=MAX_INPUTS)
    outputs: list[OutputRequest] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


def decode_input(t: TensorIn, spec: dict[str, Any], binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input from JSON `data` or, with `binary_data_size`, from the binary part after the JSON header."""
    want = check_tensor(t.name, t.datatype, t.shape, spec)
    size = t.parameters.get("binary_data_size")
    if size is None:
        if t.data is None:
            raise OipError(f"input {t.name}: no data and no binary_data_size", field=t.name)
        return from_values(t.data, want, t.shape, t.name), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise OipError(f"input {t.name}: binary_data_size must be a byte count", field=t.name)
    raw = binary[offset:offset + size]
    if len(raw) != size:
        raise OipError(f"input {t.name}: binary_data_size {size} runs past the request body", field=t.name)
    return from_raw(raw, want, t.shape, t.name), offset + size


def encode_outputs(tensors: dict[str, np.ndarray], request: InferRequest) -> tuple[list[dict[str, Any]], bytes]:
    wanted = {o.name: o for o in request.outputs} if request.outputs else None
    all_binary = bool(request.parameters.get("binary_data_output"))
    outputs, chunks = [], []
    for name, arr in chosen(tensors, wanted).items():
        binary = bool(wanted[name].parameters.get("binary_data", all_binary)) if wanted else all_binary
        entry: dict[str, Any] = {"name": name, "datatype": oip_datatype(arr.dtype.name), "shape": list(arr.shape)}
        if binary:
            raw = raw_of(arr)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else v
                             for v in arr.reshape(-1).tolist()]
        outputs.append(entry)
    return outputs, b"".join(chunks)


def oip_routes(holder: EngineHolder) -> list[Route]:
    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        ok = holder.get().ready
        return json_response({"ready": ok}, 200 if ok else 503)

    async def server(request: Request) -> Response:
        return json_response(SERVER)

    async def metadata(request: Request) -> Response:
        try:
            endpoint = await holder.serving().endpoint(request.path_params["model"])
            codec = served_codec(endpoint)
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
                codec = served_codec(endpoint)
                items = items_of(codec, _inputs(parsed, codec, binary), endpoint.limits.max_rows)
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
    specs = check_names([t.name for t in request.inputs], codec)
    tensors, offset = {}, 0
    for t in request.inputs:
        tensors[t.name], offset = decode_input(t, specs[t.name], binary, offset)
    return check_batch(tensors)
