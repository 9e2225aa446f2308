"""The current request's id (X-Request-ID), for responses, error bodies, logs and payload logs.

A context variable: set once per request by the HTTP layer, read anywhere below it in the same task.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")
# A caller's id is kept when it is short and plain; anything else is replaced, never echoed.
ACCEPTED = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id() -> str:
    return REQUEST_ID.get()


def accepted_or_new(given: str | None) -> str:
    """The caller's id when it is short and plain, else a new one."""
    return given if given and ACCEPTED.match(given) else uuid.uuid4().hex


@contextmanager
def request_scope(given: str | None) -> Iterator[str]:
    """The current request's id for the block (protocols without the middleware: gRPC)."""
    token = REQUEST_ID.set(accepted_or_new(given))
    try:
        yield REQUEST_ID.get()
    finally:
        REQUEST_ID.reset(token)


class RequestIds:
    """ASGI middleware: take X-Request-ID from the request or make one; answer with it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accepted_or_new(next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None))
        token = REQUEST_ID.set(rid)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
