"""How the playground judges two versions side by side: each task's own agreement measure, against the
threshold its accuracy gate used (from the version's metadata, else the build side's default)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from bentos.dataplane.batching import Timing
from bentos.dataplane.endpoint import Answer
from bentos.tasks.base import tensor
from bentos.tasks.playground_kit import compare_versions
from bentos.tasks.tensor import TensorCodec
from bentos.tasks.text_embedding import EmbeddingCodec, TextEmbedding
from models.families.minilm import PREPROCESS, SIGNATURE, package_dir


def embedding_codec(thresholds: dict[str, float] | None = None) -> EmbeddingCodec:
    meta: dict[str, Any] = {"schema": SIGNATURE, "preprocess": PREPROCESS}
    if thresholds is not None:
        meta["gate"] = {"passed": True, "thresholds": thresholds}
    codec = TextEmbedding.codec(meta, package_dir())
    assert isinstance(codec, EmbeddingCodec)
    return codec


def test_each_measure_has_its_gates_threshold() -> None:
    assert embedding_codec().agreement_floor() == 0.99  # --min-cosine's default
    assert embedding_codec({"min_cosine": 0.97, "min_p01_cosine": 0.9}).agreement_floor() == 0.97
    sig = {"inputs": [tensor("a", "float32", ["batch", 3])], "outputs": [tensor("y", "float32", ["batch", 3])]}
    tensors = TensorCodec(sig, {})
    assert tensors.agreement_floor() == pytest.approx(0.99)  # 1 - --max-rel-l2's default
    tensors.gate = {"max_rel_l2": 0.05}
    assert tensors.agreement_floor() == pytest.approx(0.95)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_two_int8_embeddings_at_cosine_0_9905_agree_and_the_number_is_shown() -> None:
    """The issue's case: int8-static against int8-dynamic at mean cosine 0.9905, both past a 0.99 gate."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 384))
    noise = rng.normal(size=(3, 384))
    a = [unit(v) for v in base]
    # b at cosine 0.9905 with a: a's direction plus an orthogonal part of the right size
    b = []
    for v, n in zip(a, noise, strict=True):
        ortho = unit(n - np.dot(n, v) * v)
        b.append(unit(0.9905 * v + np.sqrt(1 - 0.9905**2) * ortho))
    codec = embedding_codec({"min_cosine": 0.99})
    answers = {"static": a, "dynamic": b}

    async def ask(endpoint: str, items: list[Any], mode: str, key: str | None, pinned: str | None,
                  api_key: str | None = None) -> Answer:
        assert mode == "pinned" and pinned is not None
        return Answer(answers[pinned], f"minilm-int8-{pinned}:v1", "pinned", Timing(0.0, 0.001, 3), 0.002, codec)

    rows, text = asyncio.run(compare_versions(ask, "minilm", ["a", "b", "c"], "static", "dynamic"))
    assert [r[-1] for r in rows] == pytest.approx([0.9905] * 3, abs=1e-4)
    assert text.startswith("**They agree**: mean cosine 0.9905 (agreeing means at least 0.9900"), text
    codec.gate = {"min_cosine": 0.995}
    _, text = asyncio.run(compare_versions(ask, "minilm", ["a", "b", "c"], "static", "dynamic"))
    assert text.startswith("**They disagree**: mean cosine 0.9905 (agreeing means at least 0.9950"), text
