"""The fast lane: which requests skip BentoML's middleware, the timeout it keeps, and when it stays off."""

from __future__ import annotations

import asyncio
from typing import Any

import bentoml
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bentos.api.app import ServerErrors, ServingApp
from bentos.api.fast_lane import FastLane, KnownPaths, why_not
from bentos.api.worker import WorkerService, in_worker


async def hot(request: Request) -> Response:
    return Response(f"hot {request.path_params['endpoint']} {request.path_params['verb']}")


async def fixed(request: Request) -> Response:
    return Response("fixed")


def serving_app() -> ServingApp:
    routes = [Route("/v1/health", fixed), Route("/v1/admin/keys", fixed, methods=["GET", "POST"]),
              Route("/v2/models/{model}/infer", fixed, methods=["POST"]),
              Route("/v1/{endpoint}/{verb}", hot, methods=["POST"])]
    return ServingApp(hot, "/v1/{endpoint}/{verb}", routes=routes)


def scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": [], "scheme": "http", "server": ("127.0.0.1", 3000),
            "client": ("127.0.0.1", 5000), "http_version": "1.1", "asgi": {"version": "3.0"}}


async def call(app: Any, s: dict[str, Any]) -> tuple[int, bytes, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(s, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), sent


@pytest.mark.parametrize("path, method, hot_route", [
    ("/v1/digits/predict", "POST", True),
    ("/v1/digits/predict", "GET", False),      # the router answers 405
    ("/v1/admin/keys", "POST", False),         # a fixed route's name is never an endpoint
    ("/v1/health/x", "POST", False),
    ("/v1/digits/predict/", "POST", False),
    ("/v1//predict", "POST", False),
    ("/v2/models/digits/infer", "POST", False),
])
def test_only_the_generic_inference_route_takes_the_hot_lane(path: str, method: str, hot_route: bool) -> None:
    assert (serving_app().lane(scope(path, method)) is not None) is hot_route


async def test_the_hot_lane_answers_as_the_router_would_with_a_request_id() -> None:
    app = serving_app()
    lane = FastLane(full=None, app=app, timeout_s=5)
    status, body, sent = await call(lane, scope("/v1/digits/predict"))
    assert (status, body) == (200, b"hot digits predict")
    assert any(k == b"x-request-id" for k, _ in sent[0]["headers"])
    status, body, _ = await call(lane, scope("/v1/admin/keys"))  # through the app's own router
    assert (status, body) == (200, b"fixed")


async def test_other_paths_and_the_lifespan_take_bentomls_way() -> None:
    seen: list[str] = []

    async def full(s: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(s.get("path", s["type"]))
        if s["type"] == "http":
            await Response("bentoml")(s, receive, send)

    lane = FastLane(full=full, app=serving_app(), timeout_s=5)
    for path in ("/metrics", "/readyz", "/playground/", "/v1", "/v10/x"):
        assert (await call(lane, scope(path, "GET")))[1] == b"bentoml"
    await lane({"type": "lifespan"}, None, None)
    assert seen == ["/metrics", "/readyz", "/playground/", "/v1", "/v10/x", "lifespan"]


async def test_a_request_unanswered_by_the_timeout_gets_504_naming_the_setting() -> None:
    async def stuck(request: Request) -> Response:
        await asyncio.sleep(3600)
        return Response("never")

    app = ServingApp(stuck, "/v1/{endpoint}/{verb}", routes=[Route("/v1/{endpoint}/{verb}", stuck, methods=["POST"])])
    status, body, _ = await call(FastLane(full=None, app=app, timeout_s=0.05), scope("/v1/digits/predict"))
    assert status == 504 and b"traffic.timeout" in body


async def test_a_timeout_after_the_answer_began_and_the_apps_own_timeouts_are_raised_on() -> None:
    async def half(s: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(3600)

    async def own(s: dict[str, Any], receive: Any, send: Any) -> None:
        raise TimeoutError("the app's own")

    for app in (half, own):
        holder = Starlette()
        holder.lane = lambda s, app=app: app  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):
            await call(FastLane(full=None, app=holder, timeout_s=0.05), scope("/v1/digits/predict"))


async def test_an_unexpected_error_is_a_500_and_raised_for_the_server_to_log() -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("bug")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError):
        await ServerErrors(broken)(scope("/v1/digits/predict"), None, send)
    assert sent[0]["status"] == 500


def test_it_stays_off_when_bentoml_middleware_it_does_not_replace_is_on() -> None:
    class AccessLogMiddleware:
        def __init__(self, app: Any) -> None:
            self.app = app

    class TimeoutMiddleware(AccessLogMiddleware):
        pass

    assert why_not(Starlette(middleware=[Middleware(TimeoutMiddleware)])) is None
    reason = why_not(Starlette(middleware=[Middleware(TimeoutMiddleware), Middleware(AccessLogMiddleware)]))
    assert reason is not None and "AccessLogMiddleware" in reason


def test_a_worker_service_mounts_its_late_apps_once_and_hands_the_worker_a_fast_lane(
        monkeypatch: pytest.MonkeyPatch) -> None:
    @bentoml.service(name="lane_probe", logging={"access": {"enabled": False}})  # as service.py has it
    class Probe:
        pass

    built: list[Starlette] = []

    def build() -> Starlette:
        built.append(Starlette())
        return built[-1]

    app = serving_app()
    probe = in_worker(Probe, app, late_mounts=[(build, "/")])
    assert isinstance(probe, WorkerService) and probe.name == "lane_probe" and built == []  # not at import
    guarded = probe.to_asgi()
    assert isinstance(guarded, KnownPaths)
    lane = guarded.app
    assert isinstance(lane, FastLane) and lane.app is app and lane.timeout_s == 60
    assert [m for m, _, _ in probe.mount_apps] == built and len(built) == 1
    monkeypatch.setenv("SWITCHYARD_FAST_LANE", "false")
    assert isinstance(probe.to_asgi().app, Starlette) and len(built) == 1


async def test_a_stream_is_timed_to_its_first_byte_not_cut_at_the_timeout() -> None:
    """Server-Sent Events may outlast traffic.timeout once they have started; a stream that never starts
    still gets the 504."""

    async def stream(s: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for i in range(3):
            await asyncio.sleep(0.05)  # three events, each after the whole timeout has passed once more
            await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def silent(s: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(3600)

    holder = Starlette()
    holder.lane = lambda s: stream  # type: ignore[attr-defined]
    status, body, _ = await call(FastLane(full=None, app=holder, timeout_s=0.04), scope("/v1/chat/completions"))
    assert status == 200 and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    holder.lane = lambda s: silent  # type: ignore[attr-defined]
    status, body, _ = await call(FastLane(full=None, app=holder, timeout_s=0.04), scope("/v1/chat/completions"))
    assert status == 504 and b"traffic.timeout" in body


def test_every_fixed_v1_route_is_a_reserved_endpoint_name() -> None:
    """One list (config.RESERVED): a fixed /v1 route outside it would be shadowed by an endpoint of its name."""
    with pytest.raises(RuntimeError, match="RESERVED"):
        ServingApp(hot, "/v1/{endpoint}/{verb}", routes=[Route("/v1/stats/x", fixed)])
    assert {"chat", "completions", "models", "admin", "health"} <= serving_app().reserved


@pytest.mark.parametrize("path, known", [
    ("/metrics", True), ("/readyz", True), ("/livez", True), ("/", True), ("/playground", True),
    ("/playground/gradio_api/info", True), ("/v1/digits/predict", True), ("/v2/models/digits", True),
    ("/v1x", False), ("/random-3f9a", False), ("/metricsx", False), ("/playgroundx", False), ("/.env", False),
])
async def test_a_path_nothing_serves_is_a_404_before_bentomls_middleware(path: str, known: bool) -> None:
    """BentoML's HTTP metrics label requests with the raw path: unknown paths must never reach them."""
    reached: list[str] = []

    async def inner(s: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(s["path"])
        await Response("inner")(s, receive, send)

    status, _, _ = await call(KnownPaths(inner), scope(path, "GET"))
    assert (reached == [path], status) == ((True, 200) if known else (False, 404))
