"""Where an imported model comes from: a PyTorch factory (and state dict), TorchScript, a local
Hugging Face directory, or an ONNX file. Nothing is downloaded; every failure names its cause."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import BuildError
from models.tasks.base import fingerprint

DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class Source:
    """A loaded source: a torch module to export, or an ONNX file as it is."""

    kind: str  # torch | torchscript | hf | onnx
    path: Path
    module: Any = None
    onnx_path: Path | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    hf_config: Any = None


def parse_input(spec: str) -> dict[str, Any]:
    """`name:dtype:shape`, e.g. `image:float32:batch,3,32,32`; symbolic axes are names."""
    parts = spec.split(":")
    if len(parts) != 3 or not parts[0]:
        raise BuildError(f"--input {spec!r}: expected name:dtype:shape, e.g. image:float32:batch,3,32,32")
    name, dtype, shape = parts
    if dtype not in DTYPES:
        raise BuildError(f"--input {spec!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    dims: list[int | str] = []
    for d in shape.split(","):
        d = d.strip()
        if d.isdigit() and int(d) > 0:
            dims.append(int(d))
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d):
            dims.append(d)
        else:
            raise BuildError(f"--input {spec!r}: shape axis {d!r} must be a positive size or a name like batch")
    if not isinstance(dims[0], str):
        raise BuildError(f"--input {spec!r}: the first axis must be the symbolic batch axis, e.g. batch,{shape}")
    return {"name": name, "dtype": dtype, "shape": dims}


def inputs_from_example(path: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    from models.tasks.base import npz_arrays

    arrays = npz_arrays(path)
    if not arrays:
        raise BuildError(f"--example {path} holds no arrays")
    specs = [{"name": k, "dtype": str(v.dtype), "shape": ["batch", *v.shape[1:]]} for k, v in arrays.items()]
    return specs, arrays


def load_factory(spec: str) -> tuple[Any, dict[str, Any]]:
    """`path/to/file.py:factory` or `package.module:factory`: the callable, and its lineage."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise BuildError(f"--torch {spec!r}: expected file.py:factory or package.module:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise BuildError(f"--torch {spec!r}: file {path} does not exist")
        mod_name = f"switchyard_user_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(mod_name, path)
        assert loader is not None and loader.loader is not None
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as exc:
            raise BuildError(f"--torch {spec!r}: importing {path} failed: {type(exc).__name__}: {exc}") from None
        lineage = {"source": str(path.resolve()), "source_sha256": fingerprint(path), "factory": name}
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise BuildError(f"--torch {spec!r}: cannot import {target}: {exc}") from None
        lineage = {"source": target, "factory": name}
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise BuildError(f"--torch {spec!r}: no factory {name!r} in {target} (it defines: {', '.join(found[:10])})")
    return factory, lineage


def torch_module(spec: str, state_dict: Path | None) -> Source:
    import torch

    factory, lineage = load_factory(spec)
    try:
        module = factory()
    except Exception as exc:
        raise BuildError(f"--torch {spec!r}: calling the factory failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, torch.nn.Module):
        raise BuildError(f"--torch {spec!r}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        if not state_dict.is_file():
            raise BuildError(f"--state-dict {state_dict} does not exist")
        try:
            module.load_state_dict(torch.load(state_dict, weights_only=True, map_location="cpu"))
        except Exception as exc:  # missing or unexpected keys, shape mismatches, pickles that are not weights
            raise BuildError(f"--state-dict {state_dict}: {str(exc).splitlines()[0][:300]}") from None
        lineage.update(state_dict=str(state_dict.resolve()), state_dict_sha256=fingerprint(state_dict))
    return Source("torch", Path(spec.rpartition(":")[0]), module.eval(), lineage=lineage)


def torchscript(path: Path) -> Source:
    import torch

    if not path.is_file():
        raise BuildError(f"--torchscript {path} does not exist")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise BuildError(f"--torchscript {path}: not a TorchScript file: {str(exc).splitlines()[0][:200]}") from None
    return Source("torchscript", path, module.eval(), lineage={"source": str(path.resolve()),
                                                               "source_sha256": fingerprint(path)})


def hf_directory(path: Path, task: str) -> Source:
    """A local Hugging Face directory, loaded offline; the module returns logits or token states."""
    import os

    missing = [f for f in HF_FILES if not (path / f).is_file()]
    if missing:
        raise BuildError(f"--hf {path}: {', '.join(missing)} missing (a Hugging Face directory needs "
                         f"{', '.join(HF_FILES)}; nothing is downloaded)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    lineage = {"source": str(path.resolve()), "source_sha256": fingerprint(path / "model.safetensors"),
               "architecture": (config.architectures or [config.model_type])[0]}
    if task == "text-generation":
        from transformers import AutoModelForCausalLM

        try:
            causal = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                          attn_implementation="eager")
        except ValueError as exc:
            raise BuildError(f"--hf {path}: not a causal language model ({str(exc).splitlines()[0][:200]})") from None
        return Source("hf", path, causal.eval(), lineage=lineage, hf_config=config)
    if task == "text-classification":
        model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True,
                                                                   attn_implementation="eager")
    elif task == "text-embedding":
        model = AutoModel.from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
    else:
        raise BuildError(f"--hf takes --task text-classification, text-embedding or text-generation, not {task}")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.logits if task == "text-classification" else out.last_hidden_state

    lineage = {"source": str(path.resolve()), "source_sha256": fingerprint(path / "model.safetensors"),
               "architecture": (config.architectures or [config.model_type])[0]}
    return Source("hf", path, Wrapped().eval(), lineage=lineage, hf_config=config)


def onnx_file(path: Path) -> Source:
    if not path.is_file():
        raise BuildError(f"--onnx {path} does not exist")
    from models.export import check_onnx

    check_onnx(path)
    return Source("onnx", path, onnx_path=path, lineage={"source": str(path.resolve()),
                                                         "source_sha256": fingerprint(path)})
