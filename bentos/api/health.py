"""GET /v1/health: every endpoint's live versions, their state and circuits.

/livez and /readyz are BentoML's own; readiness asks the service's __is_ready__.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import EngineHolder
from bentos.api.problems import json_response


def health_routes(holder: EngineHolder) -> list[Route]:
    async def health(request: Request) -> Response:
        engine = holder.get()
        return json_response(engine.health(), 200 if engine.ready else 503)

    return [Route("/v1/health", health, methods=["GET"])]
