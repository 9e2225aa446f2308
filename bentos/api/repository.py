"""Triton's model-repository extension on the Open Inference Protocol: list, load and unload models.

An endpoint is a model. `load` keeps its deployed versions loaded in every worker and replica (a pin
stored in the control plane, audited, applied here at once and elsewhere within a poll) until `unload`,
which lets an on-demand endpoint's idle versions go at once; its next request loads them again. The
answers are Triton's, so `tritonclient`'s get_model_repository_index, load_model and unload_model work.
Listing needs the viewer role, loading and unloading the operator role (admin tokens, Bearer).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.admin import principal_for, require
from bentos.api.app import EngineHolder
from bentos.api.http import read_body
from bentos.api.problems import json_response, oip_problem
from bentos.errors import InvalidInput, ServingError, Unauthorized
from bentos.settings import Role

BODY_LIMIT = 64 * 1024
Handler = Callable[[Request, str], Awaitable[Response]]


def _guarded(holder: EngineHolder, handler: Handler, role: Role) -> Callable[[Request], Awaitable[Response]]:
    """Errors in Triton's shape ({"error": ...}), which tritonclient raises as InferenceServerException."""

    async def route(request: Request) -> Response:
        try:
            who = principal_for(request, holder.get().settings.tokens())
            if isinstance(who, Response):
                raise Unauthorized(f"the model repository needs the {role} role: send an admin token as "
                                   "Authorization: Bearer (SWITCHYARD_ADMIN_TOKEN or SWITCHYARD_ADMIN_TOKENS)")
            require(who, role)
            await _object_body(request)
            return await handler(request, who.name)
        except ServingError as exc:
            return oip_problem(exc)

    route.role = role  # type: ignore[attr-defined]  # for the OpenAPI document
    return route


async def _object_body(request: Request) -> None:
    """Triton's bodies are optional JSON objects (`{"ready": true}`, `{"parameters": {...}}`)."""
    raw = await read_body(request, BODY_LIMIT, "the repository API's limit")
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError:
            raise InvalidInput("body", "not JSON") from None
        if not isinstance(body, dict):
            raise InvalidInput("body", "must be a JSON object")
        request.state.body = body


def repository_routes(holder: EngineHolder) -> list[Route]:
    async def index(request: Request, actor: str) -> Response:
        models = await holder.get().repository_index()
        if getattr(request.state, "body", {}).get("ready") is True:
            models = [m for m in models if m["state"] == "READY"]
        return json_response(models)

    async def load(request: Request, actor: str) -> Response:
        await holder.get().repository_load(request.path_params["model"], True, actor)
        return json_response({})  # Triton's body is empty; tritonclient reads only the status

    async def unload(request: Request, actor: str) -> Response:
        await holder.get().repository_load(request.path_params["model"], False, actor)
        return json_response({})

    return [
        Route("/v2/repository/index", _guarded(holder, index, "viewer"), methods=["POST"]),
        Route("/v2/repository/models/{model}/load", _guarded(holder, load, "operator"), methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", _guarded(holder, unload, "operator"), methods=["POST"]),
    ]
