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

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.generate import generate_v1
from bentos.api.http import ascii_int, counted, deadline_of, http_meta, parse, read_body
from bentos.api.openapi import document
from bentos.api.problems import first_error, json_response, problem
from bentos.config import RESERVED
from bentos.controlplane.engine import Engine
from bentos.dataplane.endpoint import Answer, Endpoint
from bentos.dataplane.serving import Serving
from bentos.errors import InvalidInput, NotFound, ServingError
from bentos.request_context import RequestIds

Handler = Callable[[Request], Awaitable[Response]]
B = TypeVar("B", bound=BaseModel)
__all__ = ["EngineHolder", "ServerErrors", "ServingApp", "ascii_int", "create_app", "deadline_of", "first_error",
           "json_response", "parse", "problem", "read_body"]


class EngineHolder:
    """Where the service instance puts its engine for the mounted app to find."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def get(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the Switchyard service has not started its engine")
        return self.engine

    def serving(self) -> Serving:
        """The data plane's one serving path: all a protocol adapter needs to answer a request."""
        return self.get().serving


async def multipart_items(request: Request, endpoint: Endpoint) -> list[Any]:
    """`image` files of a multipart upload, as raw bytes items (image tasks)."""
    try:  # the body's size is counted as it arrives (`counted`); a declared one was checked before
        form = await request.form(max_files=endpoint.limits.max_rows, max_part_size=endpoint.limits.max_body_bytes)
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


async def request_items(request: Request, endpoint: Endpoint) -> tuple[list[Any], dict[str, Any]]:
    """The request's items and the task's options: a multipart upload, or a JSON body of the task's model."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await multipart_items(request, endpoint), {}
    parsed = await parse(request, endpoint.request_model, endpoint.limits.max_body_bytes)
    return endpoint.task.items(parsed), endpoint.task.options(parsed)


def _answer_headers(answer: Answer) -> dict[str, str]:
    return {"X-Model-Version": answer.version, "X-Route": answer.route}


def _latency(answer: Answer) -> dict[str, float]:
    return {"queue": round(answer.timing.queue_s * 1000, 3), "inference": round(answer.timing.inference_s * 1000, 3),
            "total": round(answer.total_s * 1000, 3)}


async def infer(serving: Serving, request: Request) -> Response:
    """POST /v1/{endpoint}/{verb}: parse the request, ask the serving path, render the answer."""
    name, verb = request.path_params["endpoint"], request.path_params["verb"]
    stack = contextlib.AsyncExitStack()
    try:
        ticket = await stack.enter_async_context(
            serving.admit(http_meta(request, name, "rest", pin_header="x-model-version")))
        task = ticket.endpoint.task
        if verb != task.verb:
            raise NotFound(f"{name} is a {task.name} endpoint: POST /v1/{name}/{task.verb}")
        if task.execution == "decode":  # token by token: the stream owns the ticket from here
            return await generate_v1(request, ticket, stack.pop_all())
        items, options = await request_items(counted(request, ticket), ticket.endpoint)
        answer = await ticket.infer(items, options)
    except ServingError as exc:
        return problem(exc)
    finally:
        await stack.aclose()
    body = {**task.render(answer.codec, answer.outputs, options), "model_version": answer.version,
            "route": answer.route, "latency_ms": _latency(answer)}
    return json_response(body, headers=_answer_headers(answer))


class ServingApp(Starlette):
    """Starlette, plus the one hot route as its own ASGI handler (`lane`), for the fast lane to call without
    the router's pass over every route and Starlette's two exception layers (bentos/api/fast_lane.py)."""

    def __init__(self, hot: Handler, hot_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot = RequestIds(ServerErrors(hot))
        # /v1/<name>/... names that fixed routes take (admin, health, ...), now or once their routes land:
        # never the generic route's, and no endpoint may be named so (config.RESERVED).
        taken = {r.path.split("/")[2] for r in self.routes
                 if isinstance(r, Route) and r.path.startswith("/v1/") and r.path != hot_path}
        if taken - RESERVED:
            raise RuntimeError(f"/v1 routes {sorted(taken - RESERVED)} must be in bentos.config.RESERVED")
        self.reserved = RESERVED

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


Beside = Callable[[EngineHolder], contextlib.AbstractAsyncContextManager[None]]


def create_app(holder: EngineHolder, extra_routes: list[Any] | None = None,
               beside: list[Beside] | None = None) -> ServingApp:
    """The app is built at import; the engine is bound when the service starts, and `beside` (servers for
    other protocols, such as gRPC) run for the app's life, after the engine starts, on its event loop."""

    async def predict(request: Request) -> Response:
        return await infer(holder.serving(), request)

    async def spec(request: Request) -> Response:
        return json_response(document(holder.get(), request.app.routes))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = holder.get()
        await engine.start()
        try:
            async with contextlib.AsyncExitStack() as servers:
                for server in beside or []:
                    await servers.enter_async_context(server(holder))
                yield
        finally:
            await engine.stop()

    # Fixed routes first: the generic one below would otherwise take /v1/admin/...
    hot_path = "/v1/{endpoint}/{verb}"
    routes = [Route("/v1/openapi.json", spec, methods=["GET"]), *(extra_routes or []),
              Route(hot_path, predict, methods=["POST"])]
    return ServingApp(predict, hot_path, routes=routes, lifespan=lifespan, middleware=[Middleware(RequestIds)])
