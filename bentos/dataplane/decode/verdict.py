"""Token-level verdict: one version's written tokens scored under two versions, teacher-forced.

A canary comparison for a language model takes the tokens one version actually wrote (the candidate's),
runs them through both versions in one prefill pass each (no decoding), and compares the two next-token
distributions at every written position:

- top-1 agreement: the share of positions where the reference's most likely token is the one written;
- log-probability ratio: the mean of log p_candidate(token) - log p_reference(token) over the written
  tokens (how much likelier the candidate found its own text than the reference does);
- KL divergence: the mean over positions of KL(p_candidate || p_reference), in nats.

An int8 copy of a model is near 0 nats from it; a model trained on other text is several nats away.
The rollout's divergence check (`bentos.controlplane.rollouts`) tests the mean KL against the policy's
tolerated divergence; each comparison's KL is clipped to `KL_CLIP` there so the test can bound it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenVerdict:
    positions: int
    agreement: float
    log_ratio: float
    kl: float


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities, in float64 so that near-equal distributions give a KL near 0, not noise."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return out


def token_verdict(written: list[int], candidate: np.ndarray, reference: np.ndarray) -> TokenVerdict | None:
    """`candidate` and `reference`: log-probabilities (positions x vocabulary) at each written position, given
    the prompt and the written tokens before it. None when the two vocabularies differ (nothing to compare)."""
    if not written or candidate.shape != reference.shape or candidate.shape[0] != len(written):
        return None
    at = np.arange(len(written)), np.asarray(written)
    agreement = float((reference.argmax(axis=-1) == at[1]).mean())
    log_ratio = float((candidate[at] - reference[at]).mean())
    per_position = (np.exp(candidate) * (candidate - reference)).sum(axis=-1)
    kl = float(np.maximum(per_position, 0.0).mean())  # rounding can dip a hair below 0 for equal rows
    return TokenVerdict(len(written), agreement, log_ratio, kl)
