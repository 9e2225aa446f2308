"""deploy/gpu_bentofile.py: the GPU bento is the CPU one with onnxruntime-gpu and CUDA required."""

from __future__ import annotations

import json

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
