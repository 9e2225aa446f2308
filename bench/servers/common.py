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
        feed = self.codec.encode(items)
        return np.stack(self.codec.split(feed, self.session.run(self.codec.output_names, feed)))

    def answer(self, outputs: np.ndarray) -> dict[str, Any]:
        if self.family == "minilm":
            return {"embeddings": outputs.tolist()}
        return {"predictions": self.codec.decode(list(outputs))}


def load_stored(tag: str, threads: int | None = None) -> StoredModel:
    from bentos.dataplane.runtime import load_version

    # The same loading, hash check and codec as Switchyard's own workers.
    version = load_version(tag, threads or 2)
    family = "minilm" if version.task == "text-embedding" else "digits"
    return StoredModel(family, version.codec, version.session, version.path)


def tags_from_env() -> dict[str, str]:
    """BENCH_MINILM_TAG / BENCH_DIGITS_TAG, read when a bench server starts."""
    return {f: os.environ[f"BENCH_{f.upper()}_TAG"] for f in PATHS if os.environ.get(f"BENCH_{f.upper()}_TAG")}
