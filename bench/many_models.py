"""Many models on one machine: 40 endpoints, each its own small model, under a memory budget.

Each model is an MLP graph written with onnx.helper: x[batch, 64] -> MatMul (64 x hidden) -> Relu ->
MatMul (hidden x 4) -> y[batch, 4], with weights drawn from its own seed, so every endpoint answers
differently and an answer shows which model gave it. Registered the way an imported model is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import rss_mb, wrk  # noqa: E402
from bentos.controlplane.store import SQLiteControlPlane  # noqa: E402
from models.registry import register_file  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402

INPUTS, OUTPUTS = 64, 4


def weights(seed: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((INPUTS, hidden), dtype=np.float32) / 8,
            rng.standard_normal((hidden, OUTPUTS), dtype=np.float32) / np.sqrt(hidden).astype(np.float32))


def expected(seed: int, hidden: int, x: np.ndarray) -> np.ndarray:
    """What model `seed` answers for `x`: the test's own arithmetic, not the server's."""
    w1, w2 = weights(seed, hidden)
    out: np.ndarray = np.maximum(x @ w1, 0) @ w2
    return out


def mlp_graph(dest: Path, seed: int, hidden: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, w2 = weights(seed, hidden)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", INPUTS])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUTPUTS])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, f"mlp{seed}", [x], [y],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"mlp-{seed}.onnx"
    onnx.save(model, str(path))
    return path


def register_many(n: int, work: Path, hidden: int = 4096, prefix: str = "tenant") -> dict[str, str]:
    """`n` models, endpoint name -> tag: tenant-0 ... tenant-{n-1}."""
    tags = {}
    for i in range(n):
        path = mlp_graph(work, i, hidden)
        tags[f"{prefix}-{i}"] = register_file(f"{prefix}-{i}", path, task="tensor", preprocess={})
        path.unlink()
    return tags


# --- the benchmark ------------------------------------------------------------------------------
# python bench/many_models.py   writes bench/results/many_models.json and docs/benchmarks-many-models.md
SIZES = {"0.5 MB": 2048, "4.3 MB": 16384, "17 MB": 65536}  # graph files of the cold-start models (hidden width)
ZIPF_S = 1.1


def zipf_paths(n: int, count: int, seed: int = 0) -> list[str]:
    """`count` endpoint names drawn from Zipf(ZIPF_S) over n ranks: rank k with probability ~ 1/k^s."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n + 1) ** ZIPF_S
    return [f"tenant-{k}" for k in rng.choice(n, size=count, p=p / p.sum())]


def main() -> None:
    root = ROOT
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per budget")
    parser.add_argument("--warmup", type=float, default=10.0, help="load before each measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--endpoints", type=int, default=40)
    parser.add_argument("--min-resident-s", type=float, default=None,
                        help="SWITCHYARD_MIN_RESIDENT_S for the runs with a budget (default: the service's)")
    parser.add_argument("--out", type=Path, default=root / "bench" / "results" / "many_models.json")
    parser.add_argument("--doc", type=Path, default=root / "docs" / "benchmarks-many-models.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="switchyard-many-"))
    os.environ["BENTOML_HOME"] = str(work / "bentoml")
    os.environ["SWITCHYARD_SIGNING_KEY_FILE"] = str(work / "signing.key")
    tags = register_many(args.endpoints, work / "graphs", 8192)
    sized = {label: register_many(1, work / "graphs", hidden, prefix=f"size{hidden}")[f"size{hidden}-0"]
             for label, hidden in SIZES.items()}
    state = work / "state"
    state.mkdir()
    (state / "switchyard.yaml").write_text("endpoints: []\n")
    body = json.dumps({"inputs": {"x": np.ones((1, INPUTS), np.float32).tolist()}})
    lines = [f"/v1/{name}/infer\t{body}" for name in zipf_paths(args.endpoints, 20_000)]
    runs: list[dict[str, Any]] = []
    cold: dict[str, Any] = {}
    for budget, guard in ((args.endpoints, None), (8, args.min_resident_s), (4, args.min_resident_s), (8, 1.0)):
        run, cold_here = _one_budget(state, tags, sized, budget, lines, args, first=budget == args.endpoints,
                                     guard=guard)
        runs.append(run)
        cold = cold or cold_here
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv),
              "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "endpoints": args.endpoints, "zipf_s": ZIPF_S, "connections": args.connections,
              "seconds": args.seconds, "min_resident_s": args.min_resident_s, "cold_start": cold, "budgets": runs}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.doc.write_text(report(result))
    print(report(result))


def _one_budget(state: Path, tags: dict[str, str], sized: dict[str, str], budget: int,
                lines: list[str], args: Any, first: bool,
                guard: float | None) -> tuple[dict[str, Any], dict[str, Any]]:
    token = "bench-admin-token-0123"
    auth = {"Authorization": f"Bearer {token}"}
    settings = {"admin_token": token, "config": str(state / "switchyard.yaml"), "grpc_port": "false"}
    if not first:  # the sizes the first run measured, stored in the control plane: room for `budget` of them
        sizes, _ = SQLiteControlPlane(state / "control.db").residency()
        largest = max(sizes[t] for t in tags.values())
        settings["model_memory"] = str(budget * largest + largest // 2)
        if guard is not None:
            settings["min_resident_s"] = str(guard)
    env = serve_env(Path(os.environ["BENTOML_HOME"]), state, **settings)
    server = Served(env, log_dir=state, cpu_list="0")
    cold: dict[str, Any] = {}
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=120) as c:
            if first:
                for name, tag in [*tags.items(), *[(f"size-{i}", t) for i, t in enumerate(sized.values())]]:
                    r = c.post("/v1/admin/endpoints", json={"name": name, "task": "tensor", "model": tag,
                                                            "residency": "on-demand", "reason": "bench"}, headers=auth)
                    r.raise_for_status()
                cold = _cold_starts(c, sized)
        wrk(f"{server.url}/", lines, args.connections, args.warmup, server.proc.pid, 1, cpus="1", script="paths.lua")
        before = _counters(server.url)
        start = time.monotonic()
        load = wrk(f"{server.url}/", lines, args.connections, args.seconds, server.proc.pid, 1, cpus="1",
                   script="paths.lua")
        after = _counters(server.url)
        loads = after["loads"] - before["loads"]
        return {"budget_versions": budget, "model_memory": settings.get("model_memory"),
                "min_resident_s": settings.get("min_resident_s", "default"),
                "rps": round(load.rps, 1), "p50_ms": round(load.p50_ms, 2), "p99_ms": round(load.p99_ms, 2),
                "non2xx": load.non2xx, "socket_errors": load.socket_errors, "requests": load.requests,
                "loads": int(loads), "hit_rate": round(1 - loads / max(1, load.requests), 4),
                "resident_versions": int(after["resident"]), "model_bytes": int(after["bytes"]),
                "rss_mb": round(rss_mb(server.proc.pid), 1), "window_s": round(time.monotonic() - start, 1)}, cold
    finally:
        server.kill()


def _cold_starts(c: Any, sized: dict[str, str]) -> dict[str, Any]:
    """First request to 200 on a cold version, and the warm p50 after it, per graph size."""
    body = {"inputs": {"x": np.ones((1, INPUTS), np.float32).tolist()}}
    out = {}
    for i, label in enumerate(sized):
        start = time.monotonic()
        c.post(f"/v1/size-{i}/infer", json=body).raise_for_status()
        first = time.monotonic() - start
        warm = []
        for _ in range(50):
            t = time.monotonic()
            c.post(f"/v1/size-{i}/infer", json=body).raise_for_status()
            warm.append(time.monotonic() - t)
        out[label] = {"first_request_ms": round(first * 1000, 1),
                      "warm_p50_ms": round(float(np.median(warm)) * 1000, 2)}
    return out


def _counters(url: str) -> dict[str, float]:
    totals = {"loads": 0.0, "resident": 0.0, "bytes": 0.0}
    names = {"switchyard_model_loads_total": "loads", "switchyard_resident_versions": "resident",
             "switchyard_resident_total_bytes": "bytes"}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name in names:
                totals[names[sample.name]] += sample.value
    return totals


def report(result: dict[str, Any]) -> str:
    runs = result["budgets"]
    full = runs[0]
    lines = [
        "# Many models on one machine\n",
        f"One run, {result['when']}, made by `{result['command']}`. Every number below comes from it.\n",
        f"- Machine: {result['machine']['cores']} cores, Python {result['machine']['python']}; the server (one "
        "worker) pinned to core 0, wrk to core 1.",
        f"- {result['endpoints']} endpoints, each its own 2.2 MB MLP graph (`bench/many_models.py`), all "
        "`residency: on-demand`; requests drawn from Zipf("
        f"{result['zipf_s']}) over them, {result['connections']} connections, {result['seconds']:g} s per budget "
        "after a warm-up.",
        "- A budget of N holds N of the largest measured versions (SWITCHYARD_MODEL_MEMORY = N x the largest + "
        "half of one); the first run has no budget, so all 40 stay loaded. The last row turns the thrash guard "
        "on (1 s).",
        "- Hit rate: 1 - loads / requests (requests that waited for the same load share it).\n",
        "| versions the budget holds | SWITCHYARD_MIN_RESIDENT_S | requests/s | vs all loaded | p50 ms | p99 ms "
        "| non-2xx | hit rate | loads | models MiB | worker RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(f"| {r['budget_versions']} | {r.get('min_resident_s', 'default')} | {r['rps']:.0f} | "
                     f"{r['rps'] / full['rps']:.2f}x | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['non2xx']} | {100 * r['hit_rate']:.2f} % | {r['loads']} | "
                     f"{r['model_bytes'] / 2**20:.1f} | {r['rss_mb']} |")
    eight = next(r for r in runs if r["budget_versions"] == 8)
    lines += ["", "## The goal\n",
              f"At a budget of 8 the issue asks for at least 0.8x the requests/s of all 40 loaded, at under a third "
              f"of the memory. This run: {eight['rps'] / full['rps']:.2f}x the requests/s, at "
              f"{eight['model_bytes'] / max(1, full['model_bytes']):.2f} of the model memory "
              f"({eight['rss_mb'] / full['rss_mb']:.2f} of the worker's whole RSS). The memory goal is met; the "
              "throughput goal is not. Under Zipf(1.1) over 40 endpoints, 8 resident versions answer "
              f"{100 * eight['hit_rate']:.0f} % of requests; every other request pays a load (verify the graph's "
              "hashes, create the ONNX Runtime session, warm it) on the same core that answers everyone else: "
              f"{eight['loads']} loads in {eight['window_s']:g} s here. Meeting it on this load needs loads much "
              "cheaper than these, or a hit rate close to 100 %, which Zipf(1.1) over 40 gives only with most "
              "of them resident."]
    lines += ["", "## Cold start\n", "| graph file | first request ms (load, warm-up, answer) | warm p50 ms |",
              "|---|---:|---:|"]
    for label, c in result["cold_start"].items():
        lines.append(f"| {label} | {c['first_request_ms']} | {c['warm_p50_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
