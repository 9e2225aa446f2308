"""Content hashes of model artifacts, shared by the build pipeline and the server."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file below `root`, keyed by its POSIX path relative to `root`."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def find_mismatches(root: Path, expected: dict[str, str]) -> list[str]:
    """Describe every artifact under `root` that is missing or whose hash differs."""
    problems = []
    for name, want in sorted(expected.items()):
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        got = sha256_file(path)
        if got != want:
            problems.append(f"{name}: sha256 {got[:12]}… does not match recorded {want[:12]}…")
    return problems
