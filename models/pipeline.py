"""The whole chain for one model variant: train -> export -> optimize -> validate -> benchmark -> register."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.benchmark import benchmark, write_report
from models.export import export
from models.families.base import Builder
from models.families.digits import DigitsBuilder
from models.optimize import optimize
from models.registry import check_store_writable, register
from models.validate import validate
from models.workdir import ModelDir

# Variants that start from the optimized fp32 graph rather than the export.
NEEDS_FP32 = ("fp16",)

Log = Callable[[str], None]


def ensure_exported(builder: Builder, md: ModelDir, log: Log) -> None:
    if isinstance(builder, DigitsBuilder) and not (md.torch_dir / "model.pt").is_file():
        log(f"[{builder.key}] train")
        builder.train(md)
    if not (md.export_dir / "export.json").is_file():
        log(f"[{builder.key}] export")
        export(builder, md)


def build(builder: Builder, md: ModelDir, variant: str, *, max_drop: float, force: bool, log: Log,
          latency_iters: int = 50, seconds: float = 1.0) -> dict[str, Any]:
    check_store_writable()  # fail before minutes of work, not after
    ensure_exported(builder, md, log)
    if variant in NEEDS_FP32 and not (md.variant_dir("fp32") / "model.onnx").is_file():
        log(f"[{builder.key}] optimize fp32 (needed by {variant})")
        optimize(builder, md, "fp32")
    log(f"[{builder.key}] optimize {variant}")
    optimize(builder, md, variant)
    log(f"[{builder.key}] validate {variant}")
    report = validate(builder, md, variant, max_drop, force)
    log(f"[{builder.key}] benchmark {variant}")
    benchmark(builder, md, variant, latency_iters, seconds)
    write_report(md)
    tag = register(builder, md, variant, force)
    log(f"[{builder.key}] registered {tag}")
    return {"tag": tag, "validate": report}
