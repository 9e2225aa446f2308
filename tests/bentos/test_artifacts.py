"""Artifact hashes, and no torch on the serving path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bentos.artifacts import find_mismatches, hash_tree
from tests.conftest import ROOT


def test_serving_modules_do_not_import_torch_or_transformers() -> None:
    code = ("import sys, bentos.tasks, bentos.dataplane.runtime, bentos.artifacts, bentos.api.oip, "
            "bentos.controlplane.engine; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; print('clean')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def test_find_mismatches_reports_tampered_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "b.bin").write_bytes(b"def")
    hashes = hash_tree(tmp_path)
    assert find_mismatches(tmp_path, hashes) == []
    (tmp_path / "a.bin").write_bytes(b"abd")
    (tmp_path / "b.bin").unlink()
    problems = find_mismatches(tmp_path, hashes)
    assert problems[0].startswith("a.bin: sha256") and problems[1] == "b.bin: missing"
