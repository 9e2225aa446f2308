"""Shared pieces of the benchmarks: start a server, load it with wrk, sample its CPU and RSS."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def report_parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """A report script's arguments: where its table and its results go, and --render-only."""
    parser = argparse.ArgumentParser(description=(doc or name).splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / f"benchmarks-{name.replace('_', '-')}.md")
    parser.add_argument("--results", type=Path, default=BENCH / "results" / f"{name}.json")
    parser.add_argument("--render-only", action="store_true", help="rewrite the report from the committed JSON")
    return parser


REPORTS = ("bench/results/", "docs/benchmarks")


def measured_code(root: Path = ROOT) -> str:
    """The commit measured (read before anything starts), marked when the tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout

    # Other benchmarks' reports written since the commit are not code: benchmarks run one after another. (Each
    # porcelain line is "XY path": the first line's leading blank is part of it, so nothing is stripped.)
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    dirty = [p for p in changed if not p.startswith(REPORTS)]
    return git("rev-parse", "--short", "HEAD").strip() + (" (with uncommitted changes)" if dirty else "")


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"


def run_meta(commit: str, **more: Any) -> dict[str, Any]:
    """A report's header: the code measured, when, on what."""
    return {"commit": commit, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            **more}


def written_by(script: str, results: Path, meta: dict[str, Any]) -> str:
    """A report's provenance line: the script and its results file, the code measured, when and where (and the
    seconds per row, when the report has them), and the model."""
    seconds = f", {meta['seconds']:g} s per row" if "seconds" in meta else ""
    return (f"Written by `bench/{script}` from `{results.relative_to(ROOT)}` (commit {meta['commit']}, "
            f"{meta['when']}, {meta['machine']}{seconds}). Model: {meta['model']}.")


def write_report(results: Path, out: Path, payload: dict[str, Any], render: Any) -> None:
    """The results as JSON, then the table rendered from that file (as --render-only would)."""
    results.write_text(json.dumps(payload, indent=2) + "\n")
    render(results, out)
    print(f"wrote {out} and {results}")


@dataclass
class Load:
    connections: int
    rps: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    requests: int
    cpu_s_per_1k: float
    cdf_ms: list[tuple[float, float]] = field(default_factory=list)
    cpu_pct: float = 0.0  # the server's whole process tree, % of one core over the window


@dataclass
class ServerRun:
    name: str
    ready_s: float = 0.0
    peak_rss_mb: float = 0.0
    loads: list[Load] = field(default_factory=list)
    shadow: dict[str, float] = field(default_factory=dict)  # shadow copies answered and dropped, from /metrics
    repeats: list[float] = field(default_factory=list)  # rows/s of the headline point measured again


def baseline_tree(rev: str, state: Path) -> Path:
    """A checkout of an earlier commit, to serve the same store with that commit's code."""
    tree = state / f"baseline-{rev}"
    subprocess.run(["git", "-C", str(BENCH.parent), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)
    return tree


def wait_http(url: str, timeout: float = 180, ok: tuple[int, ...] = (200,), method: str = "GET",
              body: Any = None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            r = httpx.request(method, url, json=body, timeout=5)
            if r.status_code in ok:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 2**20


def settle(pid: int, idle_share: float = 0.1, timeout: float = 60.0) -> float:
    """Wait until the server is idle: an overloaded server may keep working through a backlog
    after wrk closes its connections, and that work must not land on the next point."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < idle_share * 0.5:
            break
    return time.monotonic() - start


def wrk_summary(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The WRKJSON line our lua scripts print at the end of a wrk run."""
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    summary: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    return summary


def wrk(url: str, bodies: list[str], connections: int, seconds: float, pid: int, rows_per_request: int,
        threads: int = 2, sticky: bool = False, cpus: str | None = None, script: str = "post.lua") -> Load:
    """wrk with post.lua (or `script`, a file in bench/lua); `cpus` pins wrk with taskset (the server is pinned
    where it starts)."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as fh:
        fh.write("\n".join(bodies) + "\n")
    cpu0 = cpu_seconds(pid)
    pin = ["taskset", "-c", cpus] if cpus else []
    env = {"WRK_BODIES": fh.name, "PATH": "/usr/bin:/bin", "WRK_STICKY": "1" if sticky else "0"}
    cmd = ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
           "--timeout", "30s", "-s", str(BENCH / "lua" / script), url]
    out = subprocess.run([*pin, *cmd], capture_output=True, text=True, env=env, timeout=seconds + 60)
    cpu = cpu_seconds(pid) - cpu0
    Path(fh.name).unlink()
    s = wrk_summary(out)
    rps = s["requests"] / (s["duration_us"] / 1e6)
    ok = s["requests"] - s["non2xx"]
    return Load(connections, rps, ok * rows_per_request / (s["duration_us"] / 1e6), s["p50_us"] / 1000,
                s["p90_us"] / 1000, s["p99_us"] / 1000, s["non2xx"], s["socket_errors"], s["requests"],
                cpu / max(1, s["requests"]) * 1000, [(p, us / 1000) for p, us in s["cdf_us"]],
                100 * cpu / (s["duration_us"] / 1e6))
