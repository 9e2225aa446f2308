"""Optimize stage: turn the exported fp32 graph into one servable variant."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from bentos.dataplane.runtime import load_session, session_options
from models.errors import BuildError
from models.export import check_onnx, export_onnx
from models.families.base import Builder
from models.workdir import ModelDir, write_json


def ort_offline(src: Path, dest: Path, threads: int) -> None:
    """Save ORT's EXTENDED graph optimizations; ALL would bake in this CPU's layouts."""
    opts = session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    # Fusions leave stale value_info behind, which breaks later shape inference (quantizers).
    import onnx

    model = onnx.load(str(dest))
    del model.graph.value_info[:]
    onnx.save(model, str(dest))


def time_graph(builder: Builder, path: Path, batches: tuple[int, ...] = (1, 32), repeats: int = 5) -> dict[str, float]:
    session = load_session(path, builder.settings.threads, cpu_only=True)
    codec, timings = builder.codec(), {}
    for batch in batches:
        feed = codec.encode(builder.bench_items(batch))
        session.run(None, feed)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            samples.append(time.perf_counter() - start)
        timings[f"batch{batch}_ms"] = float(np.median(samples) * 1000)
    return timings


def fuse_transformer(builder: Builder, src: Path, dest: Path) -> dict[str, int]:
    """ORT's transformer optimizer (attention, LayerNorm, GELU fusion); returns what it fused."""
    from onnxruntime.transformers import optimizer

    fusion = builder.transformer_fusion()
    assert fusion is not None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints shape-inference chatter
        fused = optimizer.optimize_model(str(src), **fusion)
    fused.save_model_to_file(str(dest))
    return {k: v for k, v in fused.get_fused_operator_statistics().items() if v}


def _fp32(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    """Try every exported graph, with and without transformer fusion; keep the fastest."""
    candidates: dict[str, Path] = {}
    fusions: dict[str, Any] = {}
    for name, src in builder.fp32_candidates(md).items():
        candidates[name] = work / f"{name}.onnx"
        ort_offline(src, candidates[name], builder.settings.threads)
        if builder.transformer_fusion() is not None:
            candidates[f"{name}+fusion"] = work / f"{name}_fused.onnx"
            fusions[name] = fuse_transformer(builder, src, candidates[f"{name}+fusion"])
    timings = {name: time_graph(builder, path) for name, path in candidates.items()}
    # Score by time per row at batch 1 and batch 32 together.
    best = min(timings, key=lambda n: timings[n]["batch1_ms"] + timings[n]["batch32_ms"] / 32)
    os.replace(candidates[best], dest)
    return {"graph": best, "ort_level": "extended", "candidates_ms": timings, "fusions": fusions}


def gemm_to_matmul(src: Path, dest: Path) -> int:
    """Rewrite Gemm (y = xB^T + c) as MatMul + Add: ORT's dynamic quantizer covers only MatMul."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight.T.copy(), node.input[1]))
        product = f"{node.output[0]}_matmul"
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product], name=f"{node.name}_MatMul"))
        nodes.append(helper.make_node("Add", [product, node.input[2]], list(node.output), name=f"{node.name}_Add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]  # shapes of the transposed weights changed
    onnx.save(model, str(dest))
    return rewritten


def _int8_dynamic(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = work / "source.onnx"
    if builder.transformer_fusion() is not None:
        # Quantizing the fused graph (QAttention) kept MiniLM's 1st-percentile cosine at 0.981;
        # the unfused graph gave 0.977, under the gate.
        source = "torchscript export + transformer fusion"
        fuse_transformer(builder, md.export_dir / "model.legacy.onnx", src)
    else:
        source = f"export with {gemm_to_matmul(md.require_export(), src)} Gemm rewritten as MatMul+Add"
    # DefaultTensorType lets the quantizer pass fused (com.microsoft) nodes it cannot type.
    quantize_dynamic(str(src), str(dest), per_channel=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"source": source, "weights": "int8 per-channel", "activations": "uint8, scales computed per batch"}


def _int4(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    """Weight-only 4-bit MatMuls (ONNX Runtime's MatMulNBits), for transformers' linear layers."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    from onnxruntime.quantization import quant_utils

    src = work / "source.onnx"
    rewritten = gemm_to_matmul(md.require_export(), src)
    # Asymmetric blocks of 32 (uint4 with a zero point each): on the generation benchmark's GPT-2, greedy
    # agreement with fp32 was 0.945 against 0.75 for symmetric int4, over the default gate of 0.9.
    # accuracy_level 4 lets the CPU kernel quantize activations to int8 for its dot products.
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=4,
                                                quant_format=quant_utils.QuantFormat.QOperator,
                                                op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),),
                                                bits=4)
    logging.getLogger(nbits.__name__).setLevel(logging.WARNING)  # a line per node otherwise
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dest), False)
    return {"source": f"export with {rewritten} Gemm rewritten as MatMul+Add", "weights": "uint4, blocks of 32 "
            "with a scale and zero point each (MatMulNBits)", "activations": "float (int8 inside the kernel)"}


class _Calibration(CalibrationDataReader):
    """Feeds the held-out calibration items to ORT's calibrator, a few per step."""

    def __init__(self, builder: Builder, batch: int = 8) -> None:
        items = builder.calibration_items()
        if not items:
            raise BuildError(f"calibration set for {builder.key} is empty: int8-static needs held-out inputs")
        codec = builder.codec()
        self._feeds = iter([codec.encode(items[i:i + batch]) for i in range(0, len(items), batch)])
        self.rows = len(items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _int8_static(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    calibration = _Calibration(builder)
    src = md.export_dir / "model.legacy.onnx"
    if not src.is_file():
        src = md.require_export()
    prepared = work / "prepared.onnx"
    # Symbolic shape inference is incomplete on these graphs; ONNX shape inference suffices.
    quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared))
    nodes, exclude = builder.static_quant_nodes(graph), builder.static_quant_exclude(graph)
    quantize_static(str(prepared), str(dest), calibration, quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=nodes,
                    nodes_to_exclude=exclude)
    return {"source": src.name, "calibration_method": "MinMax", "calibration_rows": calibration.rows,
            "format": "QOperator", "weights": "int8 per-channel", "activations": "uint8, static scales",
            "quantized_nodes": "all supported" if nodes is None else len(nodes), "float_nodes": exclude}


def _fp16(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(md.require_variant("fp32"))), keep_io_types=True))
    model.topological_sort()  # the converter appends its input Casts at the end
    onnx.save(model.model, str(dest))
    return {"source": "fp32", "io_types": "float32 (cast inside)", "target": "CUDA/TensorRT providers"}


def _from_torch(builder: Builder, md: ModelDir, dest: Path, work: Path,
                transform: Callable[[], tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    module, info = transform()
    raw = work / "raw.onnx"
    export_onnx(builder, module, raw, dynamo=False)
    ort_offline(raw, dest, builder.settings.threads)
    return info


def _pruned(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    return _from_torch(builder, md, dest, work, lambda: builder.prune(builder.load_torch(md)))


def _distilled(builder: Builder, md: ModelDir, dest: Path, work: Path) -> dict[str, Any]:
    return _from_torch(builder, md, dest, work, lambda: builder.distill(md))


VARIANTS: dict[str, Callable[[Builder, ModelDir, Path, Path], dict[str, Any]]] = {
    "fp32": _fp32, "int8-dynamic": _int8_dynamic, "int8-static": _int8_static, "int4": _int4,
    "fp16": _fp16, "pruned": _pruned, "distilled": _distilled,
}


def optimize(builder: Builder, md: ModelDir, variant: str) -> dict[str, Any]:
    out = md.variant_dir(variant)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        work = Path(tmp)
        staged = work / "model.onnx"
        start = time.perf_counter()
        info = VARIANTS[variant](builder, md, staged, work)
        check_onnx(staged)
        # Must load and run on CPU, whatever provider it targets.
        load_session(staged, builder.settings.threads, cpu_only=True).run(
            None, builder.codec().encode(builder.example_items()))
        os.replace(staged, out / "model.onnx")
    report = {"variant": variant, **info, "seconds": round(time.perf_counter() - start, 2),
              "size_bytes": (out / "model.onnx").stat().st_size}
    write_json(out / "optimize.json", report)
    return report
