"""The Open Inference Protocol's generate extension, as Triton has it: POST /v2/models/{name}/generate and
generate_stream (also under /versions/{version}/, a pin with the same rules as /infer).

The request is `{"text_input": ..., "parameters": {...}}`; sampling fields (max_tokens, temperature, top_p,
top_k, stop, seed, ignore_eos) are read from `parameters` or from the top level, as Triton's examples send
them. The answer is `{"model_name", "model_version", "text_output"}`, plus finish_reason and usage;
generate_stream sends one such event per token (the last with finish_reason and usage), and an error
after the start as `data: {"error": ...}`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import EngineHolder
from bentos.api.generate import Prompt, open_generation, streamed, usage_of, whole
from bentos.api.http import counted, http_meta, read_body
from bentos.api.problems import oip_problem, validation_errors
from bentos.api.sse import event
from bentos.dataplane.generation import Generation
from bentos.dataplane.serving import Ticket
from bentos.errors import InvalidFields, InvalidInput, ServingError
from bentos.request_context import request_id
from bentos.tasks.text_generation import params_of

SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "ignore_eos")


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as exc:
        raise ServingError(f"body: not JSON ({exc})", field="body") from None
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object with text_input")
    return body


async def read_prompt(request: Request, ticket: Ticket, stream: bool) -> Prompt:
    limits = ticket.endpoint.limits
    body = _body(await read_body(counted(request, ticket), limits.max_body_bytes, "limits.max_body_bytes"))
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters", "must be an object")
    return prompt_of(ticket, body.get("text_input"), {**body, **params}, stream)


def prompt_of(ticket: Ticket, text: Any, fields: dict[str, Any], stream: bool) -> Prompt:
    """`text_input` and the sampling fields among `fields`, checked by the endpoint's request model (errors name
    text_input, as the caller sent it): OIP's generate extension and OIP over gRPC."""
    sampling = {k: fields[k] for k in SAMPLING if k in fields}
    try:
        parsed = ticket.endpoint.request_model.model_validate({"prompt": text, **sampling})
    except ValidationError as exc:
        errors = validation_errors(exc)
        for e in errors:
            e["field"] = e["field"].replace("prompt", "text_input", 1)
        raise InvalidFields(errors) from None
    return Prompt(parsed.prompt, params_of(parsed), stream)  # type: ignore[attr-defined]


def _head(gen: Generation) -> dict[str, Any]:
    return {"model_name": gen.endpoint.name, "model_version": gen.version.split(":")[-1]}


async def _events(gen: Generation) -> AsyncIterator[bytes]:
    try:
        async for piece in gen.pieces():
            yield event({**_head(gen), "text_output": piece})
    except ServingError as exc:
        yield event({"error": exc.message, "request_id": request_id()})
        return
    yield event({**_head(gen), "text_output": "", "finish_reason": gen.finish_reason, "usage": usage_of(gen)})


def oip_generate_routes(holder: EngineHolder) -> list[Route]:
    async def generate(request: Request) -> Response:
        stream = request.url.path.endswith("_stream")
        meta = http_meta(request, request.path_params["model"], "oip", request.path_params.get("version"),
                         stored_pins=True)
        stack = contextlib.AsyncExitStack()
        try:
            ticket = await stack.enter_async_context(holder.serving().admit(meta))
            if ticket.endpoint.task.execution != "decode":
                raise InvalidInput("model", f"{ticket.endpoint.name} is a {ticket.endpoint.task.name} model: POST "
                                   f"/v2/models/{ticket.endpoint.name}/infer")

            async def read(t: Ticket) -> Prompt:
                return await read_prompt(request, t, stream)

            opened, _ = await open_generation(ticket, stack.pop_all(), read)
            if stream:
                return streamed(opened, _events)  # type: ignore[return-value]
            return await whole(opened, lambda gen: {**_head(gen), "text_output": gen.text,
                                                    "finish_reason": gen.finish_reason, "usage": usage_of(gen)})
        except ServingError as exc:
            await stack.aclose()
            return oip_problem(exc)

    return [Route(f"/v2/models/{{model}}{version}/{verb}", generate, methods=["POST"])
            for version in ("", "/versions/{version}") for verb in ("generate", "generate_stream")]

