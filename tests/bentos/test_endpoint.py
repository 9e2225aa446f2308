"""The request path of one endpoint, in process, on real ONNX sessions of digits models."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bentos.config import EndpointConfig
from bentos.dataplane.endpoint import Endpoint, ModelFailure
from bentos.dataplane.metrics import get_metrics
from bentos.dataplane.runtime import LoadedVersion, load_session
from bentos.dataplane.stats import StatsRecorder
from bentos.schemas import DeploymentSpec
from bentos.settings import ServeSettings
from bentos.tasks.image_classification import ImageCodec
from models.families.digits import PREPROCESS, SIGNATURE, splits


class Slow(LoadedVersion):
    def run(self, items: list[Any]) -> list[np.ndarray]:
        time.sleep(0.5)
        return super().run(items)


class Broken(LoadedVersion):
    def run(self, items: list[Any]) -> list[np.ndarray]:
        raise RuntimeError("this version's session raises")


def version(root: Path, key: str, tag: str, cls: type[LoadedVersion] = LoadedVersion) -> LoadedVersion:
    path = root / key / "export" / "model.onnx"
    return cls(tag, "image-classification", "fp32", ImageCodec(SIGNATURE, PREPROCESS), load_session(path, 1), {},
               path.parent)


def endpoint(versions: dict[str, LoadedVersion], roles: dict[str, tuple[str, int]], **settings: Any) -> Endpoint:
    config = EndpointConfig(name="digits", task="image-classification")
    ep = Endpoint(config, ServeSettings(**settings), get_metrics(), StatsRecorder())
    spec = DeploymentSpec.model_validate(
        {"versions": [{"tag": t, "role": r, "weight": w} for t, (r, w) in roles.items()]})
    ep.swap(1, spec, versions)
    return ep


ROWS = splits()["test"][0][:4].tolist()


@pytest.mark.parametrize("shadow_cls", [Slow, Broken])
async def test_shadow_never_delays_or_fails_the_primary(digits_root: Path, shadow_cls: type[LoadedVersion]) -> None:
    alone = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1")}, {"mlp:1": ("stable", 100)})
    baseline = await alone.handle(ROWS)
    shadowed = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                         "cnn:1": version(digits_root, "digits-cnn", "cnn:1", shadow_cls)},
                        {"mlp:1": ("stable", 100), "cnn:1": ("shadow", 0)})
    start = time.monotonic()
    answers = [await shadowed.handle(ROWS) for _ in range(3)]
    elapsed = time.monotonic() - start
    assert elapsed < 0.4  # three answers while one slow shadow call alone takes 0.5 s
    for answer in answers:
        assert answer.version == "mlp:1" and answer.route == "stable"
        np.testing.assert_allclose(np.stack(answer.outputs), np.stack(baseline.outputs), atol=1e-6)
    await shadowed.stop()
    await alone.stop()


async def test_shadow_queue_is_bounded_and_drops_are_counted(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "slow:1": version(digits_root, "digits-cnn", "slow:1", Slow)},
                  {"mlp:1": ("stable", 100), "slow:1": ("shadow", 0)}, shadow_queue=2)
    dropped = get_metrics().shadow_dropped.labels("digits", "slow:1")
    before = dropped._value.get()
    await asyncio.gather(*(ep.handle(ROWS[:1]) for _ in range(10)))
    assert dropped._value.get() - before == 8
    await ep.stop()


async def test_failing_canary_falls_back_to_stable(digits_root: Path) -> None:
    ep = endpoint({"mlp:1": version(digits_root, "digits-mlp", "mlp:1"),
                   "bad:1": version(digits_root, "digits-cnn", "bad:1", Broken)},
                  {"mlp:1": ("stable", 0), "bad:1": ("canary", 100)}, circuit_failures=3)
    answers = [await ep.handle(ROWS[:1]) for _ in range(6)]
    assert all(a.version == "mlp:1" and a.route == "fallback" for a in answers)
    assert ep.slots["bad:1"].circuit.state.name == "OPEN"  # later requests skip it without trying
    with pytest.raises(ModelFailure):
        await ep.handle(ROWS[:1], pin="bad:1")  # a pinned request gets no silent substitute
    await ep.stop()
