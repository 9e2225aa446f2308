"""POST /v1/{name}/generate: the whole text, or Server-Sent Events token by token.

Every generation route (this one, the OpenAI-compatible ones, OIP's generate extension) does the same
three things through `open_generation`: admit the call and parse its body, start the generation (which
returns at the first token), and hand the open generation to its renderer, which closes it on every exit.
Renderers differ only in the shape of their events.

Stream events here: `data: {"text": ...}` per token; then `event: done` with finish_reason, usage,
model_version and route; or `event: error` with detail, type and request_id.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from bentos.api.http import counted, parse
from bentos.api.problems import json_response
from bentos.api.sse import EventStream, error_data, event
from bentos.dataplane.generation import Generation
from bentos.dataplane.serving import Ticket
from bentos.errors import ServingError
from bentos.tasks.text_generation import SamplingParams, params_of


@dataclass
class Prompt:
    text: str
    params: SamplingParams
    stream: bool
    tool: str | None = None  # OpenAI: the function a forced tool_choice calls (the text is its arguments)
    field: str = "prompt"  # what a refusal of the prompt itself names (guardrails)


@dataclass
class Open:
    """A started generation and what closes it (the generation, then the call's admission)."""

    generation: Generation
    stack: contextlib.AsyncExitStack

    async def close(self) -> None:
        await self.stack.aclose()


async def open_generation(ticket: Ticket, stack: contextlib.AsyncExitStack,
                          read: Callable[[Ticket], Awaitable[Prompt]]) -> tuple[Open, Prompt]:
    """Parse the prompt and start it; `stack` (holding the ticket) is closed here on any error, and owned by
    the returned `Open` otherwise."""
    try:
        prompt = await read(ticket)
        ticket.body_read()
        generation = await ticket.generate(prompt.text, prompt.params, prompt.field)
        stack.callback(generation.close)
    except BaseException:
        await stack.aclose()
        raise
    return Open(generation, stack), prompt


def usage_of(gen: Generation) -> dict[str, int]:
    u = gen.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def answer_headers(gen: Generation) -> dict[str, str]:
    return {"X-Model-Version": gen.version, "X-Route": gen.route}


async def whole(opened: Open, render: Callable[[Generation], dict[str, object]]) -> Response:
    """Read the generation to its end, then answer once (an error before the end is an ordinary status)."""
    try:
        await opened.generation.collect()
    finally:
        await opened.close()
    gen = opened.generation
    return json_response(render(gen), headers=answer_headers(gen))


def streamed(opened: Open, events: Callable[[Generation], AsyncIterator[bytes]]) -> EventStream:
    return EventStream(events(opened.generation), opened.close, answer_headers(opened.generation))


# --- /v1/{name}/generate --------------------------------------------------------------------------
async def read_v1(request: Request, ticket: Ticket) -> Prompt:
    body = await parse(counted(request, ticket), ticket.endpoint.request_model, ticket.endpoint.limits.max_body_bytes)
    return Prompt(body.prompt, params_of(body), bool(body.stream))  # type: ignore[attr-defined]


def v1_body(gen: Generation) -> dict[str, object]:
    return {"text": gen.text, "finish_reason": gen.finish_reason, "usage": usage_of(gen),
            "model_version": gen.version, "route": gen.route,
            "latency_ms": {"first_token": round(gen.first_token_s * 1000, 3), "total": round(gen.total_s * 1000, 3)}}


async def v1_events(gen: Generation) -> AsyncIterator[bytes]:
    try:
        async for piece in gen.pieces():
            yield event({"text": piece})
    except ServingError as exc:
        yield event(error_data(exc), "error")
        return
    yield event({"finish_reason": gen.finish_reason, "usage": usage_of(gen), "model_version": gen.version,
                 "route": gen.route}, "done")


async def generate_v1(request: Request, ticket: Ticket, stack: contextlib.AsyncExitStack) -> Response:
    """The generative endpoints' /v1 route; `stack` holds the admitted ticket and is this call's to close."""

    async def read(t: Ticket) -> Prompt:
        return await read_v1(request, t)

    opened, prompt = await open_generation(ticket, stack, read)
    if prompt.stream:
        return streamed(opened, v1_events)  # type: ignore[return-value]
    return await whole(opened, v1_body)
