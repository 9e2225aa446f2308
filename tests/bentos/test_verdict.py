"""bentos/dataplane/decode/verdict.py: top-1 agreement, log-probability ratio and KL from two versions'
teacher-forced log-probabilities, against scipy's KL."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from bentos.dataplane.decode.verdict import log_softmax, token_verdict


def _rows(seed: int, positions: int = 6, vocab: int = 40, scale: float = 3.0) -> np.ndarray:
    return log_softmax(np.random.default_rng(seed).normal(0, scale, (positions, vocab)).astype(np.float32))


def test_a_version_scored_against_itself_agrees_where_it_wrote_its_top_token_and_diverges_by_nothing() -> None:
    lp = _rows(0)
    written = [int(t) for t in lp.argmax(axis=-1)]
    same = token_verdict(written, lp, lp)
    assert same is not None and same.agreement == 1.0 and same.kl == 0.0 and same.log_ratio == 0.0
    written[2] = (written[2] + 1) % lp.shape[1]  # not the top token at one position of six
    assert token_verdict(written, lp, lp).agreement == pytest.approx(5 / 6)  # type: ignore[union-attr]


def test_kl_and_log_ratio_match_their_definitions() -> None:
    cand, ref = _rows(1), _rows(2)
    written = [3, 7, 1, 0, 39, 12]
    verdict = token_verdict(written, cand, ref)
    assert verdict is not None and verdict.positions == 6
    expected_kl = np.mean([sps.entropy(np.exp(c), np.exp(r)) for c, r in zip(cand, ref, strict=True)])
    assert verdict.kl == pytest.approx(expected_kl, rel=1e-9)
    assert verdict.log_ratio == pytest.approx(np.mean([cand[i, t] - ref[i, t] for i, t in enumerate(written)]))
    assert verdict.agreement == np.mean(ref.argmax(axis=-1) == np.array(written))


def test_a_slightly_perturbed_copy_is_near_zero_and_another_model_is_far() -> None:
    logits = np.random.default_rng(3).normal(0, 3, (8, 50))
    noise = np.random.default_rng(4).normal(0, 0.01, (8, 50))  # what int8 does to a model's logits, roughly
    written = [int(t) for t in logits.argmax(axis=-1)]
    near = token_verdict(written, log_softmax(logits + noise), log_softmax(logits))
    far = token_verdict(written, log_softmax(logits), _rows(5, 8, 50))
    assert near is not None and far is not None
    assert near.kl < 1e-3 and near.agreement == 1.0 and far.kl > 1.0


def test_nothing_to_compare_across_vocabularies_or_without_tokens() -> None:
    assert token_verdict([1, 2], _rows(0, 2, 40), _rows(1, 2, 41)) is None
    assert token_verdict([], _rows(0, 0, 40), _rows(1, 0, 40)) is None
