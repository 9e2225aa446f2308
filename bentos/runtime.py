"""ONNX Runtime sessions: execution providers, threads and spinning chosen in one place."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

# Preferred order; only those this onnxruntime build offers are used.
_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_threads(workers: int = 1) -> int:
    """Intra-op threads so that workers x threads stays within the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def pick_providers(cpu_only: bool = False) -> list[str]:
    available = set(ort.get_available_providers())
    wanted = ("CPUExecutionProvider",) if cpu_only else _PROVIDER_ORDER
    return [p for p in wanted if p in available]


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle spinning steals the core the event loop needs when both share the machine.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def load_session(
    path: Path, threads: int | None = None, cpu_only: bool = False, spinning: bool = False
) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path),
        session_options(threads or default_threads(), spinning),
        providers=pick_providers(cpu_only),
    )
