"""Server-Sent Events: framing, and a response that stops when the client goes.

The status is committed late: a stream's response is made only after its first token exists, so every
refusal before it is an ordinary status. After the first byte an error can only be an event
(problems.SSE_AFTER_START). The response watches for the client's disconnect itself, whatever the ASGI
server's spec version: when the client goes, the events stop at once and `on_close` runs, which aborts
the request (its KV is freed at the decode loop's next step).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from bentos.api.problems import SSE_AFTER_START
from bentos.errors import ServingError
from bentos.request_context import request_id

HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]


def event(data: Any, name: str | None = None) -> bytes:
    """One event: `event: name` (when named) and one `data:` line of JSON (or the text as it is)."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return (f"event: {name}\n".encode() if name else b"") + b"data: " + payload + b"\n\n"


def error_data(exc: ServingError) -> dict[str, Any]:
    return {"detail": exc.message, "type": SSE_AFTER_START.get(exc.kind) or exc.kind, "request_id": request_id()}


class EventStream:
    """An ASGI response of `events`; `on_close` runs once on every exit (done, error, client gone)."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]],
                 headers: dict[str, str] | None = None) -> None:
        self.events, self.on_close = events, on_close
        self.headers = [*HEADERS, *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            for task in (pump, watch):
                with contextlib.suppress(asyncio.CancelledError, OSError, Exception):
                    await task
            await self.on_close()

    async def _pump(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
