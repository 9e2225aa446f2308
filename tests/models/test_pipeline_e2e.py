"""End to end through the CLI: build digits into a fresh store, then load what was stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bentos.artifacts import sha256_file
from bentos.dataplane.runtime import load_session
from bentos.tasks import get_task
from models.families.base import run_batched
from models.families.digits import accuracy, splits
from tests.conftest import CLI


def test_build_list_verify_and_serve_from_the_store(cli: CLI, tmp_path: Path, store_env: dict[str, str]) -> None:
    work = str(tmp_path / "work")
    cli("build", "digits-cnn", "--variant", "fp32", "--variant", "int8-static", "--seconds", "0.05",
        "--work-dir", work, check=True)
    rows = json.loads(cli("list", "--json", check=True).stdout)
    assert {r["labels"]["variant"] for r in rows} == {"fp32", "int8-static"}
    by_variant = {r["labels"]["variant"]: r for r in rows}
    fp32, int8 = by_variant["fp32"], by_variant["int8-static"]
    for r in rows:
        assert r["labels"]["family"] == "digits" and r["labels"]["stage"] == "candidate"
        assert r["lineage"]["git_commit"] and r["lineage"]["optimization"] == r["labels"]["variant"]
        assert r["metrics"]["benchmark"]["throughput_rows_per_s"]["32"] > 0
        assert "model.onnx" in r["sha256"]
    assert "model.ts" in fp32["sha256"]  # TorchScript travels as the alternative artifact
    assert int8["lineage"]["parent"] == fp32["tag"]
    assert int8["metrics"]["validate"]["accuracy_drop_points"] <= 1.0

    model_dir = Path(store_env["BENTOML_HOME"]) / "models" / int8["tag"].replace(":", "/")
    for name, digest in int8["sha256"].items():
        assert sha256_file(model_dir / name) == digest
    x, y = splits()["test"]
    meta = json.loads((model_dir / "schema.json").read_text())
    codec = get_task("image-classification").codec({"schema": meta, "preprocess": {}}, model_dir)
    acc = accuracy(run_batched(load_session(model_dir / "model.onnx"), codec, x.tolist()), y)
    assert acc == int8["metrics"]["validate"]["accuracy"] and acc > 0.95
    assert json.loads((model_dir / "schema.json").read_text())["inputs"][0]["shape"] == ["batch", 64]

    out = cli("verify", int8["tag"], check=True)
    assert "match their recorded sha256" in out.stdout
    listing = cli("list", check=True).stdout
    assert int8["tag"] in listing and "acc " in listing

    again = cli("build", "digits-cnn", "--variant", "fp32", "--if-missing", "--work-dir", work, check=True)
    assert "already registered" in again.stderr
    assert len(json.loads(cli("list", "--json").stdout)) == 2
    assert np.isfinite(fp32["p50_ms"])


def test_help_explains_the_pipeline(cli: CLI) -> None:
    out = cli("--help", check=True).stdout
    for word in ("build", "list", "verify", "train", "export", "optimize", "validate", "benchmark", "register"):
        assert word in out
    assert "digits-cnn" in out and "int8-static" in out
