"""The admin API under /v1/admin: endpoints, deployments, promote, rollback, rollouts, audit, stats, models, keys.

Every call needs `Authorization: Bearer <token>`; the token's name is the audit actor and its role decides
what it may do (viewer reads, operator changes splits and runs rollouts, admin also manages endpoints and
keys). Without any token configured the API is closed (403), so a fresh install is not open.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import EngineHolder, ascii_int, parse
from bentos.api.problems import error, json_response, problem
from bentos.config import EndpointRequest
from bentos.controlplane.rollout_controller import RolloutController
from bentos.controlplane.rollouts import RolloutRequest, RolloutState
from bentos.controlplane.store import Revision
from bentos.errors import Forbidden, ServingError
from bentos.schemas import ActionRequest, DeploymentRequest, KeyRequest, KeyUpdate
from bentos.settings import Principal, Role

ADMIN_BODY_LIMIT = 64 * 1024
Handler = Callable[[Request, str], Awaitable[Response]]
B = TypeVar("B", bound=BaseModel)


def principal_for(request: Request, tokens: dict[str, Principal]) -> Principal | Response:
    if not tokens:
        return error(403, "the admin API is disabled: set SWITCHYARD_ADMIN_TOKEN (or SWITCHYARD_ADMIN_TOKENS)")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and presented:
        found = None
        for token, who in tokens.items():  # every token compared, in constant time, on the exact bytes sent
            if hmac.compare_digest(token.encode(), presented.encode()):
                found = who
        if found is not None:
            return found
    return error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": 'Bearer realm="switchyard"'})


def require(who: Principal, role: Role) -> None:
    if not who.may(role):
        raise Forbidden(f"this needs the {role} role; {who.name} is a {who.role} (roles are set in "
                        "SWITCHYARD_ADMIN_TOKENS)")


def revision_json(record: Revision) -> dict[str, Any]:
    return {"endpoint": record.endpoint, "revision": record.revision, **record.spec, "actor": record.actor,
            "action": record.action, "reason": record.reason, "created_at": record.created_at}


def with_body(model: type[B], handler: Callable[[Request, str, B], Awaitable[Response]]) -> Handler:
    """Parse and validate the JSON body as `model` (422 naming the field) before the handler runs."""

    async def parsed(request: Request, actor: str) -> Response:
        body = await parse(request, model, ADMIN_BODY_LIMIT, "the admin API's limit", empty=b"{}")
        return await handler(request, actor, body)

    parsed.body = model  # type: ignore[attr-defined]  # for the OpenAPI document
    return parsed


def _controller(holder: EngineHolder) -> RolloutController:
    controller = holder.get().rollouts
    if not isinstance(controller, RolloutController):
        raise RuntimeError("the service did not wire a rollout controller into the engine")
    return controller


def guard(holder: EngineHolder, handler: Handler, role: Role) -> Callable[[Request], Awaitable[Response]]:
    """The route as callers see it: 401 without a known token, 403 without `role`, errors as statuses."""

    async def endpoint(request: Request) -> Response:
        who = principal_for(request, holder.get().settings.tokens())
        if isinstance(who, Response):
            return who
        try:
            require(who, role)
            request.state.principal = who
            return await handler(request, who.name)
        except ServingError as exc:
            return problem(exc)

    endpoint.role = role  # type: ignore[attr-defined]  # for the OpenAPI document and the auth matrix test
    endpoint.body = getattr(handler, "body", None)  # type: ignore[attr-defined]
    return endpoint


def admin_routes(holder: EngineHolder) -> list[Route]:
    def viewer(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guard(holder, handler, "viewer")

    def operator(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guard(holder, handler, "operator")

    def admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        return guard(holder, handler, "admin")

    async def whoami(request: Request, actor: str) -> Response:
        return json_response(request.state.principal.model_dump())

    async def models(request: Request, actor: str) -> Response:
        return json_response(await holder.get().models(request.query_params.get("task")))

    async def endpoints(request: Request, actor: str) -> Response:
        engine = holder.get()
        return json_response([engine.endpoint_json(name) for name in sorted(engine.endpoints)])

    async def one_endpoint(request: Request, actor: str) -> Response:
        return json_response(holder.get().endpoint_json(request.path_params["endpoint"]))

    async def create_endpoint(request: Request, actor: str, body: EndpointRequest) -> Response:
        return json_response(await holder.get().create_endpoint(body.config(), actor, body.reason), 201)

    async def delete_endpoint(request: Request, actor: str) -> Response:
        reason = request.query_params.get("reason", "")
        if not reason.strip():
            return error(422, "reason: give a reason (?reason=...); it goes into the audit log")
        return json_response(await holder.get().delete_endpoint(request.path_params["endpoint"], actor, reason))

    async def deployments(request: Request, actor: str) -> Response:
        engine = holder.get()
        return json_response({name: e.health() for name, e in engine.endpoints.items()})

    async def deployment(request: Request, actor: str) -> Response:
        engine, name = holder.get(), request.path_params["endpoint"]
        endpoint = await engine.known_endpoint(name)
        return json_response({**endpoint.health(), "revisions": await engine.revisions(name)})

    async def deploy(request: Request, actor: str, body: DeploymentRequest) -> Response:
        return json_response(revision_json(await holder.get().deploy(request.path_params["endpoint"], body, actor)))

    async def promote(request: Request, actor: str, body: ActionRequest) -> Response:
        record = await holder.get().promote(request.path_params["endpoint"], body.reason, actor)
        return json_response(revision_json(record))

    async def rollback(request: Request, actor: str, body: ActionRequest) -> Response:
        record = await holder.get().rollback(request.path_params["endpoint"], body.revision, body.reason, actor)
        return json_response(revision_json(record))

    async def rollout(request: Request, actor: str) -> Response:
        return json_response(rollout_json(await _controller(holder).get(request.path_params["endpoint"])))

    async def start_rollout(request: Request, actor: str, body: RolloutRequest) -> Response:
        state = await _controller(holder).start(request.path_params["endpoint"], body, actor)
        return json_response(rollout_json(state))

    async def rollout_action(request: Request, actor: str, body: ActionRequest) -> Response:
        controller, name = _controller(holder), request.path_params["endpoint"]
        act = {"pause": controller.pause, "resume": controller.resume, "abort": controller.abort}
        action = request.path_params["action"]
        if action not in act:
            return error(404, f"unknown rollout action {action!r}; actions: {', '.join(act)}")
        return json_response(rollout_json(await act[action](name, actor, body.reason)))

    async def audit(request: Request, actor: str) -> Response:
        limit = _int_param(request, "limit", 200, 1, 10_000)
        if isinstance(limit, Response):
            return limit
        return json_response(await holder.get().audit(request.query_params.get("endpoint"), limit))

    async def drift(request: Request, actor: str) -> Response:
        q = request.query_params
        return json_response(await holder.get().drift(q.get("endpoint"), q.get("feature")))

    async def payloads(request: Request, actor: str) -> Response:
        limit = _int_param(request, "limit", 50, 1, 1000)
        if isinstance(limit, Response):
            return limit
        q = request.query_params
        return json_response(await holder.get().payloads_tail(q.get("endpoint"), q.get("version"), limit))

    async def stats(request: Request, actor: str) -> Response:
        window = _int_param(request, "window", 60, 5, 86_400)
        if isinstance(window, Response):
            return window
        return json_response(await holder.get().version_stats(float(window)))

    return [
        Route("/v1/admin/whoami", viewer(whoami), methods=["GET"]),
        Route("/v1/admin/rollouts/{endpoint}", viewer(rollout), methods=["GET"]),
        Route("/v1/admin/rollouts/{endpoint}", operator(with_body(RolloutRequest, start_rollout)), methods=["POST"]),
        Route("/v1/admin/rollouts/{endpoint}/{action:str}", operator(with_body(ActionRequest, rollout_action)),
              methods=["POST"]),
        Route("/v1/admin/models", viewer(models), methods=["GET"]),
        Route("/v1/admin/endpoints", viewer(endpoints), methods=["GET"]),
        Route("/v1/admin/endpoints", admin(with_body(EndpointRequest, create_endpoint)), methods=["POST"]),
        Route("/v1/admin/endpoints/{endpoint}", viewer(one_endpoint), methods=["GET"]),
        Route("/v1/admin/endpoints/{endpoint}", admin(delete_endpoint), methods=["DELETE"]),
        Route("/v1/admin/deployments", viewer(deployments), methods=["GET"]),
        Route("/v1/admin/deployments/{endpoint}", viewer(deployment), methods=["GET"]),
        Route("/v1/admin/deployments/{endpoint}", operator(with_body(DeploymentRequest, deploy)), methods=["PUT"]),
        Route("/v1/admin/deployments/{endpoint}/promote", operator(with_body(ActionRequest, promote)),
              methods=["POST"]),
        Route("/v1/admin/deployments/{endpoint}/rollback", operator(with_body(ActionRequest, rollback)),
              methods=["POST"]),
        Route("/v1/admin/audit", viewer(audit), methods=["GET"]),
        Route("/v1/admin/stats", viewer(stats), methods=["GET"]),
        Route("/v1/admin/drift", viewer(drift), methods=["GET"]),
        # Payloads are what users sent: operators and admins only.
        Route("/v1/admin/payloads", operator(payloads), methods=["GET"]),
        *key_routes(holder, admin),
    ]


def key_routes(holder: EngineHolder, admin: Callable[[Handler], Callable[[Request], Awaitable[Response]]]
               ) -> list[Route]:
    """Inference API keys: admins create (the secret is shown once), list, change limits and revoke."""

    async def keys(request: Request, actor: str) -> Response:
        return json_response(await holder.get().keys())

    async def create(request: Request, actor: str, body: KeyRequest) -> Response:
        return json_response(await holder.get().create_key(body, actor), 201)

    async def update(request: Request, actor: str, body: KeyUpdate) -> Response:
        return json_response(await holder.get().update_key(request.path_params["name"], body, actor))

    async def revoke(request: Request, actor: str) -> Response:
        reason = request.query_params.get("reason", "")
        if not reason.strip():
            return error(422, "reason: give a reason (?reason=...); it goes into the audit log")
        change = KeyUpdate(reason=reason[:1000])
        return json_response(await holder.get().update_key(request.path_params["name"], change, actor, revoke=True))

    return [
        Route("/v1/admin/keys", admin(keys), methods=["GET"]),
        Route("/v1/admin/keys", admin(with_body(KeyRequest, create)), methods=["POST"]),
        Route("/v1/admin/keys/{name}", admin(with_body(KeyUpdate, update)), methods=["PATCH"]),
        Route("/v1/admin/keys/{name}", admin(revoke), methods=["DELETE"]),
    ]


def rollout_json(state: RolloutState) -> dict[str, Any]:
    looks = [h for h in state.history if "checks" in h]
    return {**state.model_dump(), "percent": state.percent, "latest": looks[-1] if looks else None,
            "decisions": [h for h in state.history if h["action"] != "hold"]}


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int | Response:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = ascii_int(raw)
    if value is None or not low <= value <= high:
        return error(422, f"{name}: must be an integer from {low} to {high}, got {raw!r}")
    return value
