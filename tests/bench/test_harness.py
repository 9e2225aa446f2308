"""bench/harness.py: the commit a report names, and when it is marked as measured with uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.harness import measured_code


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_reports_written_since_the_commit_are_not_uncommitted_code(tmp_path: Path) -> None:
    """Another benchmark's report changed first in `git status` (its line starts with a blank) is not code; a
    changed source file is."""
    git(tmp_path, "init", "-q")
    for path in ("bench/results/a.json", "docs/benchmarks-a.md", "bentos/x.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert measured_code(tmp_path) == head
    (tmp_path / "bench/results/a.json").write_text("2\n")
    (tmp_path / "docs/benchmarks-a.md").write_text("2\n")
    assert measured_code(tmp_path) == head
    (tmp_path / "bentos/x.py").write_text("2\n")
    assert measured_code(tmp_path) == f"{head} (with uncommitted changes)"
