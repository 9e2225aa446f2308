"""Serving benchmark: Switchyard against stock BentoML and the in-process ceiling, one run.

Needs the default models in the store (`make models`) and Debian's wrk. Every server
serves the same ONNX file; wrk and the server share the machine's cores (no pinning:
with 2 cores, pinning would halve the server). Writes docs/benchmarks.md and a JSON
copy under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.harness import ServerRun, rss_mb, wait_http, wrk  # noqa: E402
from bentos.catalog import list_versions  # noqa: E402
from tests.servers import Served, free_port, serve_env  # noqa: E402

ONE_SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank today"
TOKEN = "bench-token"


def sentences() -> list[str]:
    return [s.strip() for s in (ROOT / "models" / "data" / "minilm_eval.txt").read_text().splitlines() if s.strip()]


def mixed_texts(n: int = 200, seed: int = 0) -> list[str]:
    """Sentences of 3 to 60 words, built from the evaluation set."""
    rnd, words = random.Random(seed), " ".join(sentences()).split()
    out = []
    for _ in range(n):
        k = rnd.randint(3, 60)
        start = rnd.randrange(0, len(words) - k)
        out.append(" ".join(words[start:start + k]))
    return out


def digits_rows() -> list[list[float]]:
    from sklearn.datasets import load_digits

    return load_digits().data[:300].tolist()


def workloads() -> dict[str, dict[str, Any]]:
    rows, mixed = digits_rows(), mixed_texts()
    return {
        "embed-one": {"endpoint": "minilm", "rows": 1, "bodies": [json.dumps({"texts": [ONE_SENTENCE]})],
                      "ceiling_items": [ONE_SENTENCE]},
        "embed-mixed": {"endpoint": "minilm", "rows": 1, "bodies": [json.dumps({"texts": [t]}) for t in mixed],
                        "ceiling_items": mixed},
        "embed-16rows": {"endpoint": "minilm", "rows": 16,
                         "bodies": [json.dumps({"texts": mixed[i:i + 16]}) for i in range(0, 160, 16)],
                         "ceiling_items": mixed},
        "digits-one": {"endpoint": "digits", "rows": 1, "bodies": [json.dumps({"inputs": [r]}) for r in rows],
                       "ceiling_items": rows},
        "digits-32rows": {"endpoint": "digits", "rows": 32,
                          "bodies": [json.dumps({"inputs": rows[i:i + 32]}) for i in range(0, 288, 32)],
                          "ceiling_items": rows},
    }


PATHS = {"minilm": "/v1/minilm/embed", "digits": "/v1/digits/predict"}


def pick_versions(family: str) -> dict[str, str]:
    """stable: the default serving variant; canary and shadow: other versions of the family."""
    by_variant = {v["labels"]["variant"]: v["tag"] for v in sorted(list_versions(family), key=lambda v: v["created"])}
    order = ["int8-static", "int8-dynamic", "fp32"] if family == "minilm" else ["int8-dynamic", "fp32", "int8-static"]
    found = [by_variant[v] for v in order if v in by_variant]
    if not found:
        raise SystemExit(f"no {family} models in the store: run `make models` first")
    return {"stable": found[0], "canary": found[min(1, len(found) - 1)], "shadow": found[min(2, len(found) - 1)]}


def ceiling(tag: str, items: list[Any], seconds: float, batches: tuple[int, ...] = (1, 8, 32, 64)) -> dict[str, float]:
    """In-process ORT rows/s with tokenizer and pooling, no HTTP."""
    import bentoml

    from bentos.families import codec_for
    from bentos.runtime import load_session

    model = bentoml.models.get(tag)
    root = Path(model.path)
    codec = codec_for(model.info.labels["family"], root, model.info.metadata.get("preprocess", {}))
    session = load_session(root / "model.onnx", threads=2)
    out = {}
    for batch in batches:
        feeds = [items[(i * batch + j) % len(items)] for i in range(64) for j in range(batch)]
        batches_ = [feeds[i * batch:(i + 1) * batch] for i in range(64)]
        session.run(None, codec.encode(batches_[0]))
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, codec.encode(batches_[n % 64]))
            n += 1
        out[str(batch)] = n * batch / (time.perf_counter() - start)
    return out


def admin_put(url: str, endpoint: str, versions: list[tuple[str, str, int]]) -> None:
    body = {"versions": [{"tag": t, "role": r, "weight": w} for t, r, w in versions], "reason": "benchmark"}
    r = httpx.put(f"{url}/v1/admin/deployments/{endpoint}", json=body,
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    r.raise_for_status()


def run_switchyard(config: str, versions: dict[str, dict[str, str]], loads: dict[str, dict[str, Any]],
                   conns: list[int], seconds: float, state: Path) -> ServerRun:
    env = serve_env(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), state / config,
                    admin_token=TOKEN, max_batch_size="64",
                    default_models=json.dumps({f: v["stable"] for f, v in versions.items()}))
    start = time.monotonic()
    server = Served(env, log_dir=state)
    run = ServerRun(f"switchyard {config}")
    try:
        server.wait_ready()
        run.ready_s = time.monotonic() - start
        for family, v in versions.items():
            split = [(v["stable"], "stable", 100)]
            if config != "1-version":
                split = [(v["stable"], "stable", 90), (v["canary"], "canary", 10)]
            if config == "90-10-shadow":
                split.append((v["shadow"], "shadow", 0))
            if len({t for t, _, _ in split}) == len(split):
                admin_put(server.url, family, split)
        time.sleep(1)
        run.loads = measure(server.url, server.proc.pid, loads, conns, seconds, run)
    finally:
        server.kill()
    return run


def run_stock(budget_ms: int, tag: str, loads: dict[str, dict[str, Any]], conns: list[int], seconds: float,
              state: Path) -> ServerRun:
    import subprocess

    port = free_port()
    env = {**os.environ, "BENCH_MODEL_TAG": tag, "BENCH_MAX_LATENCY_MS": str(budget_ms), "BENTOML_DO_NOT_TRACK": "True"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "bench.servers.stock_bentoml:Stock",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=(state / f"stock-{budget_ms}.log").open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    run = ServerRun(f"stock BentoML max_latency_ms={budget_ms}")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        run.ready_s = time.monotonic() - start
        stock_loads = {k: {**w, "path": "/embed"} for k, w in loads.items() if w["endpoint"] == "minilm"}
        run.loads = measure(f"http://127.0.0.1:{port}", proc.pid, stock_loads, conns, seconds, run)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    return run


def measure(url: str, pid: int, loads: dict[str, dict[str, Any]], conns: list[int], seconds: float,
            run: ServerRun) -> list[Any]:
    results = []
    for name, w in loads.items():
        target = url + w.get("path", PATHS[w["endpoint"]])
        wrk(target, w["bodies"], 16, min(3.0, seconds), pid, w["rows"])  # warm-up
        for c in conns:
            load = wrk(target, w["bodies"], c, seconds, pid, w["rows"])
            results.append({"workload": name, **asdict(load)})
            run.peak_rss_mb = max(run.peak_rss_mb, rss_mb(pid))
            print(f"  {run.name:<34} {name:<14} c={c:<4} {load.rps:8.1f} req/s {load.rows_per_s:8.1f} rows/s "
                  f"p50 {load.p50_ms:7.1f} p99 {load.p99_ms:7.1f} ms non-2xx {load.non2xx}", flush=True)
    return results


def report(runs: list[ServerRun], ceilings: dict[str, dict[str, float]], args: argparse.Namespace,
           versions: dict[str, dict[str, str]]) -> str:
    lines = [f"# Serving benchmarks\n\nOne run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}. wrk and the servers share the cores (no taskset pinning: "
             f"with 2 cores it would halve the server). {args.seconds:g} s per point after a warm-up.\n",
             f"Command: `python bench/serving.py {' '.join(sys.argv[1:])}`\n",
             "Versions: " + ", ".join(f"{f}: {', '.join(f'{k} {t}' for k, t in v.items())}"
                                      for f, v in versions.items()) + "\n",
             "## In-process ceiling (rows/s, ORT + tokenizer, no HTTP)\n",
             "| workload | " + " | ".join(f"batch {b}" for b in ("1", "8", "32", "64")) + " |", "|---|---|---|---|---|"]
    for name, c in ceilings.items():
        lines.append(f"| {name} | " + " | ".join(f"{c[b]:.0f}" for b in ("1", "8", "32", "64")) + " |")
    lines.append("")
    by_workload: dict[str, list[tuple[ServerRun, dict[str, Any]]]] = {}
    for run in runs:
        for load in run.loads:
            by_workload.setdefault(load["workload"], []).append((run, load))
    for name, rows in by_workload.items():
        best = max(ceilings.get(name, {"-": 0}).values())
        lines += [f"## {name}\n", "| server | conns | req/s | rows/s | rows/s ÷ ceiling | p50 ms | p90 ms | p99 ms "
                  "| non-2xx | CPU s / 1k req |", "|---|---|---|---|---|---|---|---|---|---|"]
        for run, load in rows:
            frac = f"{load['rows_per_s'] / best:.2f}" if best else "-"
            lines.append(f"| {run.name} | {load['connections']} | {load['rps']:.1f} | {load['rows_per_s']:.1f} | "
                         f"{frac} | {load['p50_ms']:.1f} | {load['p90_ms']:.1f} | {load['p99_ms']:.1f} | "
                         f"{load['non2xx']} | {load['cpu_s_per_1k']:.2f} |")
        lines.append("")
    lines += ["## Servers\n", "| server | start to ready s | peak RSS MB |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.ready_s:.1f} | {r.peak_rss_mb:.0f} |" for r in runs]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", default="16,64,256")
    parser.add_argument("--workloads", default="embed-one,embed-mixed,embed-16rows,digits-one,digits-32rows")
    parser.add_argument("--no-stock", action="store_true", help="skip stock BentoML")
    parser.add_argument("--configs", default="1-version,90-10,90-10-shadow")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    all_loads = workloads()
    loads = {k: all_loads[k] for k in args.workloads.split(",")}
    versions = {f: pick_versions(f) for f in sorted({w["endpoint"] for w in loads.values()})}
    ceilings = {name: ceiling(versions[w["endpoint"]]["stable"], w["ceiling_items"], min(3.0, args.seconds))
                for name, w in loads.items() if w["rows"] == 1}
    state = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    runs = [run_switchyard(c, versions, loads, conns, args.seconds, state) for c in args.configs.split(",")]
    if not args.no_stock and "minilm" in versions:
        runs += [run_stock(b, versions["minilm"]["stable"], loads, conns, args.seconds, state) for b in (100, 1000)]
    text = report(runs, ceilings, args, versions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "serving.json").write_text(json.dumps({"ceilings": ceilings, "runs": [asdict(r) for r in runs]},
                                                     indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
