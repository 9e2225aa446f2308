"""Digits: 8x8 grey images, 64 pixel values in 0..16, ten classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bentos.families.base import Codec, Feed

N_PIXELS = 64
PIXEL_MAX = 16.0
N_CLASSES = 10
INPUT_NAME = "pixels"


class DigitsCodec(Codec):
    family: ClassVar[str] = "digits"
    output_name: ClassVar[str] = "probabilities"

    @classmethod
    def from_config(cls, model_dir: Path, preprocess: dict[str, Any]) -> DigitsCodec:
        return cls()

    @classmethod
    def schema(cls) -> dict[str, Any]:
        return {
            "inputs": [{"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", N_PIXELS],
                        "range": [0.0, PIXEL_MAX]}],
            "outputs": [{"name": cls.output_name, "dtype": "float32", "shape": ["batch", N_CLASSES]}],
        }

    def preprocess_config(self) -> dict[str, Any]:
        # Scaling to 0..1 happens inside the graph, so the feed is the raw pixels.
        return {"pixels": N_PIXELS, "pixel_max": PIXEL_MAX}

    @classmethod
    def warmup_items(cls) -> list[Any]:
        return [[PIXEL_MAX / 2] * N_PIXELS]

    def encode(self, items: list[Any]) -> Feed:
        arr = np.asarray(items, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != N_PIXELS:
            raise ValueError(f"inputs must be rows of {N_PIXELS} pixels, got shape {arr.shape}")
        return {INPUT_NAME: arr}

    def agreement(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(int(a.argmax()) == int(b.argmax()))

    def decode(self, output: np.ndarray) -> list[dict[str, Any]]:
        labels = output.argmax(axis=1)
        return [
            {"label": int(label), "confidence": float(row[label]), "probabilities": row.tolist()}
            for label, row in zip(labels, output, strict=True)
        ]
