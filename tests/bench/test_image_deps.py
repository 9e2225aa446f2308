"""bench/image_deps.py: the bento's Python closure, with and without torch."""

from __future__ import annotations

from bench.image_deps import HEAVY, closure, serving_packages
from tests.conftest import ROOT


def test_serving_closure_has_no_torch_and_is_smaller() -> None:
    packages = serving_packages(ROOT / "bentofile.yaml")
    lean, heavy = closure(packages), closure(packages + HEAVY)
    assert "onnxruntime" in lean and "tokenizers" in lean and lean["onnxruntime"] > 10e6
    assert not {"torch", "transformers", "scikit-learn", "scipy"} & lean.keys()
    assert heavy["torch"] > 100e6 and sum(heavy.values()) > 1.5 * sum(lean.values())
