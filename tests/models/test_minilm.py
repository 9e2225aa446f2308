"""MiniLM: export parity, int8 against fp32, batch invariance, tokenizer files in the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bentos.dataplane.runtime import load_session
from bentos.tasks import get_task
from models.families import get_builder
from models.families.base import Builder, run_batched
from models.families.minilm import TOKENIZER_FILES, MiniLMBuilder, cosine_rows
from models.optimize import optimize
from models.registry import register
from models.settings import BuildSettings
from models.validate import validate
from models.workdir import ModelDir

pytestmark = pytest.mark.minilm


@pytest.fixture(scope="module")
def minilm(minilm_root: Path) -> tuple[Builder, ModelDir]:
    builder = get_builder("minilm", BuildSettings(work_dir=minilm_root, threads=2))
    md = ModelDir(minilm_root, "minilm")
    for variant in ("fp32", "int8-dynamic", "int8-static"):
        if not md.variant_dir(variant).joinpath("model.onnx").is_file():
            optimize(builder, md, variant)
    return builder, md


@pytest.fixture(scope="module")
def reports(minilm: tuple[Builder, ModelDir]) -> dict[str, dict[str, Any]]:
    """Each variant validated once, whatever order the tests run in (one read another's validate.json)."""
    builder, md = minilm
    return {v: validate(builder, md, v, max_drop=1.0) for v in ("fp32", "int8-dynamic", "int8-static")}


def test_export_parity_within_tolerance(minilm: tuple[Builder, ModelDir]) -> None:
    _, md = minilm
    report = json.loads((md.export_dir / "export.json").read_text())
    assert set(report["graphs"]) == {"dynamo", "torchscript"}
    assert all(g["parity_max_abs_diff"] <= 1e-4 for g in report["graphs"].values())
    assert (md.export_dir / "model.ts").stat().st_size > 1e6


def test_pooling_and_normalisation_are_in_the_graph(minilm: tuple[Builder, ModelDir]) -> None:
    builder, md = minilm
    out = run_batched(load_session(md.require_export()), builder.codec(), ["a short one", "a longer sentence here"])
    assert out.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_fp32_records_the_faster_graph(minilm: tuple[Builder, ModelDir]) -> None:
    _, md = minilm
    info = json.loads((md.variant_dir("fp32") / "optimize.json").read_text())
    assert info["graph"] in info["candidates_ms"]
    assert {"dynamo", "torchscript", "dynamo+fusion", "torchscript+fusion"} <= set(info["candidates_ms"])
    assert info["fusions"]["torchscript"].get("Attention", 0) > 0


def test_int8_dynamic_against_fp32(minilm: tuple[Builder, ModelDir], reports: dict[str, dict[str, Any]]) -> None:
    builder, md = minilm
    m = reports["int8-dynamic"]["metrics"]
    assert m["mean_cosine"] >= 0.99 and m["p1_cosine"] >= 0.98
    assert m["worst_sentence"] in builder.eval_items()
    fp32 = md.require_variant("fp32").stat().st_size
    assert fp32 / md.require_variant("int8-dynamic").stat().st_size >= 3.5


def test_cosine_parity_directly(minilm: tuple[Builder, ModelDir]) -> None:
    builder, md = minilm
    sentences = builder.eval_items()[:50]
    fp32 = run_batched(load_session(md.require_variant("fp32")), builder.codec(), sentences)
    int8 = run_batched(load_session(md.require_variant("int8-dynamic")), builder.codec(), sentences)
    assert cosine_rows(fp32, int8).mean() >= 0.99


def test_default_serving_variant_is_batch_invariant(reports: dict[str, dict[str, Any]]) -> None:
    static, fp32, dynamic = (reports[v]["metrics"] for v in ("int8-static", "fp32", "int8-dynamic"))
    assert static["batch_invariance_min_cosine"] >= 0.999
    assert fp32["batch_invariance_min_cosine"] >= 0.999
    assert dynamic["batch_invariance_min_cosine"] < static["batch_invariance_min_cosine"]


def test_registered_model_carries_its_tokenizer(minilm: tuple[Builder, ModelDir],
                                                reports: dict[str, dict[str, Any]]) -> None:
    import bentoml

    builder, md = minilm  # validated by `reports`: only a validated variant registers
    model = bentoml.models.get(register(builder, md, "int8-static"))
    root = Path(model.path)
    assert all((root / name).is_file() for name in TOKENIZER_FILES)
    meta = model.info.metadata
    assert meta["batch_invariance_min_cosine"] >= 0.999
    assert model.info.labels == {"task": "text-embedding", "family": "minilm", "model": "minilm",
                                 "variant": "int8-static", "stage": "candidate"}
    codec = get_task("text-embedding").codec(meta, root)
    probe = ["Where is the nearest pharmacy?"]
    ours = run_batched(load_session(root / "model.onnx"), codec, probe)
    ref = run_batched(load_session(md.require_variant("int8-static")), builder.codec(), probe)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_minilm_has_no_train_or_distill_stage() -> None:
    from models.errors import BuildError

    builder = MiniLMBuilder(BuildSettings())
    with pytest.raises(BuildError, match="pretrained"):
        builder.train(ModelDir(Path("unused"), "minilm"))
    assert "distilled" not in builder.variants
