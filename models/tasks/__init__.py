"""Build halves of the task types: how an imported model's data is read, how it is judged.

One module per serving task type in `bentos/tasks/`, found by the same name
(image-classification -> image_classification).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from models.errors import BuildError


def build_half(task: str) -> ModuleType:
    try:
        return importlib.import_module(f"{__name__}.{task.replace('-', '_')}")
    except ModuleNotFoundError:
        raise BuildError(f"task {task!r} has no build half (models/tasks/{task.replace('-', '_')}.py)") from None
