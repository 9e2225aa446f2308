"""What every peer server shares: the same stored ONNX file, codec and JSON answer as Switchyard's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PATHS = {"minilm": "/v1/minilm/embed", "digits": "/v1/digits/predict"}
FIELDS = {"minilm": "texts", "digits": "inputs"}


@dataclass
class StoredModel:
    family: str
    codec: Any
    session: Any
    path: Path

    def run(self, items: list[Any]) -> np.ndarray:
        return self.session.run([self.codec.output_name], self.codec.encode(items))[0]

    def answer(self, outputs: np.ndarray) -> dict[str, Any]:
        if self.family == "minilm":
            return {"embeddings": outputs.tolist()}
        return {"predictions": self.codec.decode(outputs)}


def load_stored(tag: str, threads: int | None = None) -> StoredModel:
    import bentoml
    from bentos.families import codec_for

    from bentos.runtime import load_session

    model = bentoml.models.get(tag)
    root = Path(model.path)
    family = model.info.labels["family"]
    codec = codec_for(family, root, model.info.metadata.get("preprocess") or {})
    return StoredModel(family, codec, load_session(root / "model.onnx", threads), root)


def tags_from_env() -> dict[str, str]:
    """BENCH_MINILM_TAG / BENCH_DIGITS_TAG, read when a bench server starts."""
    return {f: os.environ[f"BENCH_{f.upper()}_TAG"] for f in PATHS if os.environ.get(f"BENCH_{f.upper()}_TAG")}
