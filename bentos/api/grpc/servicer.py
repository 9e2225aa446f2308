"""Triton's `GRPCInferenceService` over Switchyard's one serving path.

Each RPC does what the HTTP adapters do: turn its message into a `CallMeta` and items, ask `Serving`,
and turn the answer back into a message. Metadata are the credentials (`authorization: Bearer ...` or
`x-api-key`), `x-routing-key` the sticky key, the request's `model_version` (or `x-model-version`) a pin
with the rules of OIP's `/versions/{version}`, and the call's gRPC deadline its deadline. Errors become
statuses in one place (`status.abort`), from the one table in `bentos.api.problems`.

Generative models answer `ModelInfer` with the whole text, and `ModelStreamInfer` a response per piece
as Triton's decoupled models do, the last flagged `triton_final_response`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from tritonclient.grpc import service_pb2 as pb

from bentos.api.grpc.messages import parameters, parse, response, tensors_of, text_tensor, wants_raw
from bentos.api.grpc.status import abort
from bentos.api.http import MAX_TIMEOUT_S
from bentos.api.oip import SERVER
from bentos.api.oip_generate import prompt_of
from bentos.api.oip_tensors import chosen, items_of, served_codec, tensor_meta
from bentos.dataplane.call import CallMeta
from bentos.dataplane.serving import Ticket
from bentos.dataplane.tracing import server_span
from bentos.errors import InvalidInput, ServingError
from bentos.request_context import request_id, request_scope

if TYPE_CHECKING:
    from bentos.api.app import EngineHolder

SERVICE = "inference.GRPCInferenceService"
STREAM_IN_FLIGHT = 256  # requests of one ModelStreamInfer call running at once; the stream waits beyond
Context: TypeAlias = Any  # grpc.aio.ServicerContext: grpc ships no type hints


def metadata(context: Context) -> dict[str, str]:
    """The call's text metadata (keys are lower case on the wire, as the HTTP side's headers are made)."""
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def peer_host(peer: str) -> str | None:
    """The client's address from grpc's peer string: "ipv4:10.0.0.5:5123", "ipv6:[::1]:5123"."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return None


def call_meta(context: Context, md: Mapping[str, str], model: str, version: str, size: int) -> CallMeta:
    remaining = context.time_remaining()
    deadline = time.monotonic() + remaining if remaining is not None and remaining < MAX_TIMEOUT_S else None
    return CallMeta(model, md, peer_host(context.peer()), version or md.get("x-model-version") or None,
                    md.get("x-routing-key"), "api", "grpc", size, deadline, stored_pins=True)


class Inference:
    """The service's handlers; each takes the request's bytes (parsed here, so unreadable bytes are
    INVALID_ARGUMENT rather than grpc's INTERNAL)."""

    def __init__(self, holder: EngineHolder) -> None:
        self.holder = holder

    # --- health and metadata -------------------------------------------------------------------
    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.holder.get().ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest,
                              context: Context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**SERVER)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        endpoint = await self.holder.serving().endpoint(request.name)
        return pb.ModelReadyResponse(ready=endpoint.ready)

    async def model_metadata(self, request: pb.ModelMetadataRequest,
                             context: Context) -> pb.ModelMetadataResponse:
        endpoint = await self.holder.serving().endpoint(request.name)
        codec = served_codec(endpoint)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=endpoint.name, versions=[v.tag for v in endpoint.spec.versions] if endpoint.spec else [],
            platform="onnxruntime_onnx", inputs=[tensor(**t) for t in tensor_meta(codec.oip_inputs())],
            outputs=[tensor(**t) for t in tensor_meta(codec.oip_outputs())])

    # --- inference -----------------------------------------------------------------------------
    async def model_infer(self, raw: bytes, context: Context) -> pb.ModelInferResponse:
        md = metadata(context)
        with request_scope(md.get("x-request-id")) as rid, server_span("grpc.ModelInfer", md):
            try:
                answer = await self._one(raw, md, context)
            except ServingError as exc:
                await abort(context, exc)
            context.set_trailing_metadata((("x-request-id", rid),))
            return answer

    async def model_stream_infer(self, requests: AsyncIterator[bytes],
                                 context: Context) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of one stream run at once (up to STREAM_IN_FLIGHT, so they batch together); each answer,
        or its error as `error_message` (the stream goes on), is sent as it is ready."""
        md = metadata(context)
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def one(raw: bytes) -> None:
            with request_scope(None), server_span("grpc.ModelStreamInfer", md):
                try:
                    async for answer in self._run(raw, md, context):
                        await out.put(pb.ModelStreamInferResponse(infer_response=answer))
                except ServingError as exc:
                    await out.put(pb.ModelStreamInferResponse(error_message=f"{exc.message} "
                                                                            f"(request id {request_id()})"))
                finally:
                    room.release()

        reader = asyncio.create_task(self._read(requests, room, one, out))
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            reader.cancel()

    @staticmethod
    async def _read(requests: AsyncIterator[bytes], room: asyncio.Semaphore,
                    one: Callable[[bytes], Any], out: asyncio.Queue[Any]) -> None:
        running: set[asyncio.Task[None]] = set()
        try:
            async for raw in requests:
                await room.acquire()
                task = asyncio.create_task(one(raw))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)
        finally:
            for task in running:
                task.cancel()
            out.put_nowait(None)

    async def _one(self, raw: bytes, md: Mapping[str, str], context: Context) -> pb.ModelInferResponse:
        """One request, one response (a generative model's whole text). The hot path: no generator."""
        request = parse(pb.ModelInferRequest, raw)
        meta = call_meta(context, md, request.model_name, request.model_version, len(raw))
        async with self.holder.serving().admit(meta) as ticket:
            ticket.reserve(len(raw))
            if ticket.endpoint.task.execution != "decode":
                return await self._forward(ticket, request)
            async for answer in self._write(ticket, request, stream=False):
                return answer
        raise AssertionError("a generation ends with a final response")

    async def _run(self, raw: bytes, md: Mapping[str, str], context: Context) -> AsyncIterator[pb.ModelInferResponse]:
        """One request of a stream: one response, or for a generative model one per piece of text."""
        request = parse(pb.ModelInferRequest, raw)
        meta = call_meta(context, md, request.model_name, request.model_version, len(raw))
        async with self.holder.serving().admit(meta) as ticket:
            ticket.reserve(len(raw))
            if ticket.endpoint.task.execution == "decode":
                async for answer in self._write(ticket, request, stream=True):
                    yield answer
                return
            yield await self._forward(ticket, request)

    @staticmethod
    async def _forward(ticket: Ticket, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        endpoint = ticket.endpoint
        codec = served_codec(endpoint)
        answer = await ticket.infer(items_of(codec, tensors_of(request, codec), endpoint.limits.max_rows))
        outputs = chosen(answer.codec.to_oip(answer.outputs), [o.name for o in request.outputs] or None)
        return response(request, endpoint.name, answer.version, outputs, wants_raw(request), route=answer.route)

    async def _write(self, ticket: Ticket, request: pb.ModelInferRequest,
                     stream: bool) -> AsyncIterator[pb.ModelInferResponse]:
        """A generative model: `text_input` and sampling parameters in, `text_output` back, whole or (in a
        stream, unless its `stream` parameter is false) a response per piece and a final one."""
        params = parameters(request.parameters)
        (text,) = tensors_of(request, served_codec(ticket.endpoint))["text_input"].reshape(-1)
        try:
            prompt = text.decode() if isinstance(text, bytes) else str(text)
        except UnicodeDecodeError:
            raise InvalidInput("text_input", "BYTES element is not UTF-8 text") from None
        stream = stream and params.get("stream") is not False
        prompt_in = prompt_of(ticket, prompt, params, stream)
        ticket.body_read()
        gen = await ticket.generate(prompt_in.text, prompt_in.params)
        name, raw = ticket.endpoint.name, wants_raw(request)
        try:
            if stream:
                async for piece in gen.pieces():
                    yield response(request, name, gen.version, text_tensor(piece), raw, route=gen.route,
                                   triton_final_response=False)
                text_out = ""
            else:
                text_out = await gen.collect()
        finally:
            gen.close()
        yield response(request, name, gen.version, text_tensor(text_out), raw, route=gen.route,
                       triton_final_response=True, finish_reason=gen.finish_reason or "")


def handler(service: Inference) -> grpc.GenericRpcHandler:
    """The service's methods, each taking its request's bytes (see `Inference`)."""

    def unary(method: Callable[[Any, Context], Any], kind: type[Any]) -> grpc.RpcMethodHandler:
        async def run(raw: bytes, context: Context) -> Any:
            with request_scope(metadata(context).get("x-request-id")):
                try:
                    return await method(parse(kind, raw), context)
                except ServingError as exc:
                    await abort(context, exc)

        return grpc.unary_unary_rpc_method_handler(run, response_serializer=_serialize)

    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerLive": unary(service.server_live, pb.ServerLiveRequest),
        "ServerReady": unary(service.server_ready, pb.ServerReadyRequest),
        "ServerMetadata": unary(service.server_metadata, pb.ServerMetadataRequest),
        "ModelReady": unary(service.model_ready, pb.ModelReadyRequest),
        "ModelMetadata": unary(service.model_metadata, pb.ModelMetadataRequest),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(service.model_infer, response_serializer=_serialize),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(service.model_stream_infer,
                                                                  response_serializer=_serialize),
    })


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())
