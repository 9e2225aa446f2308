"""The gRPC server each worker runs beside its HTTP server, on the same event loop (so both share one
engine: routing, batching, admission, keys and metrics), from the app's lifespan.

Every worker listens on the same port (SO_REUSEPORT; the kernel spreads connections over them, as it
does HTTP's). Besides inference: the standard health service (what Kubernetes' gRPC probes and
`grpc_health_probe` ask; SERVING once every endpoint is ready, as /readyz) and server reflection (what
grpcurl-style tools list and call through).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bentos.api.grpc.servicer import SERVICE, Inference, handler

if TYPE_CHECKING:
    from bentos.api.app import EngineHolder

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
Status = health_pb2.HealthCheckResponse.ServingStatus


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc ships no type hints
    """grpc.health.v1, answered from the engine's readiness at the moment it is asked."""

    def __init__(self, holder: EngineHolder, watch_every_s: float = 1.0) -> None:
        self.holder, self.watch_every_s = holder, watch_every_s

    def _status(self, service: str) -> int | None:
        if service not in ("", SERVICE):
            return None
        status: int = Status.SERVING if self.holder.get().ready else Status.NOT_SERVING
        return status

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=Status.SERVICE_UNKNOWN if status is None else status)
                last = status
            await asyncio.sleep(self.watch_every_s)


def http_host() -> str | None:
    """The address this worker's HTTP socket listens on: BentoML hands a worker its socket as `--fd N`."""
    argv = sys.argv
    if "--fd" not in argv[:-1]:
        return None
    with contextlib.suppress(ValueError, OSError):
        fd = int(argv[argv.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as s:
            host = s.getsockname()[0]
            return host if isinstance(host, str) and s.family in (socket.AF_INET, socket.AF_INET6) else None
    return None


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@contextlib.asynccontextmanager
async def grpc_server(holder: EngineHolder) -> AsyncIterator[None]:
    """The worker's gRPC server for the app's life (SWITCHYARD_GRPC_PORT; `false` runs none)."""
    engine = holder.get()
    settings = engine.settings
    if settings.grpc_port is None:
        engine.listeners["grpc"] = {"up": False, "port": None}
        yield
        return
    host = settings.grpc_host or http_host() or "0.0.0.0"
    # A message larger than a worker's bytes in flight could never be admitted: grpc refuses it unread
    # (RESOURCE_EXHAUSTED); each endpoint's own limits.max_body_bytes is checked before the model.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1),
                                      ("grpc.max_receive_message_length", settings.max_inflight_bytes)])
    server.add_generic_rpc_handlers((handler(Inference(holder)),))
    health_pb2_grpc.add_HealthServicer_to_server(Health(holder), server)
    reflection.enable_server_reflection((SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    where = address(host, settings.grpc_port)
    try:
        server.add_insecure_port(where)
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC: cannot listen on {where} ({exc}); choose another port with "
                           "SWITCHYARD_GRPC_PORT, or turn gRPC off with SWITCHYARD_GRPC_PORT=false") from None
    await server.start()
    engine.listeners["grpc"] = {"up": True, "port": settings.grpc_port, "host": host}
    try:
        yield
    finally:
        engine.listeners["grpc"] = {"up": False, "port": settings.grpc_port, "host": host}
        await server.stop(grace=5)
