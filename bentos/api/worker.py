"""What a BentoML worker runs, and only a worker: the fast lane, and apps too heavy to build anywhere else.

`bentoml serve` imports service.py in its supervisor process too, for the configuration; an app built at
import (the Gradio playground: about 120 MB and 1.8 s) was built there for nothing. Apps given here as
builders are built in each worker, just before BentoML assembles the worker's app, so they are mounted
and started (their lifespans) as if service.py had mounted them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from _bentoml_sdk.service.factory import Service  # to_asgi: what the worker hands to uvicorn (1.4)

from bentos.api.fast_lane import with_fast_lane


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
