"""text-classification, build half: labeled JSONL or plain sentences, judged on top-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bentos.tasks import Codec
from models.tasks.base import Dataset, classification_gate, classification_metrics
from models.tasks.text import load_texts


def load(path: Path, codec: Codec, labels: list[str] | None, labeled: bool) -> Dataset:
    return load_texts(path, labels, labeled)


def evaluate(cand: list[Any], base: list[Any], data: Dataset, classes: int) -> dict[str, Any]:
    return classification_metrics(cand, base, data.labels)


def gate(metrics: dict[str, Any], thresholds: dict[str, float], data: Dataset) -> list[str]:
    return classification_gate(metrics, thresholds, f"{data.source} (sha256 {data.sha256[:12]})")


def headline(metrics: dict[str, Any]) -> str:
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy'] * 100:.2f}%"
    return f"agree {metrics['top1_agreement']:.4f}"


def output_axes(outputs: int) -> list[dict[int, str]]:
    return [{0: "batch"} for _ in range(outputs)]
