"""What a BentoML worker runs, and only a worker: the fast lane, and apps too heavy to build anywhere else.

`bentoml serve` imports service.py in its supervisor process too, for the configuration; an app built at
import (the Gradio playground: about 120 MB and 1.8 s) was built there for nothing. Apps given here as
builders are built in each worker, just before BentoML assembles the worker's app, so they are mounted
and started (their lifespans) as if service.py had mounted them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from _bentoml_sdk.service.factory import Service  # to_asgi: what the worker hands to uvicorn (1.4)

from bentos.api.fast_lane import with_fast_lane

log = logging.getLogger("switchyard")
# uvicorn closes a connection idle this long; a client that reuses it at that very moment gets a reset
# (httpx's own idle expiry is 5 s, uvicorn's default too: one request in 512 of a burst failed so). The
# server must keep idle connections longer than any client or proxy in front of it does (nginx 60 s,
# AWS ALB 60 s, Go 90 s), so the client always closes first: `bentoml serve --timeout-keep-alive 120`.
KEEP_ALIVE_S = 120
UVICORN_KEEP_ALIVE_S = 5


def stop_serving(problem: str) -> None:
    """A worker cannot start for a reason that restarting will not fix (a typo in switchyard.yaml, a bad
    SWITCHYARD_* value): say why once and stop the whole server, so that it exits instead of respawning the
    worker for ever, never ready (a supervisor then shows the exit and this line)."""
    log.critical("switchyard cannot start: %s", problem)
    os.kill(os.getppid(), signal.SIGTERM)  # the `bentoml serve` supervisor: it stops every worker and exits
    raise SystemExit(2)


def keep_alive_of(argv: Sequence[str]) -> int:
    """The idle-connection timeout this worker's uvicorn was given (`--timeout-keep-alive`), else its default."""
    for i, arg in enumerate(argv):
        if arg == "--timeout-keep-alive" and i + 1 < len(argv) and argv[i + 1].isdigit():
            return int(argv[i + 1])
        if arg.startswith("--timeout-keep-alive="):
            return int(arg.split("=", 1)[1])
    return UVICORN_KEEP_ALIVE_S


def warn_short_keep_alive(argv: Sequence[str]) -> None:
    if (seconds := keep_alive_of(argv)) < KEEP_ALIVE_S:
        log.warning("idle connections close after %d s: a client reusing one then gets a connection reset; "
                    "serve with `bentoml serve --timeout-keep-alive %d` (make serve does)", seconds, KEEP_ALIVE_S)


class WorkerService(Service):  # type: ignore[misc]
    """A BentoML service whose worker mounts its late apps and sends Switchyard's paths down the fast lane."""

    __slots__ = ()
    # Class attributes: Service's slots are fixed. One service per process, as BentoML loads them.
    switchyard_app: ClassVar[Any] = None
    late_mounts: ClassVar[list[tuple[Callable[[], Any], str]]] = []
    mounted: ClassVar[bool] = False

    def to_asgi(self, is_main: bool = True) -> Any:
        cls = type(self)
        if not cls.mounted:
            warn_short_keep_alive(sys.argv)
            for build, path in cls.late_mounts:
                self.mount_asgi_app(build(), path=path)
            cls.mounted = True
        return with_fast_lane(super().to_asgi(is_main), cls.switchyard_app)


def in_worker(service: Any, app: Any, late_mounts: list[tuple[Callable[[], Any], str]]) -> Any:
    """`service` (a bentoml.service), its worker serving `app`'s paths directly and mounting each
    `(build, path)` of `late_mounts`. Changes its class only: BentoML's Service is slotted, and to_asgi is
    where the worker gets the app it runs."""
    WorkerService.switchyard_app, WorkerService.late_mounts, WorkerService.mounted = app, list(late_mounts), False
    service.__class__ = WorkerService
    return service
