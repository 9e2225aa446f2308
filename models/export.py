"""Export stage: torch -> ONNX (dynamo and TorchScript-based exporters) and TorchScript."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bentos.dataplane.runtime import load_session
from models.errors import BuildError
from models.families.base import Builder
from models.workdir import ModelDir, write_json

if TYPE_CHECKING:  # torch is imported where a function needs it: checking a file must not cost 3 s
    import torch

OPSET = 18


def check_onnx(path: Path) -> None:
    """onnx.checker on a file; a corrupt or truncated file becomes a BuildError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise BuildError(f"{path} is not a valid ONNX model: {str(exc).splitlines()[0][:300]}") from exc


def example_inputs(builder: Builder) -> tuple[torch.Tensor, ...]:
    import torch

    feed = builder.codec().encode(builder.example_items())
    return tuple(torch.from_numpy(feed[name]) for name in builder.input_names)


def export_onnx(builder: Builder, module: torch.nn.Module, dest: Path, dynamo: bool = True) -> None:
    """Write `module` as a single-file ONNX graph with dynamic batch (and sequence) axes."""
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = dict(input_names=list(builder.input_names), output_names=[builder.output_name])
    # The exporter logs missing torchvision ops and progress; neither concerns our models.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, example_inputs(builder), str(dest), dynamic_shapes=builder.dynamic_shapes(),
                              external_data=False, dynamo=True, opset_version=OPSET, **common)
        else:
            torch.onnx.export(module, example_inputs(builder), str(dest), dynamic_axes=builder.legacy_dynamic_axes(),
                              dynamo=False, opset_version=17, **common)
    check_onnx(dest)


def parity(builder: Builder, module: torch.nn.Module, path: Path, rows: int = 64) -> float:
    """Max |ORT - torch| over the first `rows` evaluation items."""
    import torch

    feed = builder.codec().encode(builder.eval_items()[:rows])
    with torch.no_grad():
        ref = module(*(torch.from_numpy(feed[n]) for n in builder.input_names)).numpy()
    got = load_session(path, builder.settings.threads, cpu_only=True).run(None, feed)[0]
    return float(np.abs(got - ref).max())


def export(builder: Builder, md: ModelDir, module: torch.nn.Module | None = None) -> dict[str, Any]:
    import torch

    module = module if module is not None else builder.load_torch(md)
    out = md.export_dir
    report: dict[str, Any] = {"opset": OPSET, "tolerance": builder.parity_tolerance, "graphs": {}}
    for name, file, dynamo in (("dynamo", "model.onnx", True), ("torchscript", "model.legacy.onnx", False)):
        export_onnx(builder, module, out / file, dynamo=dynamo)
        diff = parity(builder, module, out / file)
        if diff > builder.parity_tolerance:
            raise BuildError(f"{name} ONNX export of {builder.key} differs from torch by {diff:.2e}, "
                             f"over the tolerance {builder.parity_tolerance:.0e}")
        report["graphs"][name] = {"file": file, "parity_max_abs_diff": diff}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example_inputs(builder), strict=False)
    traced.save(str(out / "model.ts"))
    report["torchscript"] = "model.ts"
    write_json(out / "export.json", report)
    return report
