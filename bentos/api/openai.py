"""The OpenAI-compatible routes: POST /v1/chat/completions, POST /v1/completions and GET /v1/models.

`model` is the endpoint's name; everything else (routing, pins through X-Model-Version, keys through
`Authorization: Bearer`, rate limits, admission, metrics with protocol "openai") is the same serving path
as /v1/{name}/generate. Answers and errors are shaped the way the official `openai` client reads them:
errors as `{"error": {"message", "type", "param", "code"}}`, streams as `chat.completion.chunk` objects
ending with `data: [DONE]` (an error after the first chunk is a `data:` line with an `error` object, and
no `[DONE]`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import EngineHolder
from bentos.api.generate import Open, Prompt, open_generation, streamed, usage_of, whole
from bentos.api.http import http_meta, read_body
from bentos.api.problems import OPENAI, json_response, validation_errors
from bentos.api.sse import event
from bentos.dataplane.generation import Generation
from bentos.dataplane.serving import Serving, Ticket
from bentos.errors import BodyTooLarge, InvalidFields, InvalidInput, ServingError
from bentos.request_context import request_id
from bentos.tasks.base import Limits
from bentos.tasks.text_generation import Message, chat_prompt, params_of, sampling_fields

DONE = b"data: [DONE]\n\n"


def openai_error(exc: ServingError) -> Response:
    status, kind = OPENAI[exc.kind]
    body = {"error": {"message": exc.message, "type": kind, "param": exc.field, "code": exc.kind,
                      "request_id": request_id()}}
    return json_response(body, status, exc.headers or None)


class Named(BaseModel):
    """Just enough of a body to find its endpoint: the rest is checked against that endpoint's limits."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=40)


def _request(name: str, fields: dict[str, Any], limits: Limits) -> type[BaseModel]:
    sampling = sampling_fields(limits, max_tokens_default=None)
    model: type[BaseModel] = create_model(
        name, __config__=ConfigDict(extra="ignore"), model=(str, ...), n=(int, Field(1, ge=1, le=1)),
        max_completion_tokens=(int | None, Field(None, ge=1, le=limits.max_new_tokens)),
        stream_options=(dict[str, Any] | None, None), **fields, **sampling)
    return model


def chat_request(limits: Limits) -> type[BaseModel]:
    return _request("ChatCompletionRequest", {"messages": (list[Message], Field(min_length=1, max_length=256))},
                    limits)


def completion_request(limits: Limits) -> type[BaseModel]:
    return _request("CompletionRequest", {"prompt": (str, Field(min_length=1, max_length=limits.max_chars))}, limits)


def _prompt(body: Any, text: str, limits: Limits) -> Prompt:
    if len(text) > limits.max_chars:
        raise InvalidInput("messages", f"{len(text)} characters together, over {limits.max_chars} (limits.max_chars)",
                           {"max_chars": limits.max_chars})
    max_tokens = body.max_completion_tokens or body.max_tokens or 64
    params = params_of(body.model_copy(update={"max_tokens": max_tokens}))
    return Prompt(text, params, bool(body.stream))


class Flavor:
    """What differs between chat and plain completions: the request, the prompt, the choice's shape."""

    def __init__(self, obj: str, request: Callable[[Limits], type[BaseModel]], chat: bool) -> None:
        self.obj, self.request, self.chat = obj, request, chat

    def prompt(self, body: Any, limits: Limits) -> Prompt:
        text = chat_prompt([m.model_dump() for m in body.messages]) if self.chat else body.prompt
        return _prompt(body, text, limits)

    def choice(self, gen: Generation) -> dict[str, Any]:
        if self.chat:
            return {"index": 0, "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason, "logprobs": None}
        return {"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": None}

    def delta(self, piece: str | None, first: bool, finish: str | None) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if piece is not None:
            delta["content"] = piece
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}


CHAT = Flavor("chat.completion", chat_request, chat=True)
TEXT = Flavor("text_completion", completion_request, chat=False)


def _header(obj: str, call_id: str, gen: Generation, created: int) -> dict[str, Any]:
    return {"id": call_id, "object": obj, "created": created, "model": gen.endpoint.name,
            "system_fingerprint": gen.version}


def _events(flavor: Flavor, call_id: str, usage: bool) -> Callable[[Generation], AsyncIterator[bytes]]:
    chunk_obj = "chat.completion.chunk" if flavor.chat else "text_completion"

    async def events(gen: Generation) -> AsyncIterator[bytes]:
        head, first = _header(chunk_obj, call_id, gen, int(time.time())), True
        try:
            async for piece in gen.pieces():
                yield event({**head, "choices": [flavor.delta(piece, first, None)]})
                first = False
        except ServingError as exc:
            _, kind = OPENAI[exc.kind]
            yield event({"error": {"message": exc.message, "type": kind, "code": exc.kind,
                                   "request_id": request_id()}})
            return
        yield event({**head, "choices": [flavor.delta(None, first, gen.finish_reason)]})
        if usage:
            yield event({**head, "choices": [], "usage": usage_of(gen)})
        yield DONE

    return events


async def complete(serving: Serving, request: Request, flavor: Flavor) -> Response:
    max_body = serving.settings.max_body_bytes
    stack = contextlib.AsyncExitStack()
    try:
        raw = await read_body(request, max_body)
        try:
            named = Named.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise InvalidFields(validation_errors(exc)) from None
        ticket = await stack.enter_async_context(
            serving.admit(http_meta(request, named.model, "openai", pin_header="x-model-version")))
        endpoint = ticket.endpoint
        if endpoint.task.execution != "decode":
            raise InvalidInput("model", f"{endpoint.name} is a {endpoint.task.name} endpoint, not text-generation")

        # The body was read before its endpoint was known (the name is in it), under the server's
        # SWITCHYARD_MAX_BODY_BYTES: now it counts in admission, and against the endpoint's own limit.
        if len(raw) > endpoint.limits.max_body_bytes:
            raise BodyTooLarge(endpoint.limits.max_body_bytes, "limits.max_body_bytes")

        async def read(t: Ticket) -> Prompt:
            t.reserve(len(raw))
            try:
                body = flavor.request(endpoint.limits).model_validate_json(raw)
            except ValidationError as exc:
                raise InvalidFields(validation_errors(exc)) from None
            return flavor.prompt(body, endpoint.limits)

        opened, prompt = await open_generation(ticket, stack.pop_all(), read)
    except ServingError as exc:
        await stack.aclose()
        return openai_error(exc)
    call_id = f"{'chatcmpl' if flavor.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    if prompt.stream:
        usage = bool((orjson.loads(raw).get("stream_options") or {}).get("include_usage"))
        return streamed(opened, _events(flavor, call_id, usage))  # type: ignore[return-value]
    return await _whole(opened, flavor, call_id)


async def _whole(opened: Open, flavor: Flavor, call_id: str) -> Response:
    created = int(time.time())
    try:
        return await whole(opened, lambda gen: {**_header(flavor.obj, call_id, gen, created),
                                                "choices": [flavor.choice(gen)], "usage": usage_of(gen)})
    except ServingError as exc:
        return openai_error(exc)


def openai_routes(holder: EngineHolder) -> list[Route]:
    async def chat(request: Request) -> Response:
        return await complete(holder.serving(), request, CHAT)

    async def completions(request: Request) -> Response:
        return await complete(holder.serving(), request, TEXT)

    async def models(request: Request) -> Response:
        serving = holder.serving()
        try:
            serving.admit(http_meta(request, "", "openai"))  # the same keys as the routes it lists
        except ServingError as exc:
            return openai_error(exc)
        names = sorted(n for n, e in serving.registry.endpoints.items() if e.task.execution == "decode")
        return json_response({"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                          "owned_by": "switchyard"} for n in names]})

    return [Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"])]

