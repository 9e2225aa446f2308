"""Derive the GPU bentofile from bentofile.yaml, so the two never drift apart.

    python deploy/gpu_bentofile.py build/bentofile.gpu.yaml && bentoml build -f build/bentofile.gpu.yaml .

The image swaps onnxruntime for onnxruntime-gpu with its CUDA and cuDNN wheels (the `gpu` extra)
and asks for CUDA explicitly, so a pod without a GPU fails its readiness instead of serving on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def gpu_spec(spec: dict[str, Any]) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(spec))  # deep copy
    out["name"] = f"{spec['name']}-gpu"
    packages = out["python"]["packages"]
    cpu = [p for p in packages if p.split("==")[0] == "onnxruntime"]
    version = cpu[0].split("==")[1] if cpu and "==" in cpu[0] else None
    gpu = f"onnxruntime-gpu[cuda,cudnn]=={version}" if version else "onnxruntime-gpu[cuda,cudnn]"
    out["python"]["packages"] = [gpu if p in cpu else p for p in packages]
    out["envs"] = [*out.get("envs", []), {"name": "SWITCHYARD_PROVIDERS", "value": '["CUDAExecutionProvider"]'}]
    return out


def main(dest: str) -> None:
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_text(yaml.safe_dump(gpu_spec(spec), sort_keys=False))
    print(dest)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/bentofile.gpu.yaml")
