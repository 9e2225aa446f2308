"""deploy/gpu_bentofile.py: the GPU bento is the CPU one with onnxruntime-gpu and CUDA required."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from deploy.gpu_bentofile import gpu_spec
from tests.conftest import ROOT


def test_gpu_bentofile_swaps_onnxruntime_and_requires_cuda() -> None:
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    gpu = gpu_spec(spec)
    cpu_ort = next(p for p in spec["python"]["packages"] if p.startswith("onnxruntime=="))
    assert f"onnxruntime-gpu[cuda,cudnn]=={cpu_ort.split('==')[1]}" in gpu["python"]["packages"]
    assert not any(p.startswith("onnxruntime==") for p in gpu["python"]["packages"])
    env = {e["name"]: e["value"] for e in gpu["envs"]}
    assert json.loads(env["SWITCHYARD_PROVIDERS"]) == ["CUDAExecutionProvider"]
    assert gpu["models"] == spec["models"] and gpu["name"] == "switchyard-gpu"
    assert spec["name"] == "switchyard"  # the CPU spec is left alone


def test_make_bento_carries_every_deployed_version(tmp_path: Path) -> None:
    from bentos.controlplane.store import SQLiteControlPlane
    from deploy.bento_models import deployed_tags, with_models

    store = SQLiteControlPlane(tmp_path / "control.db")
    for endpoint, versions in {"digits": [("digits-cnn-fp32:a", "stable", 90), ("digits-cnn-int8-static:b",
                                                                                 "canary", 10)],
                               "shapes": [("my-cnn-fp32:c", "stable", 100)]}.items():
        spec = {"versions": [{"tag": t, "role": r, "weight": w} for t, r, w in versions], "sticky": False}
        store.write_deployment(endpoint, spec, actor="t", action="deploy", reason="t")
    tags = deployed_tags(tmp_path, None)
    assert tags == ["digits-cnn-fp32:a", "digits-cnn-int8-static:b", "my-cnn-fp32:c"]
    spec = with_models({"models": ["digits-cnn-fp32:latest", "minilm-int8-static:latest"]}, tags)
    assert spec["models"] == ["minilm-int8-static:latest", *tags]
    assert deployed_tags(tmp_path / "none", None) == []
