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
from typing import Any, Literal

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
from bentos.tasks.text_generation import Message, OutputFormat, chat_prompt, params_of, sampling_fields

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


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field("response", min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class Function(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=64, pattern="^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=4000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: Function


class NamedFunction(BaseModel):
    name: str = Field(min_length=1, max_length=64)


class ToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


TOOL_CHOICE: Any = Literal["none", "auto", "required"] | ToolChoice | None


def _request(name: str, fields: dict[str, Any], limits: Limits) -> type[BaseModel]:
    sampling = sampling_fields(limits, max_tokens_default=None)
    model: type[BaseModel] = create_model(
        name, __config__=ConfigDict(extra="ignore"), model=(str, ...), n=(int, Field(1, ge=1, le=1)),
        max_completion_tokens=(int | None, Field(None, ge=1, le=limits.max_new_tokens)),
        stream_options=(dict[str, Any] | None, None), response_format=(ResponseFormat | None, None),
        tools=(list[Tool] | None, Field(None, max_length=64)),
        tool_choice=(TOOL_CHOICE, None), **fields, **sampling)
    return model


def _output(body: Any) -> tuple[OutputFormat | None, str | None]:
    """What the text must be: response_format's JSON, or a forced tool call's arguments (and that tool's name).
    tool_choice "auto" and "none" leave the text free: the model is not asked to choose a call."""
    forced = _forced_tool(body)
    if forced is not None:
        return OutputFormat("json_schema", orjson.dumps(forced.parameters).decode(), "tool_choice"), forced.name
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None, None
    if fmt.type == "json_object":
        return OutputFormat("json_object", "", "response_format"), None
    if fmt.json_schema is None:
        raise InvalidInput("response_format", 'type "json_schema" needs a json_schema: {"name", "schema"}')
    return OutputFormat("json_schema", orjson.dumps(fmt.json_schema.schema_).decode(), "response_format"), None


def _forced_tool(body: Any) -> Function | None:
    choice, tools = body.tool_choice, list[Tool](body.tools or [])
    if choice is None or choice in ("none", "auto"):
        return None
    if choice == "required":
        if len(tools) != 1:
            raise InvalidInput("tool_choice", f'"required" is served with exactly one tool (got {len(tools)}): name '
                               'the function, {"type": "function", "function": {"name": ...}}')
        return tools[0].function
    named = [t.function for t in tools if t.function.name == choice.function.name]
    if not named:
        raise InvalidInput("tool_choice", f"names {choice.function.name!r}, which is not in tools")
    return named[0]


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
    output, tool = _output(body)
    params = params_of(body.model_copy(update={"max_tokens": max_tokens}), output)
    return Prompt(text, params, bool(body.stream), tool)


class Flavor:
    """What differs between chat and plain completions: the request, the prompt, the choice's shape."""

    def __init__(self, obj: str, request: Callable[[Limits], type[BaseModel]], chat: bool) -> None:
        self.obj, self.request, self.chat = obj, request, chat

    def prompt(self, body: Any, limits: Limits) -> Prompt:
        text = chat_prompt([m.model_dump() for m in body.messages]) if self.chat else body.prompt
        prompt = _prompt(body, text, limits)
        prompt.field = "messages" if self.chat else "prompt"
        return prompt

    def choice(self, gen: Generation, call: ToolCall | None) -> dict[str, Any]:
        if call is not None:
            return {"index": 0, "message": {"role": "assistant", "content": None,
                                            "tool_calls": [call.whole(gen.text)]},
                    "finish_reason": call.finish(gen.finish_reason), "logprobs": None}
        if self.chat:
            return {"index": 0, "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason, "logprobs": None}
        return {"index": 0, "text": gen.text, "finish_reason": gen.finish_reason, "logprobs": None}

    def delta(self, piece: str | None, first: bool, finish: str | None, call: ToolCall | None) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if call is not None:
            if piece is not None or first:
                delta["tool_calls"] = [call.piece(piece or "", first)]
            return {"index": 0, "delta": delta, "finish_reason": call.finish(finish), "logprobs": None}
        if piece is not None:
            delta["content"] = piece
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}


class ToolCall:
    """A forced tool call's shape: the generated text is its arguments (a JSON object, by the grammar)."""

    def __init__(self, name: str) -> None:
        self.name, self.id = name, f"call_{uuid.uuid4().hex[:24]}"

    def whole(self, arguments: str) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": arguments}}

    def piece(self, arguments: str, first: bool) -> dict[str, Any]:
        if first:
            return {"index": 0, **self.whole(arguments)}
        return {"index": 0, "function": {"arguments": arguments}}

    @staticmethod
    def finish(reason: str | None) -> str | None:
        return "tool_calls" if reason == "stop" else reason


CHAT = Flavor("chat.completion", chat_request, chat=True)
TEXT = Flavor("text_completion", completion_request, chat=False)


def _header(obj: str, call_id: str, gen: Generation, created: int) -> dict[str, Any]:
    return {"id": call_id, "object": obj, "created": created, "model": gen.endpoint.name,
            "system_fingerprint": gen.version}


def _events(flavor: Flavor, call_id: str, usage: bool,
            call: ToolCall | None) -> Callable[[Generation], AsyncIterator[bytes]]:
    chunk_obj = "chat.completion.chunk" if flavor.chat else "text_completion"

    async def events(gen: Generation) -> AsyncIterator[bytes]:
        head, first = _header(chunk_obj, call_id, gen, int(time.time())), True
        try:
            async for piece in gen.pieces():
                yield event({**head, "choices": [flavor.delta(piece, first, None, call)]})
                first = False
        except ServingError as exc:
            _, kind = OPENAI[exc.kind]
            yield event({"error": {"message": exc.message, "type": kind, "code": exc.kind,
                                   "request_id": request_id()}})
            return
        yield event({**head, "choices": [flavor.delta(None, first, gen.finish_reason, call)]})
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
    call = ToolCall(prompt.tool) if prompt.tool and flavor.chat else None
    if prompt.stream:
        usage = bool((orjson.loads(raw).get("stream_options") or {}).get("include_usage"))
        return streamed(opened, _events(flavor, call_id, usage, call))  # type: ignore[return-value]
    return await _whole(opened, flavor, call_id, call)


async def _whole(opened: Open, flavor: Flavor, call_id: str, call: ToolCall | None) -> Response:
    created = int(time.time())
    try:
        return await whole(opened, lambda gen: {**_header(flavor.obj, call_id, gen, created),
                                                "choices": [flavor.choice(gen, call)], "usage": usage_of(gen)})
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

