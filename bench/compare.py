"""Before and after a change, in one run: Switchyard at this checkout and at an earlier commit, on the same
store, workloads and connection counts, in interleaved rounds (after, before, after, before, ...), so that
drift in the machine hits both alike and each side has its own repeat spread to be judged against.

    python bench/compare.py --baseline eb44fd2                 # 3 rounds; docs/benchmarks-compare.md
    python bench/compare.py --baseline eb44fd2 --rounds 1 --seconds 1 --warmup 0   # a quick look

A change passes when, at every point, the mean of its rounds lies within the spread (min to max) of the
baseline's rounds, or beats it: requests/s may not fall below the baseline's lowest round, p50 may not
rise above its highest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import baseline_tree  # noqa: E402
from bench.serving import Plan, pick_versions, run_switchyard, workloads  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, metavar="REV", help="the commit to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="1-version", help="a Switchyard configuration of bench/serving.py")
    parser.add_argument("--workloads", default="embed-one,digits-one")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--seconds", type=float, default=6.0, help="wrk duration per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up per workload")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-compare.md")
    return parser.parse_args(argv)


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarize(rounds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per workload and connection count: both sides' requests/s and p50 over their rounds, and the verdict."""
    points: dict[tuple[str, int], dict[str, dict[str, list[float]]]] = {}
    for side, runs in rounds.items():
        for run in runs:
            for load in run["loads"]:
                point = points.setdefault((load["workload"], load["connections"]), {})
                got = point.setdefault(side, {"rps": [], "p50_ms": [], "non2xx": []})
                for key in got:
                    got[key].append(float(load[key]))
    rows = []
    for (workload, conns), sides in sorted(points.items()):
        after, before = sides["after"], sides["before"]
        rps, p50 = spread(after["rps"]), spread(after["p50_ms"])
        base_rps, base_p50 = spread(before["rps"]), spread(before["p50_ms"])
        rows.append({"workload": workload, "connections": conns, "after_rps": rps, "before_rps": base_rps,
                     "after_p50_ms": p50, "before_p50_ms": base_p50,
                     "errors": sum(after["non2xx"]) + sum(before["non2xx"]),
                     "rps_ok": rps["mean"] >= base_rps["min"], "p50_ok": p50["mean"] <= base_p50["max"]})
    return rows


def cell(s: dict[str, float], digits: int) -> str:
    return f"{s['mean']:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def write(out: Path, rows: list[dict[str, Any]], args: argparse.Namespace, head: str, versions: dict[str, Any],
          took_s: float) -> None:
    lines = [f"# Before and after: {head} against {args.baseline}", "",
             f"Written by `python bench/compare.py {' '.join(sys.argv[1:])}` in {took_s / 60:.1f} min: "
             f"config `{args.config}`, {args.rounds} interleaved rounds per side, {args.seconds:g} s per point "
             "with wrk on this machine (server and wrk share its cores). Cells are the mean of the rounds "
             "(lowest–highest). A point passes when the change's mean requests/s is at least the baseline's "
             "lowest round and its mean p50 at most the baseline's highest.", "",
             f"Versions: {json.dumps({f: v['stable'] for f, v in versions.items()})}", "",
             "| workload | connections | req/s after | req/s before | p50 ms after | p50 ms before | non-2xx "
             "| within spread |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        verdict = "yes" if r["rps_ok"] and r["p50_ok"] else \
            "no: " + ", ".join(n for n, ok in (("req/s", r["rps_ok"]), ("p50", r["p50_ok"])) if not ok)
        lines.append(f"| {r['workload']} | {r['connections']} | {cell(r['after_rps'], 0)} | "
                     f"{cell(r['before_rps'], 0)} | {cell(r['after_p50_ms'], 2)} | {cell(r['before_p50_ms'], 2)} | "
                     f"{r['errors']} | {verdict} |")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import subprocess

    args = parse_args(argv)
    began = time.monotonic()
    loads = {k: v for k, v in workloads().items() if k in args.workloads.split(",")}
    versions = {f: pick_versions(f) for f in sorted({w["endpoint"] for w in loads.values()})}
    conns = [int(c) for c in args.connections.split(",")]
    plan = Plan(loads, "", conns, conns, args.seconds, args.warmup, pin=False)
    state = Path(tempfile.mkdtemp(prefix="switchyard-compare-"))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    baseline = baseline_tree(args.baseline, state)
    rounds: dict[str, list[dict[str, Any]]] = {"after": [], "before": []}
    try:
        for i in range(args.rounds):
            for side, code in (("after", ROOT), ("before", baseline)):
                label = "" if side == "after" else f"@{args.baseline}"
                run = run_switchyard(args.config, versions, plan, state, code, f"{label} round {i + 1}")
                rounds[side].append({"name": run.name, "ready_s": run.ready_s, "peak_rss_mb": run.peak_rss_mb,
                                     "loads": run.loads})
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    rows = summarize(rounds)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "compare.json").write_text(json.dumps({"head": head, "baseline": args.baseline, "rows": rows,
                                                      "rounds": rounds}, indent=1))
    write(args.out, rows, args, head, versions, time.monotonic() - began)
    print(args.out.read_text())
    return 0 if all(r["rps_ok"] and r["p50_ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
