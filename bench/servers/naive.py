"""The server most teams start with: FastAPI, one forward pass per request, no batching.

BENCH_BACKEND=torch runs torch eager fp32 (the PyTorch model the ONNX files came from);
BENCH_BACKEND=ort runs the same ONNX session Switchyard serves. Sync handlers, so FastAPI
runs them in its thread pool, as a plain `def predict` would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from bench.servers.common import StoredModel, load_stored, tags_from_env


class EmbedRequest(BaseModel):
    texts: list[str]


class PredictRequest(BaseModel):
    inputs: list[list[float]]


def _torch_runner(model: StoredModel) -> Any:
    """Torch eager fp32 for the family, fed by the same codec (tokenizer, pixel scaling)."""
    import torch

    from models.families import get_builder
    from models.settings import BuildSettings
    from models.workdir import ModelDir

    key = "minilm" if model.family == "minilm" else "digits-mlp"
    work = Path(os.environ.get("SWITCHYARD_WORK_DIR", "build"))
    module = get_builder(key, BuildSettings(work_dir=work, threads=2)).load_torch(ModelDir(work, key))
    torch.set_num_threads(2)

    def run(items: list[Any]) -> np.ndarray:
        feed = model.codec.encode(items)
        with torch.inference_mode():
            return module(*(torch.from_numpy(v) for v in feed.values())).numpy()

    return run


def create_app() -> FastAPI:
    backend = os.environ.get("BENCH_BACKEND", "ort")
    models = {f: load_stored(t, threads=2) for f, t in tags_from_env().items()}
    runners = {f: (_torch_runner(m) if backend == "torch" else m.run) for f, m in models.items()}
    app = FastAPI()

    @app.get("/health")
    def health() -> str:
        return "ok"

    if "minilm" in models:
        @app.post("/v1/minilm/embed")
        def embed(req: EmbedRequest) -> dict[str, Any]:
            return models["minilm"].answer(runners["minilm"](req.texts))

    if "digits" in models:
        @app.post("/v1/digits/predict")
        def predict(req: PredictRequest) -> dict[str, Any]:
            return models["digits"].answer(runners["digits"](req.inputs))

    return app
