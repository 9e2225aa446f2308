"""Idle and start-up: the CPU a Switchyard service burns at rest, its start-to-ready time and RSS.

The service runs as `make serve` runs it (one worker, the default deployment from the store),
its process tree is left alone for a settling period, then its CPU time is read over a window.
With --baseline REV the same measurement is made at an earlier commit, in the same run.

    python bench/idle.py                       # writes docs/benchmarks-idle.md and bench/results/idle.json
    python bench/idle.py --baseline 2022309 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import baseline_tree, cpu_seconds, rss_mb  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402


def measure(code: Path, state: Path, seconds: float, settle_s: float) -> dict[str, Any]:
    env = serve_env(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), state,
                    admin_token="idle-token-0123456789")
    if code != ROOT:  # that commit's packages, not the installed (editable) ones
        env["PYTHONPATH"] = str(code)
    start = time.monotonic()
    server = Served(env, log_dir=state, cwd=code)
    try:
        server.wait_ready()
        ready_s = time.monotonic() - start
        peak = rss_mb(server.proc.pid)
        time.sleep(settle_s)
        cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            peak = max(peak, rss_mb(server.proc.pid))
        cpu = cpu_seconds(server.proc.pid) - cpu0
        return {"ready_s": round(ready_s, 2), "idle_core_pct": round(100 * cpu / (time.monotonic() - t0), 2),
                "peak_rss_mb": round(peak, 1), "window_s": seconds}
    finally:
        server.kill()


def report(rows: dict[str, dict[str, Any]], command: str) -> str:
    lines = [
        "# Idle CPU, start-up and memory\n",
        f"One run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, made by `{command}`. Every number below comes from it.\n",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}.",
        "- The service as `make serve` runs it: one worker, the default deployment (each endpoint's best validated "
        "version), SQLite control plane. CPU is the whole process tree's user + system time over the window, "
        "after the settling period, as a share of one core.\n",
        "| code | start to ready s | idle CPU, % of a core | peak RSS MB |",
        "|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ready_s']} | {r['idle_core_pct']} | {r['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="the idle window")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after ready before the window")
    parser.add_argument("--baseline", metavar="REV", help="also measure this git commit, in the same run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-idle.md")
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="switchyard-idle-"))
    rows = {"current": measure(ROOT, state / "current", args.seconds, args.settle)}
    if args.baseline:
        tree = baseline_tree(args.baseline, state)
        try:
            rows[f"@{args.baseline}"] = measure(tree, state / "baseline", args.seconds, args.settle)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    command = "python bench/idle.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "idle.json").write_text(json.dumps(rows, indent=2) + "\n")
    args.out.write_text(report(rows, command.strip()))
    print(report(rows, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
