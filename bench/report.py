"""docs/benchmarks.md from one run: tables, targets, plots, and what the run was."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.harness import ServerRun

PACKAGES = ("bentoml", "litserve", "fastapi", "starlette", "uvicorn", "onnxruntime", "tokenizers", "torch",
            "transformers", "numpy", "prometheus-client")
BATCHES = ("1", "8", "32", "64")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                   if x.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration):
        mem = 0.0
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions() -> str:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return ", ".join([f"Python {platform.python_version()}", *found, (wrk[0].split(" [")[0] if wrk else "wrk ?")])


class Results:
    def __init__(self, runs: list[ServerRun], ceilings: dict[str, dict[str, float]]) -> None:
        self.runs, self.ceilings = runs, ceilings

    def find(self, server: str, workload: str, conns: int) -> dict[str, Any] | None:
        for run in self.runs:
            if run.name == server:
                for load in run.loads:
                    if load["workload"] == workload and load["connections"] == conns:
                        return dict(load)
        return None

    def best_ceiling(self, workload: str) -> float:
        return max((v for k, v in self.ceilings.get(workload, {}).items() if k in BATCHES), default=0.0)

    def peers(self, workload: str, conns: int, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        out = []
        for run in self.runs:
            if run.name.startswith(("Switchyard", "HTTP floor")) or not run.name.startswith(prefix):
                continue
            load = self.find(run.name, workload, conns)
            if load:
                out.append((run.name, load))
        return out


def _fmt(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{suffix}"


NAIVE = "naive FastAPI + ORT (same file)"


def spread(run: dict[str, Any] | None, repeats: list[float]) -> str:
    """The headline value's repeat rounds and their spread ((max - min) / median), so noise is visible."""
    if not run or not repeats:
        return ""
    values = sorted([run["rows_per_s"], *repeats])
    median = values[len(values) // 2]
    return (f" (rounds: {', '.join(f'{v:.0f}' for v in [run['rows_per_s'], *repeats])} rows/s; "
            f"spread {100 * (values[-1] - values[0]) / median:.1f} %)")


def targets(res: Results, sweep: str, idle: dict[str, Any] | None = None) -> list[str]:
    """Where each acceptance item stands, from this run's numbers alone."""
    sy, one = res.find("Switchyard 90-10", sweep, 64), res.find("Switchyard 1-version", sweep, 64)
    naive = res.find(NAIVE, sweep, 64)
    ceil = res.best_ceiling(sweep)
    stock = res.find("stock BentoML max_latency_ms=1000", sweep, 64)
    lit = max(res.peers(sweep, 64, "LitServe"), key=lambda p: p[1]["rows_per_s"], default=None)

    def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "rows_per_s") -> float | None:
        return a[key] / b[key] if a and b and b[key] else None

    def of_ceiling(a: dict[str, Any] | None, c: float) -> float | None:
        return a["rows_per_s"] / c if a and c else None

    rows = ["| workload | target | this run | met |", "|---|---|---|---|"]

    def row(goal: str, target: str, value: float | None, ok: bool | None, spec: str = ".2f", suf: str = "",
            note: str = "") -> None:
        met = "-" if ok is None else "yes" if ok else "no"
        rows.append(f"| {goal} | {target} | {_fmt(value, spec, suf)}{note} | {met} |")

    def at_least(x: float | None, bound: float) -> bool | None:
        return None if x is None else x >= bound

    head = next((r for r in res.runs if r.name == "Switchyard 90-10"), None)
    frac = of_ceiling(sy, ceil)
    row(f"{sweep}, 64 conns, 90/10 with metrics on: rows/s ÷ in-process ceiling", "≥ 0.85", frac,
        at_least(frac, 0.85), note=spread(sy, head.repeats if head else []))
    r = ratio(sy, naive)
    row(f"{sweep}, 64 conns, 90/10: × the naive FastAPI + ORT server", "≥ 1.3x", r, at_least(r, 1.3), ".2f", "x")
    frac = of_ceiling(res.find("Switchyard 90-10", sweep, 16), ceil)
    row(f"{sweep}, 16 conns, 90/10: rows/s ÷ ceiling", "≥ 0.75", frac, at_least(frac, 0.75))
    low, naive_low = res.find("Switchyard 90-10", sweep, 1), res.find(NAIVE, sweep, 1)
    extra = low["p50_ms"] - naive_low["p50_ms"] if low and naive_low else None
    row(f"{sweep}, 1 conn: p50 over the naive ORT server's "
        f"({_fmt(naive_low['p50_ms'] if naive_low else None, '.1f')} ms)", "≤ +1 ms", extra,
        None if extra is None else extra <= 1, "+.1f", " ms")
    digits, naive_digits = res.find("Switchyard 90-10", "digits-one", 64), res.find(NAIVE, "digits-one", 64)
    r = ratio(digits, naive_digits, "rps")
    row("digits-one, 64 conns, 90/10: × the naive ORT server's req/s", "≥ 1.0x", r, at_least(r, 1.0), ".2f", "x")
    cpu = digits["cpu_s_per_1k"] if digits else None
    row("digits-one, 64 conns, 90/10: server CPU per request", "≤ 1.0 ms", cpu, None if cpu is None else cpu <= 1.0,
        ".2f", " ms")
    frac = of_ceiling(res.find("Switchyard 90-10", "embed-mixed", 64), res.best_ceiling("embed-mixed"))
    row("embed-mixed (3-60 words), 64 conns, 90/10: rows/s ÷ ceiling on the same mix", "≥ 0.85", frac,
        at_least(frac, 0.85))
    shadowed = res.find("Switchyard 90-10-shadow", sweep, 64)
    keep = ratio(shadowed, sy, "rps")
    counts = next((r.shadow for r in res.runs if r.name == "Switchyard 90-10-shadow" and r.shadow), None)
    row(f"{sweep}, 64 conns: 90/10 plus a shadow at shadow_sample 100 %, req/s ÷ without", "≥ 0.90x", keep,
        at_least(keep, 0.9), ".2f", "x",
        f" ({counts['dropped']:.0f} copies dropped and counted, {counts['answered']:.0f} answered)" if counts else "")
    idle_pct = idle["idle_core_pct"] if idle else None
    row(f"idle, {idle['window_s']:g} s, the default deployment" if idle else "idle, the default deployment",
        "≤ 1 % of a core", idle_pct, None if idle_pct is None else idle_pct <= 1, ".2f", " %")
    ready = idle["ready_s"] if idle else None
    row("start to ready, default models, one worker", "≤ 5 s", ready, None if ready is None else ready <= 5,
        ".1f", " s")
    sy_run = next((r for r in res.runs if r.name == "Switchyard 1-version"), None)
    stock_run = next((r for r in res.runs if r.name == "stock BentoML max_latency_ms=1000"), None)
    rss = sy_run.peak_rss_mb / stock_run.peak_rss_mb if sy_run and stock_run and stock_run.peak_rss_mb else None
    row("peak RSS, Switchyard 1-version ÷ stock BentoML (1000 ms), both models", "≤ 1.5x", rss,
        None if rss is None else rss <= 1.5, ".2f", "x")
    bursts = [res.find(f"Switchyard {c}", sweep, 256) for c in ("1-version", "90-10", "90-10-shadow", "90-10-sticky")]
    bad = sum(b["non2xx"] + b["socket_errors"] for b in bursts if b) if any(bursts) else None
    row("bursts, 256 conns, all Switchyard configs: non-2xx and socket errors", "0", bad,
        None if bad is None else bad == 0, ".0f")
    rows += ["", "Beside the peers (earlier goals, same run):", "", "| goal | target | this run | met |",
             "|---|---|---|---|"]
    r = ratio(sy, stock)
    row("× stock BentoML (1000 ms)", "≈ 1.45x", r, at_least(r, 1.45), ".2f", "x")
    r = ratio(sy, lit[1] if lit else None)
    row(f"× LitServe ({lit[0] if lit else 'n/a'})", "≈ 1.5x", r, at_least(r, 1.5), ".2f", "x")
    r = ratio(sy, res.find("Switchyard 90-10-2threads", sweep, 64))
    row("90/10: two one-thread batches in flight (the default) ÷ one two-thread batch", "> 1x", r,
        None if r is None else r > 1, ".2f", "x")
    overhead = 1 - sy["rps"] / one["rps"] if sy and one else None
    row("routing overhead, 90/10 against one version", "≤ 5 %", None if overhead is None else overhead * 100,
        None if overhead is None else overhead <= 0.05, ".1f", " %")
    row("non-2xx at 90/10, 64 conns", "0", sy["non2xx"] if sy else None, None if not sy else sy["non2xx"] == 0, ".0f")
    return rows


def tables(res: Results) -> list[str]:
    lines = ["## In-process ceiling (rows/s, ORT + tokenizer, no HTTP)\n",
             "| workload | " + " | ".join(f"batch {b}" for b in BATCHES) + " | batch-1 p50 ms |",
             "|---|---|---|---|---|---|"]
    for name, c in res.ceilings.items():
        lines.append(f"| {name} | " + " | ".join(f"{c[b]:.0f}{'†' if c.get(f'{b}_mode') == 2 else ''}"
                                             for b in BATCHES) + f" | {c['b1_p50_ms']:.2f} |")
    lines += ["", "Each cell is the better of one batch at a time on two ORT threads and two batches at once on one "
              "thread each (†: the second was better).", ""]
    workloads = list(dict.fromkeys(load["workload"] for run in res.runs for load in run.loads))
    for name in workloads:
        best = res.best_ceiling(name)
        lines += [f"## {name}\n", "| server | conns | req/s | rows/s | ÷ ceiling | p50 ms | p90 ms | p99 ms "
                  "| non-2xx | socket errors | CPU s / 1k req | server CPU % |", "|---" * 12 + "|"]
        for run in res.runs:
            for load in (x for x in run.loads if x["workload"] == name):
                frac = f"{load['rows_per_s'] / best:.2f}" if best else "-"
                lines.append(f"| {run.name} | {load['connections']} | {load['rps']:.1f} | {load['rows_per_s']:.1f} | "
                             f"{frac} | {load['p50_ms']:.1f} | {load['p90_ms']:.1f} | {load['p99_ms']:.1f} | "
                             f"{load['non2xx']} | {load['socket_errors']} | {load['cpu_s_per_1k']:.2f} | "
                             f"{load.get('cpu_pct', 0):.0f} |")
        lines.append("")
    lines += ["## Servers\n", "| server | start to ready s | peak RSS MB |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.ready_s:.1f} | {r.peak_rss_mb:.0f} |" for r in res.runs]
    shadowed = [r for r in res.runs if r.shadow]
    if shadowed:
        lines += ["", "Shadow copies over the whole run (the service's /metrics): "
                  + "; ".join(f"{r.name}: {r.shadow['answered']:.0f} answered, {r.shadow['dropped']:.0f} dropped "
                              "(users were waiting, or the shadow queue was full)" for r in shadowed) + "."]
    return lines


def plots(res: Results, sweep: str, out_dir: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in res.runs:
        if run.name.startswith("HTTP floor"):  # an order of magnitude above the rest: in the tables
            continue
        pts = sorted((x["connections"], x["rows_per_s"]) for x in run.loads if x["workload"] == sweep)
        if len(pts) > 1:
            ax.plot(*zip(*pts, strict=True), marker="o", label=run.name)
    if res.best_ceiling(sweep):
        ax.axhline(res.best_ceiling(sweep), color="k", linestyle="--", label="in-process ceiling")
    ax.set(xscale="log", xlabel="connections", ylabel="rows/s", title=f"{sweep}: throughput against concurrency")
    ax.legend(fontsize=7)
    names.append(f"{stem}-throughput.png")
    fig.savefig(out_dir / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    conns = 64 if any(x["connections"] == 64 for r in res.runs for x in r.loads) else \
        max(x["connections"] for r in res.runs for x in r.loads)
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in res.runs:
        load = res.find(run.name, sweep, conns)
        if load and load["cdf_ms"]:
            ax.plot([ms for _, ms in load["cdf_ms"]], [p / 100 for p, _ in load["cdf_ms"]], label=run.name)
    ax.set(xscale="log", xlabel="latency ms", ylabel="fraction of requests",
           title=f"{sweep}: latency CDF, {conns} conns")
    ax.legend(fontsize=7)
    names.append(f"{stem}-latency-cdf.png")
    fig.savefig(out_dir / names[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return names


def write_report(out: Path, runs: list[ServerRun], ceilings: dict[str, dict[str, float]],
                 tags: dict[str, dict[str, str]], plan: Any, skipped: list[str], argv: list[str],
                 idle: dict[str, Any] | None = None) -> None:
    res = Results(runs, ceilings)
    out.parent.mkdir(parents=True, exist_ok=True)
    pngs = plots(res, plan.sweep, out.parent, out.stem)
    pinning = ("taskset: the server on core 0, wrk on core 1" if plan.server_cpus else
               "no taskset pinning: wrk and each server share both cores (pinning on 2 cores halves the server; "
               "`--pin` measures that way)")
    lines = [
        "# Serving benchmarks\n",
        f"One run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, made by `python bench/serving.py {' '.join(argv)}` "
        "(`make bench`). Every ratio below comes from this one run.\n",
        f"- Machine: {machine()}.",
        f"- Software: {versions()}.",
        f"- Load: wrk, {plan.seconds:g} s per point after a {plan.warmup_s:g} s warm-up per workload; "
        f"{pinning}.",
        "- Versions: " + "; ".join(f"{f}: " + ", ".join(f"{k} `{t}`" for k, t in v.items()) for f, v in tags.items()),
        "- Every server serves the same ONNX files (the naive torch server runs the PyTorch model they came "
        "from). Peers get `max_batch_size=64`; Switchyard `SWITCHYARD_MAX_BATCH_SIZE=64`.",
    ]
    if skipped:
        lines.append(f"- Not installed, skipped: {', '.join(skipped)}.")
    lines += ["- Server CPU % is the server's whole process tree over the wrk window, as a share of one core "
              "(200 % is both cores; wrk takes the rest).",
              "- Idle and start to ready: the default deployment as `make serve` runs it (one worker, each "
              "endpoint's default version), measured after the load runs (`bench/idle.py`'s measure)."
              if idle else "- Idle: not measured in this run (`--idle 0`).",
              "", "## Targets\n", *targets(res, plan.sweep, idle), "",
              *(f"![{p}]({p})" for p in pngs), "", *tables(res)]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"ceilings": ceilings, "idle": idle,
                                                    "runs": [asdict(r) for r in runs]},
                                                   indent=1))
    print("\n".join(lines))


def replot(results: Path, sweep: str = "embed-one") -> list[str]:
    """Redraw the plots from a run's JSON (the report's numbers stay as they were)."""
    data = json.loads(results.read_text())
    runs = [ServerRun(r["name"], r["ready_s"], r["peak_rss_mb"], r["loads"], r.get("shadow", {})) for r in data["runs"]]
    return plots(Results(runs, data["ceilings"]), sweep, results.parent, results.stem)


if __name__ == "__main__":
    import sys

    print(replot(Path(sys.argv[1])))
