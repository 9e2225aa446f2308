"""The admin API under /v1/admin: deployments, promote, rollback, audit, stats, models.

Every call needs `Authorization: Bearer <token>`; the token's name is the audit actor.
Without any token configured the API is closed (403), so a fresh install is not open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.engine import AdminError
from bentos.http import EngineHolder, error, invalid, json_response, read_body
from bentos.schemas import ActionRequest, DeploymentRequest
from bentos.store import Revision

ADMIN_BODY_LIMIT = 64 * 1024
Handler = Callable[[Request, str], Awaitable[Response]]


def actor_for(request: Request, tokens: dict[str, str]) -> str | Response:
    if not tokens:
        return error(403, "the admin API is disabled: set SWITCHYARD_ADMIN_TOKEN (or SWITCHYARD_ADMIN_TOKENS)")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented:
        for token, name in tokens.items():
            if hmac.compare_digest(token.encode(), presented.strip().encode()):
                return name
    return error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": 'Bearer realm="switchyard"'})


def revision_json(record: Revision) -> dict[str, Any]:
    return {"endpoint": record.endpoint, "revision": record.revision, **record.spec, "actor": record.actor,
            "action": record.action, "reason": record.reason, "created_at": record.created_at}


async def body_of(request: Request, model: type[BaseModel]) -> BaseModel | Response:
    raw = await read_body(request, ADMIN_BODY_LIMIT)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        return invalid(exc)


def admin_routes(holder: EngineHolder) -> list[Route]:
    def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            engine = holder.get()
            actor = actor_for(request, engine.settings.tokens())
            if isinstance(actor, Response):
                return actor
            try:
                return await handler(request, actor)
            except AdminError as exc:
                return error(exc.status, exc.message)
        return endpoint

    async def models(request: Request, actor: str) -> Response:
        return json_response(await holder.get().models())

    async def deployments(request: Request, actor: str) -> Response:
        engine = holder.get()
        return json_response({name: e.health() for name, e in engine.endpoints.items()})

    async def deployment(request: Request, actor: str) -> Response:
        engine = holder.get()
        name = request.path_params["endpoint"]
        if request.method == "GET":
            return json_response({**engine.endpoint(name).health(), "revisions": await engine.revisions(name)})
        parsed = await body_of(request, DeploymentRequest)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, DeploymentRequest)
        return json_response(revision_json(await engine.deploy(name, parsed, actor)))

    async def promote(request: Request, actor: str) -> Response:
        parsed = await body_of(request, ActionRequest)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, ActionRequest)
        record = await holder.get().promote(request.path_params["endpoint"], parsed.reason, actor)
        return json_response(revision_json(record))

    async def rollback(request: Request, actor: str) -> Response:
        parsed = await body_of(request, ActionRequest)
        if isinstance(parsed, Response):
            return parsed
        assert isinstance(parsed, ActionRequest)
        record = await holder.get().rollback(request.path_params["endpoint"], parsed.revision, parsed.reason, actor)
        return json_response(revision_json(record))

    async def audit(request: Request, actor: str) -> Response:
        limit = _int_param(request, "limit", 200, 1, 10_000)
        if isinstance(limit, Response):
            return limit
        return json_response(await holder.get().audit(request.query_params.get("endpoint"), limit))

    async def stats(request: Request, actor: str) -> Response:
        window = _int_param(request, "window", 60, 5, 86_400)
        if isinstance(window, Response):
            return window
        return json_response(await holder.get().version_stats(float(window)))

    return [
        Route("/v1/admin/models", guarded(models), methods=["GET"]),
        Route("/v1/admin/deployments", guarded(deployments), methods=["GET"]),
        Route("/v1/admin/deployments/{endpoint}", guarded(deployment), methods=["GET", "PUT"]),
        Route("/v1/admin/deployments/{endpoint}/promote", guarded(promote), methods=["POST"]),
        Route("/v1/admin/deployments/{endpoint}/rollback", guarded(rollback), methods=["POST"]),
        Route("/v1/admin/audit", guarded(audit), methods=["GET"]),
        Route("/v1/admin/stats", guarded(stats), methods=["GET"]),
    ]


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int | Response:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        return error(422, f"{name}: must be an integer from {low} to {high}, got {raw!r}")
    return int(raw)
