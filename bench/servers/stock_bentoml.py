"""Stock BentoML for comparison: `batchable` APIs serving the same ONNX files as Switchyard.

Bench-only code: the model tags and latency budget come from BENCH_MINILM_TAG,
BENCH_DIGITS_TAG and BENCH_MAX_LATENCY_MS, read when the module loads, because BentoML's
decorator needs them.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

from bench.servers.common import load_stored, tags_from_env

MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))


@bentoml.service(name="stock", workers=1)
class Stock:
    def __init__(self) -> None:
        self.models = {f: load_stored(t) for f, t in tags_from_env().items()}

    @bentoml.api(route="/v1/minilm/embed", batchable=True, max_batch_size=64, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, texts: list[str]) -> np.ndarray:
        return self.models["minilm"].run(texts)

    @bentoml.api(route="/v1/digits/predict", batchable=True, max_batch_size=64, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.models["digits"].run(inputs.tolist())
