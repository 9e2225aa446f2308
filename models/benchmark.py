"""Benchmark stage: latency, throughput, size and peak RSS per variant, plus a report.

Each measurement runs in a fresh process, so peak RSS is that variant's alone; ORT
variants load through the serving path (bentos/) and never import torch.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.families.base import Builder
from models.workdir import ModelDir, read_json, write_json

BATCHES = (1, 8, 32, 64)
TORCH_EAGER = "torch-eager"


def _loop(run: Any, feeds: dict[int, Any], latency_iters: int, seconds: float) -> dict[str, Any]:
    run(feeds[1])  # warm-up
    lat = []
    for _ in range(latency_iters):
        start = time.perf_counter()
        run(feeds[1])
        lat.append((time.perf_counter() - start) * 1000)
    throughput = {}
    for batch, feed in feeds.items():
        run(feed)
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds:
            run(feed)
            n += 1
        throughput[str(batch)] = batch * n / (time.perf_counter() - start)
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"latency_ms": {"p50": float(p50), "p95": float(p95), "p99": float(p99), "iterations": latency_iters},
            "throughput_rows_per_s": throughput}


def _measure_ort(path: str, task: str, model_dir: str, metadata: dict[str, Any], items: dict[int, list[Any]],
                 threads: int, latency_iters: int, seconds: float) -> dict[str, Any]:
    from bentos.dataplane.runtime import load_session
    from bentos.tasks import get_task

    codec = get_task(task).codec(metadata, Path(model_dir))
    session = load_session(Path(path), threads, cpu_only=True)
    result = _loop(lambda batch: session.run(None, codec.encode(batch)), items, latency_iters, seconds)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _measure_torch(key: str, work_dir: str, items: dict[int, list[Any]], threads: int, latency_iters: int,
                   seconds: float) -> dict[str, Any]:
    import torch

    from models.families import get_builder
    from models.settings import BuildSettings

    torch.set_num_threads(threads)
    builder = get_builder(key, BuildSettings(threads=threads))
    module, codec = builder.load_torch(ModelDir(Path(work_dir), key)), builder.codec()

    def run(batch: list[Any]) -> Any:
        feed = codec.encode(batch)
        with torch.inference_mode():
            return module(*(torch.from_numpy(feed[n]) for n in builder.input_names))

    result = _loop(run, items, latency_iters, seconds)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _in_child(fn: Any, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, args)
    return result


def benchmark(builder: Builder, md: ModelDir, variant: str, latency_iters: int = 50,
              seconds: float = 1.0) -> dict[str, Any]:
    items = {b: builder.bench_items(b) for b in BATCHES}
    threads = builder.settings.threads
    if variant == TORCH_EAGER:
        result = _in_child(_measure_torch, builder.key, str(md.root), items, threads, latency_iters, seconds)
        size = (md.torch_dir / "model.pt").stat().st_size if (md.torch_dir / "model.pt").is_file() else None
    else:
        path = md.require_variant(variant)
        codec = builder.codec()
        tokenizer_dir = str(getattr(codec, "tokenizer_file", path).parent)
        metadata = {"schema": codec.schema(), "preprocess": codec.preprocess_config()}
        result = _in_child(_measure_ort, str(path), builder.task, tokenizer_dir, metadata,
                           items, threads, latency_iters, seconds)
        size = path.stat().st_size
    report = {"variant": variant, "threads": threads, "size_bytes": size, **result}
    write_json(md.variant_dir(variant) / "benchmark.json", report)
    return report


def collect(md: ModelDir) -> dict[str, dict[str, Any]]:
    found = sorted(md.base.glob("*/benchmark.json"))
    return {p.parent.name: read_json(p, "") for p in found}


def write_report(md: ModelDir) -> Path:
    """benchmark.json, benchmark.md and benchmark.png for every variant measured so far."""
    results = collect(md)
    write_json(md.base / "benchmark.json", results)
    (md.base / "benchmark.md").write_text(markdown_table(md.model, results))
    plot(md.model, results, md.base / "benchmark.png")
    return md.base / "benchmark.md"


def markdown_table(title: str, results: dict[str, dict[str, Any]]) -> str:
    batches = " | ".join(f"b{b} rows/s" for b in BATCHES)
    head = f"| variant | size MB | p50 ms | p95 ms | p99 ms | {batches} | peak RSS MB |"
    lines = [f"### {title}", "", head, "|" + "---|" * (6 + len(BATCHES))]
    for name, r in results.items():
        lat, tput = r["latency_ms"], r["throughput_rows_per_s"]
        size = f"{r['size_bytes'] / 1e6:.2f}" if r.get("size_bytes") else "-"
        cells = [name, size, f"{lat['p50']:.2f}", f"{lat['p95']:.2f}", f"{lat['p99']:.2f}",
                 *(f"{tput[str(b)]:.0f}" for b in BATCHES), f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(title: str, results: dict[str, dict[str, Any]], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.plot(BATCHES, [r["throughput_rows_per_s"][str(b)] for b in BATCHES], marker="o", label=name)
    ax.set(xscale="log", xticks=BATCHES, xlabel="batch size", ylabel="rows / s", title=f"{title}: throughput")
    ax.set_xticklabels([str(b) for b in BATCHES])
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)
