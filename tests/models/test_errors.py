"""Every user error gives a clear message, a non-zero exit, and no half-written model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.errors import BuildError
from models.families.digits import DigitsMLP
from models.optimize import optimize
from models.settings import BuildSettings
from models.validate import validate
from models.workdir import ModelDir
from tests.conftest import CLI
from tests.models.conftest import builder_for


def _store_models(cli: CLI) -> list[dict[str, object]]:
    return json.loads(cli("list", "--json", check=True).stdout)


def test_unknown_model(cli: CLI) -> None:
    proc = cli("build", "resnet")
    assert proc.returncode == 2
    assert "unknown model 'resnet'" in proc.stderr and "digits-mlp" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_variant_is_rejected_before_any_work(cli: CLI, tmp_path: Path) -> None:
    proc = cli("build", "digits-mlp", "--variant", "int4", "--work-dir", str(tmp_path / "w"))
    assert proc.returncode == 2 and "unknown variant 'int4' for digits-mlp" in proc.stderr
    assert not (tmp_path / "w").exists()
    proc = cli("build", "minilm", "--variant", "distilled")
    assert proc.returncode == 2 and "choose one of fp32, int8-dynamic" in proc.stderr


def test_unwritable_store(cli: CLI, tmp_path: Path, store_env: dict[str, str]) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store should be")
    env = {**store_env, "BENTOML_HOME": str(blocker / "bentoml")}
    proc = cli("build", "digits-mlp", "--work-dir", str(tmp_path / "w"), env=env)
    assert proc.returncode != 0
    assert "not writable" in proc.stderr or "BENTOML_HOME" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _registered(cli: CLI, work: Path) -> dict[str, object]:
    cli("build", "digits-mlp", "--variant", "int8-dynamic", "--seconds", "0.05", "--work-dir", str(work), check=True)
    (row,) = _store_models(cli)
    return row


def test_sha256_mismatch(cli: CLI, digits_work: Path, store_env: dict[str, str]) -> None:
    row = _registered(cli, digits_work)
    model_dir = Path(store_env["BENTOML_HOME"]) / "models" / str(row["tag"]).replace(":", "/")
    with (model_dir / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    proc = cli("verify", str(row["tag"]))
    assert proc.returncode == 2
    assert "model.onnx: sha256" in proc.stderr and "does not match" in proc.stderr
    assert cli("verify", "digits-mlp-int8-dynamic:nosuchversion").returncode == 2


def test_corrupted_onnx_is_refused_and_nothing_is_stored(cli: CLI, digits_work: Path) -> None:
    b, md = builder_for("digits-mlp", digits_work)
    optimize(b, md, "fp32")
    validate(b, md, "fp32", max_drop=1.0)
    path = md.require_variant("fp32")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    proc = cli("register", "digits-mlp", "--variant", "fp32", "--work-dir", str(digits_work))
    assert proc.returncode == 2 and "is not a valid ONNX model" in proc.stderr
    proc = cli("validate", "digits-mlp", "--variant", "fp32", "--work-dir", str(digits_work))
    assert proc.returncode == 2 and "is not a valid ONNX model" in proc.stderr
    assert _store_models(cli) == []


def test_failed_gate_is_not_registered_unless_forced(cli: CLI, digits_work: Path) -> None:
    proc = cli("build", "digits-mlp", "--variant", "pruned", "--max-drop", "-50", "--work-dir", str(digits_work))
    assert proc.returncode == 2 and "exceeds --max-drop -50.00" in proc.stderr
    assert _store_models(cli) == []
    cli("register", "digits-mlp", "--variant", "pruned", "--force", "--work-dir", str(digits_work), check=True)
    (row,) = _store_models(cli)
    assert row["metrics"]["validation_passed"] is False  # type: ignore[index]


class _NoCalibration(DigitsMLP):
    def calibration_items(self) -> list[object]:
        return []


def test_empty_calibration_set(digits_work: Path) -> None:
    b = _NoCalibration(BuildSettings(work_dir=digits_work))
    md = ModelDir(digits_work, b.key)
    with pytest.raises(BuildError, match="calibration set for digits-mlp is empty"):
        optimize(b, md, "int8-static")
    assert not (md.variant_dir("int8-static") / "model.onnx").exists()


def test_stage_out_of_order_says_what_to_run(cli: CLI, tmp_path: Path) -> None:
    proc = cli("export", "digits-cnn", "--work-dir", str(tmp_path))
    assert proc.returncode == 2 and "python -m models train digits-cnn" in proc.stderr
    proc = cli("train", "minilm")
    assert proc.returncode == 2 and "pretrained" in proc.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
