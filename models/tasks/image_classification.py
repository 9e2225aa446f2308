"""image-classification, build half: images from folders or arrays from .npz, judged on top-1."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bentos.tasks import Codec
from bentos.tasks.base import row_shape
from models.errors import BuildError
from models.tasks.base import (
    Dataset,
    batch_axes,
    classification_data_gate,
    classification_evaluate,
    classification_headline,
    fingerprint,
    npz_arrays,
    require,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INPUT_KEYS, LABEL_KEYS = ("inputs", "x", "images"), ("labels", "y")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load(path: Path, codec: Codec, labels: list[str] | None, labeled: bool) -> Dataset:
    """.npz (inputs in the model's row shape, and labels), a folder of class sub-folders, or a folder of images."""
    require(path, "data")
    if path.is_dir():
        return _folder(path, labels, labeled)
    arrays = npz_arrays(path)
    key = next((k for k in INPUT_KEYS if k in arrays), None)
    if key is None:
        raise BuildError(f"{path} has no inputs array: name it one of {', '.join(INPUT_KEYS)} (it has "
                         f"{', '.join(arrays) or 'nothing'})")
    x = arrays[key]
    row = tuple(int(d) for d in row_shape(codec.inputs[0]))
    if x.ndim < 2 or math.prod(x.shape[1:]) != math.prod(row):
        raise BuildError(f"{path}: inputs of shape {list(x.shape)} do not match the model's input "
                         f"{codec.inputs[0]['shape']} (each row must have {math.prod(row)} values)")
    y = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    if y is not None and len(y) != len(x):
        raise BuildError(f"{path}: {len(y)} labels for {len(x)} inputs")
    items = [r.reshape(row).astype(np.float32) for r in x]
    return Dataset(items, [int(v) for v in y] if (y is not None and labeled) else None, str(path), fingerprint(path))


def _folder(path: Path, labels: list[str] | None, labeled: bool) -> Dataset:
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if labeled and classes:
        names = labels or classes
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise BuildError(f"labels outside the model's classes in {path}: folders {unknown[:5]} are not among "
                             f"the labels ({', '.join(names[:10])})")
        labeled_files = [(f, names.index(c)) for c in classes for f in _images_under(path / c)]
        items, ys = [f.read_bytes() for f, _ in labeled_files], [y for _, y in labeled_files]
        return Dataset(items, ys, str(path), fingerprint(path))
    files = _images_under(path)
    if not files:
        raise BuildError(f"{path} holds no PNG or JPEG images")
    return Dataset([f.read_bytes() for f in files], None, str(path), fingerprint(path))


# Both classification task types are judged alike: accuracy drop with labels, top-1 agreement without.
evaluate, gate = classification_evaluate, classification_data_gate
headline, output_axes = classification_headline, batch_axes
