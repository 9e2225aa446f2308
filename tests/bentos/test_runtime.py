"""bentos/dataplane/runtime.py: provider selection, and SWITCHYARD_PROVIDERS as a hard requirement."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest

from bentos.dataplane.runtime import VersionLoadError, available_cores, pick_providers
from bentos.settings import ServeSettings


def test_default_is_the_best_available_ending_in_cpu() -> None:
    chosen = pick_providers()
    assert chosen[-1] == "CPUExecutionProvider" and set(chosen) <= set(ort.get_available_providers())
    assert pick_providers(cpu_only=True) == ["CPUExecutionProvider"]


def test_required_provider_that_is_missing_names_the_setting() -> None:
    missing = next(p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "NoSuchExecutionProvider")
                   if p not in ort.get_available_providers())
    with pytest.raises(VersionLoadError, match=rf"SWITCHYARD_PROVIDERS asks for \['{missing}'\].*onnxruntime-gpu"):
        pick_providers(required=(missing,))


def test_required_providers_keep_their_order_with_cpu_last() -> None:
    assert pick_providers(required=("CPUExecutionProvider",)) == ["CPUExecutionProvider"]


def test_providers_setting_parses_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_PROVIDERS", '["CUDAExecutionProvider"]')
    assert ServeSettings().providers == ["CUDAExecutionProvider"]


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", 2), ("100000 100000", 1), ("150000 100000", 2),
                                               ("6400000 100000", 2), ("garbage", 2)])
def test_available_cores_respects_a_cgroup_quota_and_the_affinity(tmp_path: Path, cpu_max: str, expected: int,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert available_cores(tmp_path / "cpu.max") == expected
    assert available_cores(tmp_path / "absent") == 2


@pytest.mark.parametrize("settings, cores, expected", [
    ({}, 2, (2, 1)), ({}, 1, (1, 1)), ({}, 16, (2, 8)), ({"threads": 2}, 2, (1, 2)),
    ({"batches_in_flight": 1}, 2, (1, 2)), ({"workers": 2}, 2, (1, 1)),
    ({"threads": 1, "batches_in_flight": 3}, 2, (3, 1)),
])
def test_parallelism_splits_a_workers_cores_between_batches_and_threads(settings: dict[str, int], cores: int,
                                                                       expected: tuple[int, int]) -> None:
    assert ServeSettings(**settings).parallelism(cores) == expected
