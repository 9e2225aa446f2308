"""What every HTTP route does with a request before the data plane: the call's metadata from its headers,
its body read under its limits (counted as it arrives), and parsed into the route's pydantic model."""

from __future__ import annotations

import asyncio
import math
import time
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import Message

from bentos.api.problems import validation_errors
from bentos.dataplane.call import CallMeta, Protocol
from bentos.dataplane.serving import Ticket
from bentos.errors import BodyTimeout, BodyTooLarge, InvalidFields, InvalidInput

B = TypeVar("B", bound=BaseModel)


def ascii_int(raw: str | None) -> int | None:
    """A plain non-negative decimal, or None: str.isdigit() also takes "²" and "١٢", which int() rejects or reads."""
    if raw and len(raw) <= 18 and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


MAX_TIMEOUT_S = 3600.0


def deadline_of(raw: str | None) -> float | None:
    """X-Request-Timeout (seconds) as a deadline on the monotonic clock; None without the header."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_S:  # also refuses nan and inf
        raise InvalidInput("x-request-timeout", f"must be seconds, more than 0 and at most {MAX_TIMEOUT_S:g}; "
                           f"got {raw[:40]!r}", {"max_s": MAX_TIMEOUT_S})
    return time.monotonic() + seconds


def http_meta(request: Request, endpoint: str, protocol: Protocol, pin: str | None = None,
              stored_pins: bool = False, pin_header: str | None = None) -> CallMeta:
    """A call as HTTP delivered it: headers are the credentials (lower-case keys, as gRPC metadata's). One
    pass over the raw headers, into a plain dict: each Headers.get() would scan them again."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(request.scope["headers"])}
    if pin_header is not None:
        pin = headers.get(pin_header)
    return CallMeta(endpoint, headers, request.client.host if request.client else None, pin,
                    headers.get("x-routing-key"), "api", protocol, ascii_int(headers.get("content-length")),
                    deadline_of(headers.get("x-request-timeout")), stored_pins)


def counted(request: Request, ticket: Ticket) -> Request:
    """`request`, its body counted as it arrives, on every route and for every body (JSON, multipart, OIP
    binary, chunked or not): 413 at the first byte past limits.max_body_bytes, the bytes reserved in
    admission as they come (not as declared), and 408 when the body has not all arrived within
    limits.body_timeout_s, so that a stalled upload holds neither memory nor its place for long."""
    limits = ticket.endpoint.limits
    limit, timeout = limits.max_body_bytes, limits.body_timeout_s
    loop = asyncio.get_running_loop()
    deadline, receive, seen = loop.time() + timeout, request.receive, 0

    async def receive_counted() -> Message:
        nonlocal seen
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(timeout, "limits.body_timeout_s") from None
        size = len(message.get("body", b""))
        if size:
            seen += size
            if seen > limit:
                raise BodyTooLarge(limit, "limits.max_body_bytes")
            ticket.reserve(size)
        return message

    return Request(request.scope, receive_counted)


async def read_body(request: Request, limit: int, setting: str = "SWITCHYARD_MAX_BODY_BYTES") -> bytes:
    declared = ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, setting)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, setting)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse(request: Request, model: type[B], limit: int, setting: str = "SWITCHYARD_MAX_BODY_BYTES",
                empty: bytes = b"null") -> B:
    """The body as `model`: 413 over the limit, 422 naming the field; the one parser for every route."""
    body = await read_body(request, limit, setting)
    try:
        return model.model_validate_json(body or empty)
    except ValidationError as exc:
        raise InvalidFields(validation_errors(exc)) from None
