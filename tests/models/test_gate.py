"""The accuracy gate on a genuinely degraded variant, at the default threshold."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.errors import BuildError
from models.families import get_builder
from models.settings import BuildSettings
from models.validate import validate
from models.workdir import ModelDir

DEFAULT_MAX_DROP = 1.0  # `python -m models build/validate --max-drop`'s default


def degraded(export: Path, dest: Path, noise: float, seed: int = 0) -> None:
    """The fp32 graph with every weight jittered by `noise` times its tensor's spread: what a badly calibrated
    quantization does to a model, without the quantizer."""
    model = onnx.load(str(export))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 16:
            w = w + rng.standard_normal(w.shape).astype(np.float32) * noise * float(w.std())
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    dest.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest / "model.onnx"))


def test_a_degraded_variant_fails_the_default_gate_naming_the_metric_and_the_drop(digits_root: Path,
                                                                                  tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(digits_root / "digits-mlp", work / "digits-mlp")
    builder = get_builder("digits-mlp", BuildSettings(work_dir=work, threads=2))
    md = ModelDir(work, "digits-mlp")
    degraded(md.require_export(), md.variant_dir("jittered"), noise=1.5)
    with pytest.raises(BuildError, match=r"accuracy drop (\d+\.\d+) points exceeds --max-drop 1\.00") as failed:
        validate(builder, md, "jittered", DEFAULT_MAX_DROP)
    assert "will not be registered" in str(failed.value)
    degraded(md.require_export(), md.variant_dir("slight"), noise=0.001)  # the gate is not a wall: this passes
    assert validate(builder, md, "slight", DEFAULT_MAX_DROP)["passed"]
