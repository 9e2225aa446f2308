"""Many models on one machine: 40 endpoints, each its own small model, under a memory budget.

Each model is an MLP graph written with onnx.helper: x[batch, 64] -> MatMul (64 x hidden) -> Relu ->
MatMul (hidden x 4) -> y[batch, 4], with weights drawn from its own seed, so every endpoint answers
differently and an answer shows which model gave it. Registered the way an imported model is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.registry import register_file

INPUTS, OUTPUTS = 64, 4


def weights(seed: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((INPUTS, hidden), dtype=np.float32) / 8,
            rng.standard_normal((hidden, OUTPUTS), dtype=np.float32) / np.sqrt(hidden).astype(np.float32))


def expected(seed: int, hidden: int, x: np.ndarray) -> np.ndarray:
    """What model `seed` answers for `x`: the test's own arithmetic, not the server's."""
    w1, w2 = weights(seed, hidden)
    return np.maximum(x @ w1, 0) @ w2


def mlp_graph(dest: Path, seed: int, hidden: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, w2 = weights(seed, hidden)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", INPUTS])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUTS])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, f"mlp{seed}", [x], [y],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"mlp-{seed}.onnx"
    onnx.save(model, str(path))
    return path


def register_many(n: int, work: Path, hidden: int = 4096, prefix: str = "tenant") -> dict[str, str]:
    """`n` models, endpoint name -> tag: tenant-0 ... tenant-{n-1}."""
    tags = {}
    for i in range(n):
        path = mlp_graph(work, i, hidden)
        tags[f"{prefix}-{i}"] = register_file(f"{prefix}-{i}", path, task="tensor", preprocess={})
        path.unlink()
    return tags
