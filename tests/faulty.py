"""Registered digits versions that misbehave: one whose ONNX session raises on real traffic, one whose
predictions drift (register_biased).

The graph reshapes its input to 65 columns whenever a zero pixel is present, which
fails at run time. The warm-up input has no zeros, so the version loads and warms
like any other and only breaks once real digits (full of zeros) arrive.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import bentoml
import onnx
from onnx import TensorProto, helper

from bentos.artifacts import sha256_file
from models.families.digits import PREPROCESS, SIGNATURE
from models.registry import sign_new


def faulty_graph(src: Path, dest: Path) -> None:
    model = onnx.load(str(src))
    graph = model.graph
    x = graph.input[0].name
    consts = [helper.make_tensor("zero_f", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("base_cols", TensorProto.INT64, [1], [64]),
              helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])]
    nodes = [
        helper.make_node("ReduceMin", [x], ["fz_min"], keepdims=0),
        helper.make_node("Equal", ["fz_min", "zero_f"], ["fz_has_zero"]),
        helper.make_node("Cast", ["fz_has_zero"], ["fz_extra"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["fz_extra", "minus_one"], ["fz_extra1"]),
        helper.make_node("Add", ["base_cols", "fz_extra1"], ["fz_cols"]),
        helper.make_node("Concat", ["minus_one", "fz_cols"], ["fz_shape"], axis=0),
        helper.make_node("Reshape", [x, "fz_shape"], ["fz_checked"]),
    ]
    for node in graph.node:  # the original graph now reads the checked input
        for i, name in enumerate(node.input):
            if name == x:
                node.input[i] = "fz_checked"
    graph.initializer.extend(consts)
    new_nodes = nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))


def register_faulty(src: Path, name: str = "digits-faulty-fp32") -> str:
    return register_graph(src, name, "digits-faulty", "faulty", faulty_graph)


def register_graph(src: Path, name: str, model: str, variant: str, rewrite: Callable[[Path, Path], None]) -> str:
    """Store `rewrite`(src) as an unvalidated digits version: signature, preprocessing and hashes as usual."""
    labels = {"task": "image-classification", "family": "digits", "model": model, "variant": variant,
              "stage": "candidate"}
    with bentoml.models.create(name, labels=labels, metadata={"schema": SIGNATURE, "preprocess": PREPROCESS,
                                                              "metrics": {"validation_passed": False}}) as stored:
        root = Path(stored.path)
        rewrite(src, root / "model.onnx")
        (root / "schema.json").write_text(json.dumps(SIGNATURE))
        stored.info.metadata["sha256"] = {"model.onnx": sha256_file(root / "model.onnx")}
        sign_new(stored)
    return str(stored.tag)


def biased_graph(src: Path, dest: Path, favourite: int = 3) -> None:
    """The same model with 1.0 added to one class's probability: it never fails and answers fast,
    but predicts that class for nearly every input (a canary whose predictions drift)."""
    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = "unbiased"
    bias = [0.0] * 10
    bias[favourite] = 1.0
    graph.initializer.append(helper.make_tensor("bias", TensorProto.FLOAT, [10], bias))
    graph.node.append(helper.make_node("Add", ["unbiased", "bias"], [out]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))


def register_biased(src: Path, name: str = "digits-biased-fp32") -> str:
    return register_graph(src, name, "digits-biased", "biased", biased_graph)


def register_copy(tag: str, name: str) -> tuple[str, Path]:
    """Re-register an existing version under another name; returns its tag and store path."""
    src = bentoml.models.get(tag)
    with bentoml.models.create(name, labels=dict(src.info.labels), metadata=dict(src.info.metadata)) as model:
        shutil.copytree(src.path, model.path, dirs_exist_ok=True)
        sign_new(model)  # the manifest names the tag: a copy is signed as itself
    return str(model.tag), Path(bentoml.models.get(model.tag).path)
