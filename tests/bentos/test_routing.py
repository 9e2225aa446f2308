"""The router: weighted split, sticky monotonicity, pinning."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from bentos.dataplane.routing import Router, UnknownPin, key_point
from bentos.schemas import DeploymentSpec

STABLE, CANARY, SHADOW = "digits-mlp-fp32:aaa", "digits-cnn-fp32:bbb", "digits-cnn-int8-static:ccc"


def spec(canary: int, sticky: bool = False, shadow: bool = False) -> DeploymentSpec:
    versions = [{"tag": STABLE, "weight": 100 - canary, "role": "stable"},
                {"tag": CANARY, "weight": canary, "role": "canary"}]
    if shadow:
        versions.append({"tag": SHADOW, "weight": 0, "role": "shadow"})
    return DeploymentSpec.model_validate({"versions": versions, "sticky": sticky})


@pytest.mark.parametrize("canary", [1, 10, 50, 90])
def test_weights_within_binomial_tolerance(canary: int) -> None:
    n = 20_000
    router = Router(spec(canary), rng=random.Random(7))
    counts = Counter(router.choose().tag for _ in range(n))
    p = canary / 100
    sd = math.sqrt(n * p * (1 - p))
    assert abs(counts[CANARY] - n * p) <= 4 * sd
    assert counts[CANARY] + counts[STABLE] == n


def test_sticky_keys_only_move_into_the_canary_as_it_grows() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    before = {k: Router(spec(10, sticky=True)).choose(k).tag for k in keys}
    after = {k: Router(spec(20, sticky=True)).choose(k).tag for k in keys}
    assert all(after[k] == CANARY for k in keys if before[k] == CANARY)
    moved = sum(1 for k in keys if before[k] != after[k])
    assert 0.07 * len(keys) <= moved <= 0.13 * len(keys)  # about the 10 % added
    assert sum(v == CANARY for v in after.values()) == pytest.approx(0.2 * len(keys), rel=0.15)


def test_sticky_choice_is_stable_for_a_key() -> None:
    router = Router(spec(30, sticky=True), rng=random.Random(1))
    assert len({router.choose("same-user").tag for _ in range(100)}) == 1
    assert router.choose("same-user").sticky
    assert 0 <= key_point("anything") < 100


def test_non_sticky_ignores_the_key() -> None:
    router = Router(spec(50), rng=random.Random(3))
    assert len({router.choose("same-user").tag for _ in range(200)}) == 2


def test_pin_by_tag_name_or_variant() -> None:
    router = Router(spec(10, shadow=True), variants={STABLE: "fp32", CANARY: "fp32", SHADOW: "int8-static"})
    assert router.choose(pin=CANARY).tag == CANARY
    assert router.choose(pin="digits-cnn-fp32").tag == CANARY
    assert router.choose(pin="int8-static").tag == SHADOW
    assert router.choose(pin=CANARY).route == "pinned"
    with pytest.raises(UnknownPin, match="matches no live version"):
        router.choose(pin="digits-xyz")


def test_shadow_never_takes_primary_traffic() -> None:
    router = Router(spec(10, shadow=True), rng=random.Random(5))
    assert router.shadows == [SHADOW]
    assert SHADOW not in {router.choose().tag for _ in range(2000)}


@pytest.mark.parametrize("versions, message", [
    ([{"tag": "a", "weight": 60, "role": "stable"}, {"tag": "b", "weight": 30, "role": "canary"}],
     "sum to 100, got 90"),
    ([{"tag": "a", "weight": 50, "role": "canary"}, {"tag": "b", "weight": 50, "role": "canary"}],
     "exactly one 'stable'"),
    ([{"tag": "a", "weight": 100, "role": "stable"}, {"tag": "a", "weight": 0, "role": "shadow"}], "only once"),
    ([{"tag": "a", "weight": 100, "role": "stable"}, {"tag": "b", "weight": 5, "role": "shadow"}], "weight must be 0"),
])
def test_invalid_splits_are_refused(versions: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DeploymentSpec.model_validate({"versions": versions})
