"""text-embedding, build half: sentences, judged on cosine with fp32 (mean and 1st percentile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bentos.tasks import Codec
from models.tasks.base import Dataset
from models.tasks.text import load_texts


def load(path: Path, codec: Codec, labels: list[str] | None, labeled: bool) -> Dataset:
    return load_texts(path, None, False)


def evaluate(cand: list[Any], base: list[Any], data: Dataset, classes: int) -> dict[str, Any]:
    a, b = np.stack(cand), np.stack(base)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"mean_cosine": float(cos.mean()), "p01_cosine": float(np.percentile(cos, 1)), "rows": len(cand)}


def gate(metrics: dict[str, Any], thresholds: dict[str, float], data: Dataset) -> list[str]:
    where, out = f"{data.source} (sha256 {data.sha256[:12]})", []
    for key, flag in (("mean_cosine", "min_cosine"), ("p01_cosine", "min_p01_cosine")):
        if metrics[key] < thresholds[flag]:
            out.append(f"{key} {metrics[key]:.4f} on {where} is under --{flag.replace('_', '-')} "
                       f"{thresholds[flag]:.4f} by {thresholds[flag] - metrics[key]:.4f}")
    return out


def headline(metrics: dict[str, Any]) -> str:
    return f"cos {metrics['mean_cosine']:.4f}"


def output_axes(outputs: int) -> list[dict[int, str]]:
    return [{0: "batch", 1: "sequence"} for _ in range(outputs)]  # token states, pooled when served
