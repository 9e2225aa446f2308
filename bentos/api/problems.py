"""The one place errors become protocol answers: a table per protocol, keyed by the error's kind.

Everything below the protocol adapters raises `bentos.errors.ServingError`s, each of one kind. Each
protocol says, here and nowhere else, what a kind is on its wire: an HTTP status (REST and OIP over
HTTP), an error event once a stream has started (SSE), an OpenAI error object, or a gRPC status code.
`tests/bentos/test_error_tables.py` walks every kind through every table, so a kind without a row fails.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response

from bentos.errors import InvalidFields, Kind, ServingError
from bentos.request_context import request_id

REST: dict[Kind, int] = {
    "malformed": 400, "invalid": 422, "too_large": 413, "request_timeout": 408, "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404, "conflict": 409, "rate_limited": 429, "overloaded": 503,
    "deadline": 503,  # a deadline passed in the queue reads as "busy, retry" (as before kinds existed)
    "unavailable": 503, "model_failure": 500,
}
# OIP over HTTP: KServe's and Triton's clients read any invalid request as 400.
OIP_HTTP: dict[Kind, int] = {**REST, "invalid": 400}
# After a stream's first byte only an error event can be sent; every other kind is checked before the
# response starts (the status is committed late) and answered with REST's status. None: "before the start".
SSE_AFTER_START: dict[Kind, str | None] = {
    "malformed": None, "invalid": None, "too_large": None, "request_timeout": None, "unauthenticated": None,
    "forbidden": None,
    "not_found": None, "conflict": None, "rate_limited": None,
    "overloaded": "overloaded",  # a slow reader whose buffer stayed full
    "deadline": "deadline", "unavailable": "unavailable", "model_failure": "model_failure",
}
# The OpenAI-compatible routes: the status and the `error.type` the official client reads.
OPENAI: dict[Kind, tuple[int, str]] = {
    "malformed": (400, "invalid_request_error"), "invalid": (400, "invalid_request_error"),
    "too_large": (413, "invalid_request_error"), "request_timeout": (408, "invalid_request_error"),
    "unauthenticated": (401, "authentication_error"),
    "forbidden": (403, "permission_error"), "not_found": (404, "not_found_error"),
    "conflict": (409, "invalid_request_error"), "rate_limited": (429, "rate_limit_error"),
    "overloaded": (503, "server_error"), "deadline": (503, "timeout_error"),
    "unavailable": (503, "server_error"), "model_failure": (500, "server_error"),
}
# gRPC (grpc.StatusCode names, so this table needs no grpc import).
GRPC: dict[Kind, str] = {
    "malformed": "INVALID_ARGUMENT", "invalid": "INVALID_ARGUMENT", "too_large": "RESOURCE_EXHAUSTED",
    "request_timeout": "DEADLINE_EXCEEDED",
    "unauthenticated": "UNAUTHENTICATED", "forbidden": "PERMISSION_DENIED", "not_found": "NOT_FOUND",
    "conflict": "ALREADY_EXISTS", "rate_limited": "RESOURCE_EXHAUSTED", "overloaded": "UNAVAILABLE",
    "deadline": "DEADLINE_EXCEEDED", "unavailable": "UNAVAILABLE", "model_failure": "INTERNAL",
}
TABLES: dict[str, dict[Kind, Any]] = {"rest": REST, "oip": OIP_HTTP, "sse": SSE_AFTER_START, "openai": OPENAI,
                                      "grpc": GRPC}


async def send_detail(send: Any, status: int, detail: str, close: bool = False) -> None:
    """`{"detail": ...}` straight to an ASGI `send`, for the answers given below any app (timeouts, unknown
    paths, body caps); `close` asks the server to drop the connection (a body is left unread)."""
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *([(b"connection", b"close")] if close else [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error(status: int, detail: str, errors: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> Response:
    """An error body: the message, the field errors, and the request id to quote in a report."""
    body = {"detail": detail, **({"errors": errors} if errors else {}), "request_id": request_id()}
    return json_response(body, status, headers)


MAX_ERRORS = 20


def problem(exc: ServingError) -> Response:
    """A REST answer: the status of the error's kind, its message, the fields and limits it names. At most
    MAX_ERRORS field errors and a count of the rest: a body of 64 x 64 bad cells must not answer with 4,096."""
    if isinstance(exc, InvalidFields):
        errors = exc.errors
    elif exc.field:
        errors = [{"field": exc.field, "message": exc.message, "type": type(exc).__name__,
                   **({"limit": exc.limit} if exc.limit else {})}]
    else:
        return error(REST[exc.kind], exc.message, None, exc.headers)
    body: dict[str, Any] = {"detail": exc.message, "errors": errors[:MAX_ERRORS], "request_id": request_id()}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return json_response(body, REST[exc.kind], exc.headers or None)


def oip_problem(exc: ServingError) -> Response:
    """An OIP-over-HTTP answer: `{"error": ...}`, as Triton and KServe clients read it."""
    return json_response({"error": exc.message, "request_id": request_id()}, OIP_HTTP[exc.kind], exc.headers)


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as {field, message, limit}: the field path and the limit it broke."""
    out = []
    for e in exc.errors(include_url=False):
        item: dict[str, Any] = {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"],
                                "type": e["type"]}
        if e.get("ctx"):
            item["limit"] = {k: v for k, v in e["ctx"].items() if isinstance(v, (int, float, str))}
        out.append(item)
    return out


def first_error(exc: ValidationError) -> str:
    """The first field error as one line, `field: message`, for protocols with one message per error."""
    head = validation_errors(exc)[0]
    return f"{head['field']}: {head['message']}"


# The playground shows a message, not a status: these kinds read better in a person's words ({message}: the
# error's own).
PLAYGROUND: dict[Kind, str] = {
    "unauthenticated": "{message}. Enter your key in the API key field above the Run button.",
    "overloaded": "The service is busy right now; try again in a moment.",
    "deadline": "The service is busy right now; try again in a moment.",
}


def playground_message(exc: ServingError) -> str:
    return PLAYGROUND.get(exc.kind, "{message}").format(message=exc.message)
