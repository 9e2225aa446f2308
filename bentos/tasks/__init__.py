"""The task types: one module each in this package, found by name, plus plug-ins.

Every module here that defines a `Task` subclass registers it on import; a plug-in
module outside the project registers its own with `register` (SWITCHYARD_TASK_MODULES
names such modules for the server to import when it starts).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from bentos.tasks.base import Codec, Limits, Task

_TASKS: dict[str, type[Task]] = {}
_HELPERS = {"base", "text", "playground_kit"}


def register(task: type[Task]) -> type[Task]:
    """Add a task type (usable as a class decorator); a name already taken by another class is refused."""
    existing = _TASKS.get(task.name)
    if existing is not None and existing is not task and existing.__qualname__ != task.__qualname__:
        raise ValueError(f"task type {task.name!r} is already registered by {existing.__module__}")
    _TASKS[task.name] = task
    return task


def _register_module(module: Any) -> None:
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, Task) and obj is not Task and not inspect.isabstract(obj) and obj.__module__ == \
                module.__name__:
            register(obj)


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _HELPERS:
            _register_module(importlib.import_module(f"{__name__}.{info.name}"))


def load_plugins(modules: list[str]) -> None:
    """Import plug-in modules; each one's Task subclasses become task types."""
    for name in modules:
        try:
            _register_module(importlib.import_module(name))
        except ImportError as exc:
            raise ValueError(f"SWITCHYARD_TASK_MODULES: cannot import {name!r}: {exc}") from exc


def tasks() -> dict[str, type[Task]]:
    return dict(_TASKS)


def get_task(name: str) -> type[Task]:
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task type {name!r}; known: {', '.join(sorted(_TASKS))}") from None


_discover()

__all__ = ["Codec", "Limits", "Task", "get_task", "load_plugins", "register", "tasks"]
