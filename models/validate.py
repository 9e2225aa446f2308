"""Validate stage: the accuracy-retention gate against the family's fp32 baseline."""

from __future__ import annotations

from typing import Any

from bentos.dataplane.runtime import load_session
from models.errors import BuildError
from models.export import check_onnx
from models.families.base import Builder
from models.workdir import ModelDir, write_json


def validate(builder: Builder, md: ModelDir, variant: str, max_drop: float, force: bool = False) -> dict[str, Any]:
    path = md.require_variant(variant)
    check_onnx(path)
    threads = builder.settings.threads
    baseline = load_session(md.require_export(), threads, cpu_only=True)
    candidate = load_session(path, threads, cpu_only=True)
    metrics = builder.evaluate(candidate, baseline)
    failures = builder.gate(metrics, max_drop)
    report = {"variant": variant, "passed": not failures, "forced": bool(failures and force),
              "failures": failures, "max_drop": max_drop, "baseline": "export/model.onnx (fp32)", "metrics": metrics,
              **builder.gate_context()}
    write_json(md.variant_dir(variant) / "validate.json", report)
    if failures and not force:
        raise BuildError(f"{builder.key} {variant} failed validation: " + "; ".join(failures)
                         + " (it will not be registered; pass --force to override)")
    return report
