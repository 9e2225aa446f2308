"""Each pipeline stage on the digits family, called directly on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from bentos.dataplane.runtime import load_session
from models.benchmark import BATCHES, benchmark, write_report
from models.errors import BuildError
from models.families.base import run_batched
from models.families.digits import accuracy, splits
from models.optimize import optimize
from models.validate import validate
from models.workdir import ModelDir
from tests.models.conftest import builder_for


def test_split_is_fixed_and_disjoint() -> None:
    parts = splits()
    sizes = {k: len(v[1]) for k, v in parts.items()}
    assert sum(sizes.values()) == 1797
    rows = {k: {tuple(r) for r in v[0]} for k, v in parts.items()}
    assert not rows["test"] & rows["fit"] and not rows["calibration"] & rows["fit"]


def test_training_is_deterministic(tmp_path: Path) -> None:
    b, _ = builder_for("digits-mlp", tmp_path)
    reports, states = [], []
    for run in ("a", "b"):
        md = ModelDir(tmp_path / run, "digits-mlp")
        reports.append(b.train(md))
        states.append(torch.load(md.torch_dir / "model.pt", weights_only=True))
    assert reports[0]["test_accuracy"] == reports[1]["test_accuracy"] > 0.9
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("key", ["digits-mlp", "digits-cnn"])
def test_export_checks_parity_and_writes_torchscript(digits_root: Path, key: str) -> None:
    exp = ModelDir(digits_root, key).export_dir
    report = json.loads((exp / "export.json").read_text())
    for graph in report["graphs"].values():
        assert graph["parity_max_abs_diff"] <= report["tolerance"]
        onnx.checker.check_model(str(exp / graph["file"]))
    scripted = torch.jit.load(str(exp / "model.ts"))
    x, _ = splits()["test"]
    got = load_session(exp / "model.onnx").run(None, {"pixels": x[:5]})[0]
    np.testing.assert_allclose(scripted(torch.from_numpy(x[:5])).detach().numpy(), got, atol=1e-4)


def test_exported_graph_has_dynamic_batch(digits_root: Path) -> None:
    session = load_session(ModelDir(digits_root, "digits-cnn").export_dir / "model.onnx")
    x, _ = splits()["test"]
    for n in (1, 7, 64):
        assert session.run(None, {"pixels": x[:n]})[0].shape == (n, 10)


@pytest.mark.parametrize("variant", ["fp32", "int8-dynamic", "int8-static", "fp16", "pruned", "distilled"])
def test_every_variant_runs_on_cpu_and_passes_the_gate(digits_work: Path, variant: str) -> None:
    b, md = builder_for("digits-cnn", digits_work)
    if variant in ("int8-dynamic", "fp16"):
        optimize(b, md, "fp32")
    info = optimize(b, md, variant)
    report = validate(b, md, variant, max_drop=1.0)
    assert report["passed"], report["failures"]
    assert report["metrics"]["accuracy_drop_points"] <= 1.0
    probs = run_batched(load_session(md.require_variant(variant)), b.codec(), splits()["test"][0].tolist())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-2)
    if variant == "int8-static":
        assert info["calibration_method"] == "MinMax" and info["calibration_rows"] == len(splits()["calibration"][1])
    if variant == "pruned":
        assert 0.45 <= info["sparsity"] <= 0.55
    if variant == "distilled":
        assert info["student_parameters"] < info["teacher_parameters"] / 3
        assert {"temperature", "alpha"} <= info.keys()


def test_int8_is_smaller_than_fp32(digits_work: Path) -> None:
    b, md = builder_for("digits-mlp", digits_work)
    optimize(b, md, "fp32")
    fp32 = optimize(b, md, "fp32")["size_bytes"]
    assert optimize(b, md, "int8-dynamic")["size_bytes"] < fp32 / 2.5


def test_gate_failure_names_the_metric_and_margin(digits_work: Path) -> None:
    b, md = builder_for("digits-mlp", digits_work)
    optimize(b, md, "pruned")
    with pytest.raises(BuildError, match=r"accuracy drop .* exceeds --max-drop -5.00 by"):
        validate(b, md, "pruned", max_drop=-5.0)
    report = json.loads((md.variant_dir("pruned") / "validate.json").read_text())
    assert report["passed"] is False and report["failures"]
    forced = validate(b, md, "pruned", max_drop=-5.0, force=True)
    assert forced["forced"] is True


def test_benchmark_reports_latency_throughput_size_and_rss(digits_work: Path) -> None:
    b, md = builder_for("digits-mlp", digits_work)
    optimize(b, md, "fp32")
    r = benchmark(b, md, "fp32", latency_iters=10, seconds=0.05)
    assert r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
    assert set(r["throughput_rows_per_s"]) == {str(x) for x in BATCHES}
    assert r["size_bytes"] > 0 and r["peak_rss_mb"] > 10
    assert "torch" not in json.dumps(r)
    benchmark(b, md, "torch-eager", latency_iters=5, seconds=0.05)
    write_report(md)
    assert (md.base / "benchmark.png").stat().st_size > 1000
    table = (md.base / "benchmark.md").read_text()
    assert "| fp32 |" in table and "| torch-eager |" in table
    assert accuracy(np.eye(10, dtype=np.float32), np.arange(10)) == 1.0
