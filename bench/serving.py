"""Serving benchmark: Switchyard against its peers on the same ONNX files, in one run.

Servers: the in-process ceiling (no HTTP), the HTTP floor (no model), a naive FastAPI
server on torch eager and on ORT, stock BentoML `batchable` at two latency budgets,
LitServe at two batch timeouts, and Switchyard (one version, 90/10, 90/10 with shadow,
90/10 sticky). Load comes from Debian's wrk with post.lua. Needs the default models in the
store (`make models`). Writes docs/benchmarks.md, its plots, and bench/results/serving.json.

    python bench/serving.py            # the full run (`make bench`), about 15 minutes
    python bench/serving.py --smoke    # seconds per server, for `make test`
    python bench/serving.py --baseline 2bb6924 --servers "" --configs 1-version,90-10 \
        --workloads embed-one,digits-one --connections 64 --out docs/benchmarks-baseline.md
                                       # the same Switchyard configs at an earlier commit too, in one run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.harness import ServerRun, baseline_tree, rss_mb, settle, wrk  # noqa: E402
from bench.idle import measure as idle_measure  # noqa: E402
from bench.peers import PEERS, Peer, start_peer, stop_peer  # noqa: E402
from bench.report import write_report  # noqa: E402
from bentos.dataplane.catalog import list_versions  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402

ONE_SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank today"
TOKEN = "bench-token-0123456789"


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
        # 16 texts of up to 60 words take about 0.15 s of model time: 4 connections keep the
        # latency well inside a point's duration (at 64, few requests would finish in time).
        "embed-16rows": {"endpoint": "minilm", "rows": 16, "conns": [4],
                         "bodies": [json.dumps({"texts": mixed[i:i + 16]}) for i in range(0, 160, 16)],
                         "ceiling_items": mixed},
        "digits-one": {"endpoint": "digits", "rows": 1, "bodies": [json.dumps({"inputs": [r]}) for r in rows],
                       "ceiling_items": rows},
        "digits-32rows": {"endpoint": "digits", "rows": 32,
                          "bodies": [json.dumps({"inputs": rows[i:i + 32]}) for i in range(0, 288, 32)],
                          "ceiling_items": rows},
    }


PATHS = {"minilm": "/v1/minilm/embed", "digits": "/v1/digits/predict"}
CONFIGS = ("1-version", "90-10", "90-10-shadow", "90-10-sticky", "90-10-2threads")
# Settings beyond the defaults: 90-10-2threads is one batch at a time on two ORT threads (the default
# before two one-thread batches in flight), to show what that choice is worth.
CONFIG_SETTINGS = {"90-10-2threads": {"threads": "2", "batches_in_flight": "1"}}


def pick_versions(family: str) -> dict[str, str]:
    """stable: the default serving variant; canary and shadow: other versions of the family."""
    stored = sorted(list_versions(selector=family), key=lambda v: v["created"])
    by_variant = {v["labels"]["variant"]: v["tag"] for v in stored}
    order = ["int8-static", "int8-dynamic", "fp32"] if family == "minilm" else ["int8-dynamic", "fp32", "int8-static"]
    found = [by_variant[v] for v in order if v in by_variant]
    if not found:
        raise SystemExit(f"no {family} models in the store: run `make models` first")
    return {"stable": found[0], "canary": found[min(1, len(found) - 1)], "shadow": found[min(2, len(found) - 1)]}


def _rate(models: list[Any], batches: list[list[Any]], seconds: float) -> tuple[float, list[float]]:
    """Rows/s with one stream per model object, each on its own thread, and the latencies of the first."""
    import threading

    counts, times = [0] * len(models), []
    stop = time.perf_counter() + seconds

    def stream(i: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            models[i].run(batches[(n + 32 * i) % 64])
            if i == 0:
                times.append(time.perf_counter() - t0)
            n += 1
        counts[i] = n

    start = time.perf_counter()
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) * len(batches[0]) / (time.perf_counter() - start), times


def ceiling(tag: str, items: list[Any], seconds: float, batches: tuple[int, ...] = (1, 8, 32, 64)) -> dict[str, float]:
    """In-process ORT rows/s with tokenizer and pooling, no HTTP, at the better of the two ways to use the
    2 cores: one batch at a time on two intra-op threads, or two batches at once on one thread each (what
    Switchyard does by default; measuring only the first would let a server beat its "ceiling").
    Plus the batch-1 p50 latency in ms, single stream, the better thread count."""
    from bench.servers.common import load_stored

    two_threads, one_thread = load_stored(tag, threads=2), load_stored(tag, threads=1)
    out: dict[str, float] = {}
    for batch in batches:
        batches_ = [[items[(i * batch + j) % len(items)] for j in range(batch)] for i in range(64)]
        two_threads.run(batches_[0])
        one_thread.run(batches_[0])
        single, single_times = _rate([two_threads], batches_, seconds)
        paired, _ = _rate([one_thread, one_thread], batches_, seconds)
        out[str(batch)] = max(single, paired)
        out[f"{batch}_mode"] = 1.0 if single >= paired else 2.0  # 1: one 2-thread batch; 2: two 1-thread batches
        if batch == 1:
            _, alone = _rate([one_thread], batches_, seconds)
            p50 = sorted(single_times)[len(single_times) // 2]
            out["b1_p50_ms"] = min(p50, sorted(alone)[len(alone) // 2]) * 1000
    return out


def admin_put(url: str, endpoint: str, versions: list[tuple[str, str, int]], sticky: bool) -> None:
    body = {"versions": [{"tag": t, "role": r, "weight": w} for t, r, w in versions], "reason": "benchmark",
            "sticky": sticky}
    r = httpx.put(f"{url}/v1/admin/deployments/{endpoint}", json=body,
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    r.raise_for_status()


def split_for(config: str, v: dict[str, str]) -> list[tuple[str, str, int]]:
    if config == "1-version":
        return [(v["stable"], "stable", 100)]
    split = [(v["stable"], "stable", 90), (v["canary"], "canary", 10)]
    if config == "90-10-shadow":
        split.append((v["shadow"], "shadow", 0))
    return split


def run_switchyard(config: str, versions: dict[str, dict[str, str]], plan: Plan, state: Path,
                   code: Path = ROOT, label: str = "", repeats: int = 0) -> ServerRun:
    """`repeats`: more rounds of the sweep workload at 64 connections, for the spread of the headline row."""
    env = serve_env(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), state / f"{config}{label}",
                    admin_token=TOKEN, max_batch_size="64",
                    default_models=json.dumps({f: v["stable"] for f, v in versions.items()}),
                    **CONFIG_SETTINGS.get(config, {}))
    if code != ROOT:  # that commit's packages, not the installed (editable) ones
        env["PYTHONPATH"] = str(code)
    start = time.monotonic()
    server = Served(env, log_dir=state, cpu_list=plan.server_cpus, cwd=code)
    run = ServerRun(f"Switchyard{label} {config}")
    try:
        server.wait_ready()
        run.ready_s = time.monotonic() - start
        for family, v in versions.items():
            split = split_for(config, v)
            if len({t for t, _, _ in split}) < len(split):
                raise SystemExit(f"{config} needs {len(split)} distinct {family} versions in the store: {v}")
            admin_put(server.url, family, split, sticky=config.endswith("sticky"))
        time.sleep(1)
        run.loads = measure(server.url, server.proc.pid, plan, run, sticky=config.endswith("sticky"))
        w = plan.loads.get(plan.sweep)
        for _ in range(repeats if w else 0):
            settle(server.proc.pid, timeout=plan.settle_s)
            again = wrk(server.url + PATHS[w["endpoint"]], w["bodies"], 64, plan.seconds, server.proc.pid, w["rows"],
                        cpus=plan.wrk_cpus)
            run.repeats.append(again.rows_per_s)
        if config.endswith("shadow"):
            run.shadow = shadow_counts(server.url)
    finally:
        server.kill()
    return run


def shadow_counts(url: str) -> dict[str, float]:
    """Shadow copies answered and dropped over the whole run, from the service's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"answered": 0.0, "dropped": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.name == "switchyard_requests_total" and sample.labels.get("route") == "shadow":
                out["answered"] += sample.value
            elif sample.name == "switchyard_shadow_dropped_total":
                out["dropped"] += sample.value
    return out


def run_peer(key: str, peer: Peer, tags: dict[str, str], plan: Plan, state: Path) -> ServerRun:
    start = time.monotonic()
    proc, url = start_peer(peer, tags, state, plan.server_cpus)
    run = ServerRun(peer.name)
    try:
        run.ready_s = time.monotonic() - start
        run.loads = measure(url, proc.pid, plan, run)
    finally:
        stop_peer(proc)
    return run


class Plan:
    """Which workloads at which connection counts, for how long, and where wrk and servers run."""

    def __init__(self, loads: dict[str, dict[str, Any]], sweep: str, conns: list[int], other_conns: list[int],
                 seconds: float, warmup_s: float, pin: bool, settle_s: float = 60.0) -> None:
        self.loads, self.sweep, self.conns, self.other_conns = loads, sweep, conns, other_conns
        self.seconds, self.warmup_s = seconds, warmup_s
        # How long to wait for a server to go idle before each point. LitServe never does (its loop polls, about
        # 10 % of a core): a smoke run, which measures nothing, waited 60 s at each of its points for that.
        self.settle_s = settle_s
        # Two cores: the server gets core 0, wrk core 1, when pinned.
        self.server_cpus, self.wrk_cpus = ("0", "1") if pin else (None, None)

    def points(self) -> list[tuple[str, list[int]]]:
        return [(name, self.conns if name == self.sweep else self.loads[name].get("conns", self.other_conns))
                for name in self.loads]


def measure(url: str, pid: int, plan: Plan, run: ServerRun, sticky: bool = False) -> list[Any]:
    results = []
    for name, conns in plan.points():
        w = plan.loads[name]
        target = url + PATHS[w["endpoint"]]
        if plan.warmup_s:
            wrk(target, w["bodies"], 16, plan.warmup_s, pid, w["rows"], sticky=sticky, cpus=plan.wrk_cpus)
        for c in conns:
            settle(pid, timeout=plan.settle_s)
            load = wrk(target, w["bodies"], c, plan.seconds, pid, w["rows"], sticky=sticky, cpus=plan.wrk_cpus)
            results.append({"workload": name, **asdict(load)})
            run.peak_rss_mb = max(run.peak_rss_mb, rss_mb(pid))
            print(f"  {run.name:<40} {name:<14} c={c:<4} {load.rps:8.1f} req/s {load.rows_per_s:8.1f} rows/s "
                  f"p50 {load.p50_ms:7.1f} p99 {load.p99_ms:7.1f} ms non-2xx {load.non2xx}", flush=True)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long runs of one server of each kind on two workloads (for make test)")
    parser.add_argument("--seconds", type=float, default=6.0, help="wrk duration per point")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up per workload")
    parser.add_argument("--connections", default="1,16,64,256", help="the sweep on --sweep's workload")
    parser.add_argument("--other-connections", default="64", help="connections for the other workloads")
    parser.add_argument("--sweep", default="embed-one")
    parser.add_argument("--workloads", default="embed-one,embed-mixed,embed-16rows,digits-one,digits-32rows")
    parser.add_argument("--servers", default=",".join(PEERS), help=f"peers: {', '.join(PEERS)}")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="Switchyard configurations")
    parser.add_argument("--versions", type=json.loads, default=None,
                        help='JSON {"minilm": {"stable": tag, "canary": tag, "shadow": tag}, ...}; '
                             "default: picked from the store")
    parser.add_argument("--pin", action="store_true", help="taskset: server on core 0, wrk on core 1")
    parser.add_argument("--baseline", metavar="REV", help="also run the Switchyard configs at this git commit")
    parser.add_argument("--repeats", type=int, default=2,
                        help="more rounds of Switchyard 90-10 on the sweep workload at 64 conns (its spread)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of idle CPU measured on the default deployment (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.warmup, args.connections, args.other_connections = 1.0, 0.0, "4", "4"
        # One server of each kind (each start costs 15-60 s): the harness code is the same at every setting.
        args.workloads, args.sweep, args.configs = "embed-one,digits-one", "embed-one", "90-10"
        args.servers = "floor,naive-torch,naive-ort,stock-100,litserve-0"
        args.repeats, args.idle = 1, 0.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    all_loads = workloads()
    loads = {k: all_loads[k] for k in args.workloads.split(",")}
    families = sorted({w["endpoint"] for w in loads.values()})
    versions = args.versions or {f: pick_versions(f) for f in families}
    plan = Plan(loads, args.sweep, [int(c) for c in args.connections.split(",")],
                [int(c) for c in args.other_connections.split(",")], args.seconds, args.warmup, args.pin,
                settle_s=5.0 if args.smoke else 60.0)
    ceilings = {name: ceiling(versions[w["endpoint"]]["stable"], w["ceiling_items"], 0.5 if args.smoke else 3.0)
                for name, w in loads.items() if w["rows"] == 1}
    state = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    stable = {f: v["stable"] for f, v in versions.items()}
    runs, skipped = [], []
    for key in [k for k in args.servers.split(",") if k]:
        peer = PEERS[key]
        if not peer.installed():
            skipped.append(f"{peer.name} ({peer.needs} not installed)")
            continue
        runs.append(run_peer(key, peer, stable, plan, state))
    configs = [c for c in args.configs.split(",") if c]
    baseline = baseline_tree(args.baseline, state) if args.baseline else None
    try:
        for config in configs:  # interleaved, so that drift in the machine hits both alike
            runs.append(run_switchyard(config, versions, plan, state, repeats=args.repeats if config == "90-10" else 0))
            if baseline is not None:
                runs.append(run_switchyard(config, versions, plan, state, baseline, f"@{args.baseline}"))
    finally:
        if baseline is not None:
            import subprocess

            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False)
    # The default deployment as `make serve` runs it: idle CPU, start to ready, peak RSS.
    idle = idle_measure(ROOT, state / "idle", args.idle, 10.0) if args.idle else None
    write_report(args.out, runs, ceilings, versions, plan, skipped, sys.argv[1:] if argv is None else argv, idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
