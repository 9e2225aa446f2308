"""Text data for the text task types: a JSONL of {"text", "label"} or a text file, one per line."""

from __future__ import annotations

import json
from pathlib import Path

from models.errors import BuildError
from models.tasks.base import Dataset, fingerprint, require


def load_texts(path: Path, labels: list[str] | None, labeled: bool) -> Dataset:
    require(path, "data")
    if path.is_dir():
        raise BuildError(f"{path} is a folder: text data is a .jsonl of {{\"text\", \"label\"}} or a .txt file")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise BuildError(f"{path} is empty")
    if path.suffix != ".jsonl":
        return Dataset(lines, None, str(path), fingerprint(path))
    texts, ys = [], []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            texts.append(str(row["text"]))
        except (ValueError, KeyError, TypeError):
            raise BuildError(f"{path} line {n}: expected a JSON object with a \"text\" field") from None
        if labeled and "label" in row:
            ys.append(_label_index(row["label"], labels, f"{path} line {n}"))
    if ys and len(ys) != len(texts):
        raise BuildError(f"{path}: {len(texts) - len(ys)} rows have no \"label\"")
    return Dataset(texts, ys or None, str(path), fingerprint(path))


def _label_index(value: object, labels: list[str] | None, where: str) -> int:
    if isinstance(value, int):
        return value
    if labels and str(value) in labels:
        return labels.index(str(value))
    raise BuildError(f"labels outside the model's classes: {where} has label {value!r}; the model's labels are "
                     f"{', '.join(labels or []) or 'class indices'}")
