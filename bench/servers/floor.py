"""The HTTP floor: bare Starlette that parses the same JSON and answers a fixed body of the
right size, with no model. Nothing can serve these requests faster over HTTP in Python."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.servers.common import FIELDS, PATHS

ONE_ROW = {
    "minilm": [0.05] * 384,
    "digits": {"label": 0, "confidence": 1.0, "probabilities": [0.1] * 10},
}
KEYS = {"minilm": "embeddings", "digits": "predictions"}


def _route(family: str) -> Route:
    async def handle(request: Request) -> Response:
        items = json.loads(await request.body())[FIELDS[family]]
        body = {KEYS[family]: [ONE_ROW[family]] * len(items), "model_version": "floor"}
        return Response(json.dumps(body), media_type="application/json")

    return Route(PATHS[family], handle, methods=["POST"])


async def _health(request: Request) -> Response:
    return Response("ok")


app = Starlette(routes=[_route("minilm"), _route("digits"), Route("/health", _health)])
