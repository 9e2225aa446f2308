"""A `ServingError` as a gRPC status: the code from `bentos.api.problems.GRPC` (the one table), the error's
own message, and trailers a client can act on (retry-after, x-request-id)."""

from __future__ import annotations

from typing import NoReturn

import grpc

from bentos.api.problems import GRPC
from bentos.errors import ServingError
from bentos.request_context import request_id


def code_of(exc: ServingError) -> grpc.StatusCode:
    return grpc.StatusCode[GRPC[exc.kind]]


def trailers_of(exc: ServingError) -> tuple[tuple[str, str], ...]:
    retry = exc.headers.get("Retry-After")
    return (*((("retry-after", retry),) if retry else ()), ("x-request-id", request_id()))


async def abort(context: grpc.aio.ServicerContext, exc: ServingError) -> NoReturn:
    await context.abort(code_of(exc), exc.message, trailing_metadata=trailers_of(exc))
    raise AssertionError("context.abort returned")  # it raises; this line keeps NoReturn honest
