"""Where each stage reads and writes, so that every stage can also run alone.

    <work>/<model>/torch/      trained weights (digits) and train.json
    <work>/<model>/export/     model.onnx (dynamo), model.legacy.onnx, model.ts, export.json
    <work>/<model>/<variant>/  model.onnx and optimize.json, validate.json, benchmark.json
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import BuildError


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def read_json(path: Path, hint: str) -> Any:
    if not path.is_file():
        raise BuildError(f"{path} is missing: {hint}")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class ModelDir:
    root: Path
    model: str

    @property
    def base(self) -> Path:
        return self.root / self.model

    @property
    def torch_dir(self) -> Path:
        return self.base / "torch"

    @property
    def export_dir(self) -> Path:
        return self.base / "export"

    def variant_dir(self, variant: str) -> Path:
        return self.base / variant

    def require_export(self) -> Path:
        path = self.export_dir / "model.onnx"
        if not path.is_file():
            raise BuildError(f"{path} is missing: run `python -m models export {self.model}` first")
        return path

    def require_variant(self, variant: str) -> Path:
        path = self.variant_dir(variant) / "model.onnx"
        if not path.is_file():
            raise BuildError(
                f"{path} is missing: run `python -m models optimize {self.model} --variant {variant}` first"
            )
        return path
