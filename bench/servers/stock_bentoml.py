"""Stock BentoML for comparison: a `batchable` API serving the same ONNX file as Switchyard.

Bench-only code: the model tag and latency budget come from BENCH_MODEL_TAG and
BENCH_MAX_LATENCY_MS, read when the module loads, because BentoML's decorator needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np

from bentos.families.minilm import TextCodec
from bentos.runtime import load_session

MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))


@bentoml.service(name="stock", workers=1)
class Stock:
    def __init__(self) -> None:
        model = bentoml.models.get(os.environ["BENCH_MODEL_TAG"])
        root = Path(model.path)
        self.codec = TextCodec.from_config(root, model.info.metadata.get("preprocess", {}))
        self.session = load_session(root / "model.onnx")

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, texts: list[str]) -> np.ndarray:
        return self.session.run(None, self.codec.encode(texts))[0]
