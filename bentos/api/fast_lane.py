"""Switchyard's own routes, straight from the HTTP server: the way around BentoML's middleware chain.

BentoML puts every request through its error handler, metrics, OpenTelemetry, a timeout that starts a
task per request, its request context, its exception handler and its router before a mounted app sees
it: about 0.4 ms of the 0.89 ms of server CPU a one-row digits request costs (docs/benchmarks-profile.md).
Switchyard's app already does that work for its own routes (request ids, per-version metrics, spans,
admission, deadlines), so requests for /v1/... and /v2/... go to it directly, under the same overall
timeout BentoML would have applied. Everything else (BentoML's /metrics and probes, the playground)
takes BentoML's way, as does every request when a BentoML feature that must see them is on: its access
log, CORS, tracing (its HTTP span is the parent of ours), or any middleware this module does not know.
`SWITCHYARD_FAST_LANE=false` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bentos.api.problems import send_detail
from bentos.settings import ServeSettings

log = logging.getLogger("switchyard.fast_lane")

# BentoML middleware whose work Switchyard's app does itself for its routes (by class name: where
# they live moves between BentoML releases). The OpenTelemetry one is only replaceable without tracing.
REPLACED = {"RunnerTrafficMetricsMiddleware", "OpenTelemetryMiddleware", "TimeoutMiddleware", "ContextMiddleware"}
PREFIXES = ("/v1/", "/v2/")


def ours(path: str) -> bool:
    return path.startswith(PREFIXES) or path == "/v2"


class FastLane:
    """ASGI: HTTP requests for Switchyard's paths to `app` (a ServingApp; its hot route to its own lane),
    everything else (lifespan too) to `full`."""

    def __init__(self, full: Any, app: Any, timeout_s: float | None) -> None:
        self.full, self.app, self.timeout_s = full, app, timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and ours(scope["path"]):
            await self.direct(scope, receive, send, self.app.lane(scope) or self.app)
        else:
            await self.full(scope, receive, send)

    async def direct(self, scope: dict[str, Any], receive: Any, send: Any, app: Any) -> None:
        """BentoML's timeout, kept: a request still unanswered after `traffic.timeout` gets 504. One timer on
        the request's own task, where BentoML starts a second task per request. For a stream
        (text/event-stream) it is a time to its first byte: a generation may rightly outlast it, and has
        limits of its own (max_tokens, a stall timeout)."""
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if not started and message["type"] == "http.response.start":
                started = True
                if _streams(message):
                    deadline.reschedule(None)
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s) as deadline:
                await app(scope, receive, tracked)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            await send_detail(send, 504, f"not answered in {self.timeout_s:g} s (BentoML traffic.timeout)")


def _streams(start: dict[str, Any]) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.get("headers", ()))


# What BentoML's app and the playground serve besides Switchyard's own paths. BentoML's HTTP metrics label
# every request with its raw path, so a stream of random paths grew /metrics without bound (1,500 random
# paths: from 43 lines to about 30,000); any other path is a 404 answered here, before that middleware.
SERVED = frozenset({"/", "/metrics", "/readyz", "/livez", "/healthz", "/schema.json", "/docs.json"})
SERVED_PREFIXES = ("/playground/", "/static_content/", "/assets/")


def served(path: str) -> bool:
    return path in SERVED or path == "/playground" or path.startswith(SERVED_PREFIXES) or ours(path)


class KnownPaths:
    """ASGI: a 404 for an HTTP path that nothing here serves, without passing it to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not served(scope["path"]):
            await send_detail(send, 404, "not found")
            return
        await self.app(scope, receive, send)


def why_not(full: Any) -> str | None:
    """Why BentoML's chain must see Switchyard's requests, or None when the fast lane is safe."""
    from bentoml._internal.configuration.containers import BentoMLContainer  # read after inject_config

    names = [m.cls.__name__ for m in getattr(full, "user_middleware", [])]
    unknown = [n for n in names if n not in REPLACED]
    if unknown:
        return f"BentoML middleware {', '.join(unknown)} is on"
    if BentoMLContainer.tracing.exporter_type.get():
        return "BentoML tracing is on"
    if not names:
        return "the BentoML app is not the one this module knows"
    return None


def timeout_of(full: Any) -> float | None:
    return next((m.kwargs.get("timeout") for m in full.user_middleware if m.cls.__name__ == "TimeoutMiddleware"),
                None)


def with_fast_lane(full: Any, app: Any) -> Any:
    """The worker's ASGI app: `full` (BentoML's), with `app`'s paths on the fast lane where that is safe, and
    unknown paths answered before either."""
    if not ServeSettings().fast_lane:
        log.info("fast lane off (SWITCHYARD_FAST_LANE=false): every request takes BentoML's middleware")
        return KnownPaths(full)
    reason = why_not(full)
    if reason:
        log.warning("fast lane off: %s, so Switchyard's requests take BentoML's middleware too (docs/"
                    "how-serving-works.md)", reason)
        return KnownPaths(full)
    return KnownPaths(FastLane(full, app, timeout_of(full)))
