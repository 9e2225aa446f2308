"""The serving package reads as the request path, and imports point only downward:
api -> controlplane -> dataplane -> config -> tasks -> the shared modules (errors, settings, ...)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

RANK = {"api": 5, "controlplane": 4, "dataplane": 3, "config": 2, "tasks": 1}


def rank(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], 0) if len(parts) > 1 else 0


def imports(path: Path) -> list[str]:
    return [n.module for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("bentos.")]


def test_every_import_in_bentos_points_down_or_sideways() -> None:
    upward = []
    for path in (ROOT / "bentos").rglob("*.py"):
        module = "bentos." + ".".join(path.relative_to(ROOT / "bentos").with_suffix("").parts)
        upward += [(module, other) for other in imports(path) if rank(other) > rank(module)]
    assert upward == []


def test_the_rollout_controller_does_not_import_the_engine() -> None:
    assert not [m for m in imports(ROOT / "bentos" / "controlplane" / "rollout_controller.py")
                if m.endswith(".engine")]
