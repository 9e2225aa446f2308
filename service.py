"""Switchyard's BentoML service: a thin declaration; the logic lives in bentos/."""

from __future__ import annotations

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer  # its tracer provider (1.4)
from pydantic import ValidationError

from bentos.api.admin import admin_routes
from bentos.api.app import EngineHolder, create_app
from bentos.api.grpc.server import grpc_server
from bentos.api.health import health_routes
from bentos.api.oip import oip_routes
from bentos.api.oip_generate import oip_generate_routes
from bentos.api.openai import openai_routes
from bentos.api.playground import build_playground
from bentos.api.repository import repository_routes
from bentos.api.worker import in_worker, stop_serving
from bentos.controlplane.engine import Engine
from bentos.controlplane.rollout_controller import RolloutController
from bentos.dataplane.tracing import use_provider
from bentos.errors import ConfigError
from bentos.settings import ServeSettings

holder = EngineHolder()
app = create_app(holder, [*health_routes(holder), *admin_routes(holder), *openai_routes(holder),
                         *oip_routes(holder), *oip_generate_routes(holder), *repository_routes(holder)],
                 beside=[grpc_server])


@bentoml.asgi_app(app, path="/")
# BentoML's access log is off: Switchyard's per-version metrics cover what it reported, and since it must see
# every request, turning it on also takes the fast lane away (docs/benchmarks-profile.md). Turn it back on
# at serve time: BENTOML_CONFIG_OPTIONS="services.switchyard.logging.access.enabled=true".
@bentoml.service(name="switchyard", traffic={"timeout": 60}, workers=1, logging={"access": {"enabled": False}})
class Switchyard:
    """Serves every endpoint's live model versions; endpoints and deployments come from the control plane."""

    def __init__(self) -> None:
        # Settings and switchyard.yaml are read here, when a worker starts, never at import time.
        # BentoML's `tracing` config, for our spans too
        use_provider(BentoMLContainer.tracer_provider.get(), bool(BentoMLContainer.tracing.exporter_type.get()))
        try:
            self.engine = Engine(ServeSettings())
        except (ConfigError, ValidationError) as exc:
            stop_serving(str(exc))
        self.engine.rollouts = RolloutController(self.engine)
        holder.engine = self.engine

    def __is_ready__(self) -> bool:
        return self.engine.ready


# In each worker: /v1 and /v2 straight to `app` (the fast lane), and the Gradio playground at /playground,
# built there and not in BentoML's supervisor, which imports this file too (bentos/api/worker.py).
Switchyard = in_worker(Switchyard, app, late_mounts=[(lambda: build_playground(holder), "/")])
