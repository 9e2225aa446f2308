"""bentos/dataplane/runtime.py: provider selection, and SWITCHYARD_PROVIDERS as a hard requirement."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from bentos.dataplane.runtime import VersionLoadError, pick_providers
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
