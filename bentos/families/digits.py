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


def image_to_pixels(image: np.ndarray) -> list[float]:
    """A drawn or uploaded digit (any size, RGB(A) or grey) as the 64 pixels the model expects.

    Ink becomes high values, as in scikit-learn's digits: the digit is cropped to its
    bounding box, centred on a square with a margin, block-averaged to 8x8 and scaled
    to 0..16. Raises ValueError for an empty image.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        alpha = arr[..., 3] / 255.0 if arr.shape[-1] == 4 else np.ones(arr.shape[:2], np.float32)
        grey = arr[..., :3].mean(axis=-1)
        # Ink is what differs from the background: dark strokes on light paper, or light on dark.
        background = np.median(grey[alpha > 0.5]) if (alpha > 0.5).any() else 255.0
        ink = np.abs(grey - background) * alpha
        if not (alpha > 0.5).all():  # a transparent canvas: strokes are the opaque part
            ink = np.maximum(ink, (255.0 - grey) * alpha)
    else:
        ink = np.abs(arr - np.median(arr))
    mask = ink > ink.max() * 0.2 if ink.max() > 0 else np.zeros_like(ink, dtype=bool)
    if mask.sum() < 3:
        raise ValueError("the image is empty: draw or upload a digit first")
    rows, cols = np.where(mask)
    crop = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    side = int(max(crop.shape) * 1.25) + 1
    square = np.zeros((side, side), np.float32)
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    edges = np.linspace(0, side, 9).astype(int)
    small = np.array([[square[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean() for j in range(8)]
                      for i in range(8)], np.float32)
    small = small / small.max() * PIXEL_MAX if small.max() > 0 else small
    return [float(round(v)) for v in small.reshape(-1)]
