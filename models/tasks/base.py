"""What every task's build half shares: datasets with their sha256, running a graph as the
server does (the task's codec), batch invariance, and the classification gate."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bentos.artifacts import hash_tree, sha256_file
from bentos.tasks import Codec
from models.errors import BuildError

INVARIANCE_PROBES = 16


@dataclass
class Dataset:
    """Inputs as the serving codec takes them, optional labels (class indices), and where they came from."""

    items: list[Any]
    labels: list[int] | None = None
    source: str = ""
    sha256: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "rows": len(self.items),
                "labeled": self.labels is not None}


def fingerprint(path: Path) -> str:
    """sha256 of a file, or of a folder's files and their relative names."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for name, value in sorted(hash_tree(path).items()):
        digest.update(f"{name}:{value}\n".encode())
    return digest.hexdigest()


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise BuildError(f"{what} {path} does not exist")
    return path


def run_rows(session: Any, codec: Codec, items: list[Any], batch: int = 32) -> list[Any]:
    """Result rows exactly as the server computes them (encode, run, split)."""
    rows: list[Any] = []
    for i in range(0, len(items), batch):
        feed = codec.encode(items[i:i + batch])
        rows.extend(codec.split(feed, session.run(codec.output_names, feed)))
    return rows


def batch_invariance(session: Any, codec: Codec, items: list[Any], seed: int) -> float:
    """Lowest agreement between an input answered alone and inside a batch of others."""
    rng = np.random.default_rng(seed)
    probes = rng.choice(len(items), min(INVARIANCE_PROBES, len(items)), replace=False)
    worst = 1.0
    for i in probes:
        alone = run_rows(session, codec, [items[i]])[0]
        others = [items[j] for j in rng.choice(len(items), min(15, len(items)), replace=True)]
        inside = run_rows(session, codec, [items[i], *others])[0]
        worst = min(worst, codec.agreement(alone, inside))
    return float(worst)


def classification_metrics(cand: list[Any], base: list[Any], labels: list[int] | None) -> dict[str, Any]:
    c, b = np.stack(cand), np.stack(base)
    metrics: dict[str, Any] = {"top1_agreement": float((c.argmax(1) == b.argmax(1)).mean()), "rows": len(cand)}
    if labels is not None:
        y = np.asarray(labels)
        acc, base_acc = float((c.argmax(1) == y).mean()), float((b.argmax(1) == y).mean())
        metrics.update(accuracy=acc, baseline_accuracy=base_acc, accuracy_drop_points=round((base_acc - acc) * 100, 4))
    return metrics


def classification_gate(metrics: dict[str, Any], thresholds: dict[str, float], data: str) -> list[str]:
    if "accuracy_drop_points" in metrics:
        drop, limit = metrics["accuracy_drop_points"], thresholds["max_drop"]
        if drop > limit:
            return [f"accuracy drop {drop:.2f} points on {data} exceeds --max-drop {limit:.2f} by {drop - limit:.2f}"]
        return []
    agree, floor = metrics["top1_agreement"], thresholds["min_agreement"]
    if agree < floor:
        return [f"top-1 agreement with fp32 {agree:.4f} on {data} is under --min-agreement {floor:.4f} "
                f"by {floor - agree:.4f}"]
    return []


def check_labels(labels: list[int], classes: int, source: str) -> None:
    bad = sorted({y for y in labels if not 0 <= y < classes})
    if bad:
        raise BuildError(f"labels outside the model's classes in {source}: {bad[:5]} (the model has {classes} "
                         f"classes, 0..{classes - 1})")


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path} is not a readable .npz file: {exc}") from None


def classification_evaluate(cand: list[Any], base: list[Any], data: Dataset, classes: int) -> dict[str, Any]:
    return classification_metrics(cand, base, data.labels)


def classification_data_gate(metrics: dict[str, Any], thresholds: dict[str, float], data: Dataset) -> list[str]:
    return classification_gate(metrics, thresholds, f"{data.source} (sha256 {data.sha256[:12]})")


def classification_headline(metrics: dict[str, Any]) -> str:
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy'] * 100:.2f}%"
    return f"agree {metrics['top1_agreement']:.4f}"


def batch_axes(outputs: int) -> list[dict[int, str]]:
    """Every output batch-first, nothing else dynamic."""
    return [{0: "batch"} for _ in range(outputs)]
