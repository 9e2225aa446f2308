"""The HTTP surface: a lean Starlette app mounted into the BentoML service.

Per-request overhead decides throughput on a small machine, so requests go through
Starlette and pydantic directly instead of FastAPI. Routes are generic over endpoints:
POST /v1/{endpoint}/{verb} looks the endpoint up when the request arrives, so endpoints
added through the admin API serve at once. The OpenAPI document is built from the same
pydantic models. Every error is mapped to a status here, in `problem`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.openapi import document
from bentos.controlplane.engine import Engine
from bentos.dataplane.access import Caller
from bentos.dataplane.batching import Overloaded
from bentos.dataplane.endpoint import Answer, Endpoint, ModelFailure, NoDeployment
from bentos.dataplane.payloads import entry
from bentos.dataplane.routing import UnknownPin
from bentos.errors import BodyTooLarge, InvalidInput, NotFound, ServingError
from bentos.request_context import RequestIds, request_id

Handler = Callable[[Request], Awaitable[Response]]
B = TypeVar("B", bound=BaseModel)


class EngineHolder:
    """Where the service instance puts its engine for the mounted app to find."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def get(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the Switchyard service has not started its engine")
        return self.engine


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error(status: int, detail: str, errors: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> Response:
    """An error body: the message, the field errors, and the request id to quote in a report."""
    body = {"detail": detail, **({"errors": errors} if errors else {}), "request_id": request_id()}
    return json_response(body, status, headers)


def status_of(exc: Exception) -> tuple[int, str, dict[str, str]]:
    """The one place errors become HTTP statuses: (status, message, headers)."""
    if isinstance(exc, ServingError):
        return exc.status, exc.message, exc.headers
    if isinstance(exc, UnknownPin):
        return 404, str(exc), {}
    if isinstance(exc, Overloaded):
        return 503, f"overloaded, retry later: {exc}", {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, NoDeployment):
        return 503, str(exc), {"Retry-After": "5"}
    if isinstance(exc, ModelFailure):
        return 500, f"model failure: {exc}", {}
    raise exc


def problem(exc: Exception) -> Response:
    status, message, headers = status_of(exc)
    errors = None
    if isinstance(exc, ServingError) and exc.field:
        errors = [{"field": exc.field, "message": message, "type": type(exc).__name__,
                   **({"limit": exc.limit} if exc.limit else {})}]
    return error(status, message, errors, headers)


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


MAX_ERRORS = 20


def invalid(exc: ValidationError) -> Response:
    """422 with the first MAX_ERRORS errors and a count of the rest: a body of 64 x 64 bad cells must not
    answer with 4,096 entries."""
    errors = validation_errors(exc)
    head = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    body: dict[str, Any] = {"detail": f"{head['field']}: {head['message']}{more}", "errors": errors[:MAX_ERRORS],
                            "request_id": request_id()}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return json_response(body, 422)


def ascii_int(raw: str | None) -> int | None:
    """A plain non-negative decimal, or None: str.isdigit() also takes "²" and "١٢", which int() rejects or reads."""
    if raw and len(raw) <= 18 and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


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
                empty: bytes = b"null") -> B | Response:
    """The body as `model`: 413 over the limit, 422 naming the field; the one parser for every route."""
    try:
        body = await read_body(request, limit, setting)
    except BodyTooLarge as exc:
        return problem(exc)
    try:
        return model.model_validate_json(body or empty)
    except ValidationError as exc:
        return invalid(exc)


async def multipart_items(request: Request, endpoint: Endpoint) -> list[Any]:
    """`image` files of a multipart upload, as raw bytes items (image tasks)."""
    limit = endpoint.limits.max_body_bytes
    declared = ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, "limits.max_body_bytes")
    try:
        form = await request.form(max_files=endpoint.limits.max_rows, max_part_size=limit)
    except (HTTPException, MultiPartException) as exc:  # a malformed body or too many files: the caller's fault
        # (Starlette raises the one under a router that put "app" in the scope, the other without)
        detail = str(exc.detail if isinstance(exc, HTTPException) else exc.message)
        if "files" in detail.lower():
            raise InvalidInput("image", detail, {"max_rows": endpoint.limits.max_rows}) from exc
        raise ServingError(f"content-type: {detail}", field="content-type") from exc
    try:
        files = [f for f in form.getlist("image") if hasattr(f, "read")]
        if not files:
            raise InvalidInput("image", "upload one or more files in the multipart field 'image'")
        return [await f.read() for f in files]
    finally:
        await form.close()


def _answer_headers(answer: Answer) -> dict[str, str]:
    return {"X-Model-Version": answer.version, "X-Route": answer.route}


def _latency(answer: Answer) -> dict[str, float]:
    return {"queue": round(answer.timing.queue_s * 1000, 3), "inference": round(answer.timing.inference_s * 1000, 3),
            "total": round(answer.total_s * 1000, 3)}


def admit(engine: Engine, request: Request) -> tuple[Caller, str | None]:
    """The caller (401 without a needed key, 429 over a rate) and the version it may pin (403 if none)."""
    caller = engine.gate.admit(request.headers, request.client.host if request.client else None)
    return caller, engine.gate.pin_for(caller, request.headers.get("x-model-version"))


def declared_size(request: Request, limit: int) -> int:
    """What admission reserves: the declared length, or the limit for a body sent without one."""
    declared = ascii_int(request.headers.get("content-length"))
    return limit if declared is None else min(declared, limit)


async def infer(holder: EngineHolder, request: Request) -> Response:
    """POST /v1/{endpoint}/{verb}: admit, validate, route, batch, answer."""
    engine = holder.get()
    name, verb = request.path_params["endpoint"], request.path_params["verb"]
    caller = None
    try:
        caller, pin = admit(engine, request)
        endpoint = await engine.serving_endpoint(name)
        with engine.admission.hold(declared_size(request, endpoint.limits.max_body_bytes)):
            task = endpoint.task
            if verb != task.verb:
                raise NotFound(f"{name} is a {task.name} endpoint: POST /v1/{name}/{task.verb}")
            options: dict[str, Any] = {}
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                items = await multipart_items(request, endpoint)
            else:
                parsed = await parse(request, endpoint.request_model, endpoint.limits.max_body_bytes)
                if isinstance(parsed, Response):
                    return parsed
                items, options = task.items(parsed), task.options(parsed)
            answer = await endpoint.handle(items, request.headers.get("x-routing-key"), pin, "api",
                                           api_key=caller.key)
    except (ServingError, UnknownPin, Overloaded, NoDeployment, ModelFailure) as exc:
        engine.metrics.denied_if(exc, caller.key if caller else "")
        return problem(exc)
    body = {**task.render(answer.codec, answer.outputs, options), "model_version": answer.version,
            "route": answer.route, "latency_ms": _latency(answer)}
    if engine.payloads is not None and engine.payloads.sampled():
        engine.payloads.put(entry(name, endpoint.config.redact_payloads, answer.version, answer.route,
                                  answer.total_s * 1000, caller.key, "v1", items, body[task.result_field]))
    return json_response(body, headers=_answer_headers(answer))


class ServingApp(Starlette):
    """Starlette, plus the one hot route as its own ASGI handler (`lane`), for the fast lane to call without
    the router's pass over every route and Starlette's two exception layers (bentos/api/fast_lane.py)."""

    def __init__(self, hot: Handler, hot_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot = RequestIds(ServerErrors(hot))
        # /v1/<name>/... names that fixed routes take (admin, health, ...): never the generic route's.
        self.reserved = {r.path.split("/")[2] for r in self.routes
                         if isinstance(r, Route) and r.path.startswith("/v1/") and r.path != hot_path}

    def lane(self, scope: dict[str, Any]) -> Any:
        """The handler for POST /v1/{endpoint}/{verb}, with path_params set; None for any other request."""
        if scope["method"] != "POST":
            return None
        parts = scope["path"].split("/")  # ["", "v1", endpoint, verb]
        if len(parts) != 4 or parts[1] != "v1" or parts[2] in self.reserved or not parts[2] or not parts[3]:
            return None
        scope["path_params"] = {"endpoint": parts[2], "verb": parts[3]}
        return self.hot


class ServerErrors:
    """ASGI: an unexpected error is a plain 500 (when nothing was sent yet) and is raised on for the server
    to log; what Starlette's ServerErrorMiddleware does, for the hot route's own lane."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            response = await self.handler(Request(scope, receive))
        except HTTPException as exc:  # as Starlette's router answers it
            response = Response(exc.detail, exc.status_code, exc.headers, media_type="text/plain")
        except Exception:
            await Response("Internal Server Error", 500, media_type="text/plain")(scope, receive, send)
            raise
        await response(scope, receive, send)


def create_app(holder: EngineHolder, extra_routes: list[Any] | None = None) -> ServingApp:
    """The app is built at import; the engine is bound when the service starts."""

    async def predict(request: Request) -> Response:
        return await infer(holder, request)

    async def spec(request: Request) -> Response:
        return json_response(document(holder.get(), request.app.routes))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = holder.get()
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    # Fixed routes first: the generic one below would otherwise take /v1/admin/...
    hot_path = "/v1/{endpoint}/{verb}"
    routes = [Route("/v1/openapi.json", spec, methods=["GET"]), *(extra_routes or []),
              Route(hot_path, predict, methods=["POST"])]
    return ServingApp(predict, hot_path, routes=routes, lifespan=lifespan, middleware=[Middleware(RequestIds)])
