"""tensor, build half: an .npz of named inputs, judged on relative L2 distance to fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bentos.tasks import Codec
from bentos.tasks.base import row_shape
from models.errors import BuildError
from models.tasks.base import Dataset, batch_axes, fingerprint, npz_arrays, require


def load(path: Path, codec: Codec, labels: list[str] | None, labeled: bool) -> Dataset:
    require(path, "data")
    arrays = npz_arrays(path)
    rows = None
    for spec in codec.inputs:
        if spec["name"] not in arrays:
            raise BuildError(f"{path} has no array {spec['name']!r} (the model's inputs: "
                             f"{', '.join(i['name'] for i in codec.inputs)}; it has {', '.join(arrays)})")
        arr, want = arrays[spec["name"]], row_shape(spec)
        fits = arr.ndim == len(want) + 1 and all(isinstance(d, str) or d == s for d, s in zip(want, arr.shape[1:],
                                                                                                strict=True))
        if not fits:
            raise BuildError(f"{path}: {spec['name']} has shape {list(arr.shape)}, the model takes {spec['shape']}")
        rows = len(arr) if rows is None else rows
        if len(arr) != rows:
            raise BuildError(f"{path}: every input needs {rows} rows; {spec['name']} has {len(arr)}")
    items = [{s["name"]: arrays[s["name"]][i] for s in codec.inputs} for i in range(rows or 0)]
    return Dataset(items, None, str(path), fingerprint(path))


def evaluate(cand: list[Any], base: list[Any], data: Dataset, classes: int) -> dict[str, Any]:
    num = sum(float(np.sum((np.asarray(c[k], np.float64) - np.asarray(b[k], np.float64)) ** 2))
              for c, b in zip(cand, base, strict=True) for k in c)
    den = sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for b in base for k in b)
    return {"relative_l2": float(np.sqrt(num) / (np.sqrt(den) + 1e-12)), "rows": len(cand)}


def gate(metrics: dict[str, Any], thresholds: dict[str, float], data: Dataset) -> list[str]:
    value, limit = metrics["relative_l2"], thresholds["max_rel_l2"]
    if value > limit:
        return [f"relative L2 distance to fp32 {value:.5f} on {data.source} (sha256 {data.sha256[:12]}) exceeds "
                f"--max-rel-l2 {limit:.5f} by {value - limit:.5f}"]
    return []


def headline(metrics: dict[str, Any]) -> str:
    return f"relL2 {metrics['relative_l2']:.2e}"


output_axes = batch_axes
