"""The HTTP surface: a lean Starlette app mounted into the BentoML service.

Per-request overhead decides throughput on a small machine, so requests go through
Starlette and pydantic directly instead of FastAPI; the OpenAPI document is built from
the same pydantic models (GET /v1/openapi.json).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.batching import Overloaded
from bentos.endpoint import Answer, ModelFailure, NoDeployment
from bentos.engine import Engine
from bentos.routing import UnknownPin
from bentos.schemas import EmbedResponse, PredictResponse, request_models

Handler = Callable[[Request], Awaitable[Response]]


class EngineHolder:
    """Where the service instance puts its engine for the mounted app to find."""

    def __init__(self) -> None:
        self.engine: Engine | None = None

    def get(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the Switchyard service has not started its engine")
        return self.engine


class BodyTooLarge(Exception):
    pass


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error(status: int, detail: str, errors: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None) -> Response:
    return json_response({"detail": detail, **({"errors": errors} if errors else {})}, status, headers)


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


def invalid(exc: ValidationError) -> Response:
    errors = validation_errors(exc)
    head = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return error(422, f"{head['field']}: {head['message']}{more}", errors)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


async def parse(request: Request, model: type[BaseModel], limit: int) -> BaseModel | Response:
    try:
        body = await read_body(request, limit)
    except BodyTooLarge:
        return error(413, f"body: request body exceeds {limit} bytes (SWITCHYARD_MAX_BODY_BYTES)",
                     [{"field": "body", "message": "too large", "type": "too_large", "limit": {"max_bytes": limit}}])
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as exc:
        return invalid(exc)


def _answer_headers(answer: Answer) -> dict[str, str]:
    return {"X-Model-Version": answer.version, "X-Route": answer.route}


def _latency(answer: Answer) -> dict[str, float]:
    return {"queue": round(answer.timing.queue_s * 1000, 3), "inference": round(answer.timing.inference_s * 1000, 3),
            "total": round(answer.total_s * 1000, 3)}


async def serve(holder: EngineHolder, request: Request, endpoint: str, items: list[Any],
                source: str = "api") -> Answer | Response:
    """Run items through the endpoint's routing path, mapping failures to HTTP answers."""
    engine = holder.get()
    try:
        return await engine.endpoint(endpoint).handle(items, request.headers.get("x-routing-key"),
                                                      request.headers.get("x-model-version"), source)
    except UnknownPin as exc:
        return error(404, str(exc))
    except Overloaded as exc:
        return error(503, f"overloaded, retry later: {exc}", headers={"Retry-After": str(exc.retry_after_s)})
    except NoDeployment as exc:
        return error(503, str(exc), headers={"Retry-After": "5"})
    except ModelFailure as exc:
        return error(500, f"model failure: {exc}")


def model_route(holder: EngineHolder, endpoint: str, model: type[BaseModel], field: str, limit: int,
                render: Callable[[Answer], dict[str, Any]]) -> Handler:
    """POST handler: validate the body, route `field`'s items, render the endpoint's answer."""

    async def handle(request: Request) -> Response:
        parsed = await parse(request, model, limit)
        if isinstance(parsed, Response):
            return parsed
        answer = await serve(holder, request, endpoint, getattr(parsed, field))
        if isinstance(answer, Response):
            return answer
        body = {**render(answer), "model_version": answer.version, "route": answer.route,
                "latency_ms": _latency(answer)}
        return json_response(body, headers=_answer_headers(answer))

    return handle


def _predictions(answer: Answer) -> dict[str, Any]:
    return {"predictions": answer.codec.decode(np.stack(answer.outputs))}


def _embeddings(answer: Answer) -> dict[str, Any]:
    return {"embeddings": answer.outputs}


def openapi(models: Any) -> dict[str, Any]:
    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": model.model_json_schema()}}}

    errors = {"413": {"description": "body too large"}, "422": {"description": "invalid input: field and limit"},
              "503": {"description": "overloaded or no model deployed; see Retry-After"}}
    return {
        "openapi": "3.1.0", "info": {"title": "Switchyard", "version": "1"},
        "paths": {
            "/v1/digits/predict": {"post": {"summary": "Classify 8x8 digits", "requestBody": body(models.digits),
                                            "responses": {"200": body(PredictResponse), **errors}}},
            "/v1/minilm/embed": {"post": {"summary": "Embed sentences", "requestBody": body(models.minilm),
                                          "responses": {"200": body(EmbedResponse), **errors}}},
        },
    }


def create_app(holder: EngineHolder, extra_routes: list[Any] | None = None) -> Starlette:
    """The app is built at import; limits and the engine are bound when the service starts."""
    state: dict[str, Any] = {}

    async def predict(request: Request) -> Response:
        handler: Handler = state["predict"]
        return await handler(request)

    async def embed(request: Request) -> Response:
        handler: Handler = state["embed"]
        return await handler(request)

    async def spec(request: Request) -> Response:
        return json_response(state["openapi"])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = holder.get()
        settings = engine.settings
        models = request_models(settings.max_rows, settings.max_chars)
        limit = settings.max_body_bytes
        state.update(predict=model_route(holder, "digits", models.digits, "inputs", limit, _predictions),
                     embed=model_route(holder, "minilm", models.minilm, "texts", limit, _embeddings),
                     openapi=openapi(models))
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    routes = [Route("/v1/digits/predict", predict, methods=["POST"]),
              Route("/v1/minilm/embed", embed, methods=["POST"]),
              Route("/v1/openapi.json", spec, methods=["GET"]),
              *(extra_routes or [])]
    return Starlette(routes=routes, lifespan=lifespan)
