"""Where a request's CPU goes: py-spy samples of the service under wrk load, sorted into layers.

The service runs as in the serving benchmark (one worker, the default models at 100 %), wrk
loads one workload at 64 connections, and py-spy samples every process of the service (the
BentoML supervisor and its worker) at 100 Hz for the window. Each sample is charged to the
innermost frame that belongs to a known layer; the table is each layer's share of the samples,
and, with the server's CPU per request measured in the same window, its CPU per request.

    python bench/layer_profile.py                  # embed-one and digits-one; writes docs/benchmarks-profile.md
    python bench/layer_profile.py --flame          # also an SVG flame graph per workload in docs/
    python bench/layer_profile.py --access-log --without-fast-lane   # what BentoML's access log and middleware cost
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import settle, wrk  # noqa: E402
from bench.serving import PATHS, TOKEN, workloads  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402

# Innermost match wins: (layer, substrings of a frame "function (file:line)").
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ORT inference", ("onnxruntime",)),
    ("tokenization", ("tokenizers", "text.py:5")),
    ("JSON and validation", ("orjson", "json/", "pydantic", "bentos/api/app.py:parse", "decoder.py")),
    ("metrics", ("prometheus_client", "bentos/dataplane/metrics", "dataplane/stats")),
    ("batching", ("bentos/dataplane/batching",)),
    ("routing", ("bentos/dataplane/routing", "bentos/dataplane/endpoint", "bentos/dataplane/cache")),
    ("task codec (pre/post-processing)", ("bentos/tasks/",)),
    ("Switchyard HTTP layer", ("bentos/api/",)),
    ("BentoML access log", ("http/access.py", "logging/__init__.py", "bentoml/_internal/log.py")),
    ("OpenTelemetry middleware", ("opentelemetry",)),
    ("BentoML metrics middleware", ("http/instruments.py",)),
    ("other BentoML and Starlette middleware", ("_bentoml_impl", "bentoml/", "starlette", "fastapi")),
    ("HTTP parsing and sockets (uvicorn)", ("uvicorn", "httptools", "h11")),
    ("event loop", ("asyncio", "uvloop", "concurrent/futures", "threading.py")),
]


def py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # installed with the dev extra
    return str(beside) if beside.exists() else "py-spy"


def layer_of(stack: str) -> str:
    # py-spy's first frames name the process and thread: "process 123:\"... _bentoml_impl.worker ...\"" would
    # otherwise charge a native thread's samples (ORT's own pool) to BentoML.
    frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
    for frame in reversed(frames):
        for name, needles in LAYERS:
            if any(n in frame for n in needles):
                return name
    return "other"


def profile(workload: str, seconds: float, flame: bool, state: Path, access_log: bool,
            fast_lane: bool = True) -> dict[str, object]:
    w = workloads()[workload]
    env = serve_env(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), state / workload,
                    admin_token=TOKEN, max_batch_size="64", fast_lane=str(fast_lane).lower())
    if access_log:  # BentoML's per-request access log, off in service.py: what it costs
        env["BENTOML_CONFIG_OPTIONS"] = "services.switchyard.logging.access.enabled=true"
    server = Served(env, log_dir=state)
    try:
        server.wait_ready()
        target = server.url + PATHS[w["endpoint"]]
        wrk(target, w["bodies"], 16, 3, server.proc.pid, w["rows"])  # warm-up
        settle(server.proc.pid)
        raw = state / f"{workload}.txt"
        spy = [py_spy(), "record", "--pid", str(server.proc.pid), "--subprocesses", "--rate", "100",
               "--duration", str(int(seconds)), "--format", "raw", "--output", str(raw), "--nonblocking"]
        sampler = threading.Thread(target=subprocess.run, args=(spy,), kwargs={"capture_output": True})
        sampler.start()
        load = wrk(target, w["bodies"], 64, seconds, server.proc.pid, w["rows"])
        sampler.join()
        if flame:
            svg = ROOT / "docs" / f"benchmarks-profile-{workload}.svg"
            subprocess.run([*spy[:-4], "--format", "flamegraph", "--output", str(svg), "--native", "--duration", "8"],
                           capture_output=True, check=False)
    finally:
        server.kill()
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[layer_of(stack)] += int(n)
    total = sum(counts.values()) or 1
    cpu_ms = load.cpu_s_per_1k  # server CPU seconds per 1,000 requests = ms per request
    name = workload + (" with BentoML's access log on" if access_log else "") + \
        ("" if fast_lane else " through BentoML's middleware (SWITCHYARD_FAST_LANE=false)")
    return {"workload": name, "rps": round(load.rps, 1), "cpu_ms_per_request": round(cpu_ms, 3),
            "samples": total, "layers": {k: round(v / total, 4) for k, v in counts.most_common()}}


def report(results: list[dict[str, object]], command: str) -> str:
    lines = ["# Where a request's CPU goes\n",
             f"One run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, made by `{command}`: py-spy at 100 Hz over every "
             "process of the service (one worker, the default models at 100 %) while wrk loads it at 64 "
             "connections on the same 2 cores. A sample is charged to the innermost frame of a known layer "
             "(`bench/layer_profile.py`, LAYERS); ms per request is the layer's share of the server's CPU per "
             "request, measured in the same window. By default Switchyard's requests take the fast lane, "
             "around BentoML's middleware (docs/how-serving-works.md); the sections marked "
             "`SWITCHYARD_FAST_LANE=false` go through it, as do those with the access log on (the lane steps "
             "aside for it). Samples without a Python frame (native threads, ORT's own) count as \"other\".\n"]
    for r in results:
        layers = r["layers"]
        assert isinstance(layers, dict)
        lines += [f"## {r['workload']}: {r['rps']} req/s, {r['cpu_ms_per_request']} ms of server CPU per request "
                  f"({r['samples']} samples)\n", "| layer | share of samples | ms per request |", "|---|---|---|"]
        for name, share in layers.items():
            lines.append(f"| {name} | {100 * share:.1f} % | {share * float(r['cpu_ms_per_request']):.3f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="embed-one,digits-one")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--flame", action="store_true", help="also write a --native flame graph per workload")
    parser.add_argument("--access-log", action="store_true", help="also profile each workload with BentoML's "
                        "access log turned on (it is off by default)")
    parser.add_argument("--without-fast-lane", action="store_true", help="also profile each workload with "
                        "SWITCHYARD_FAST_LANE=false: what BentoML's middleware chain costs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-profile.md")
    args = parser.parse_args(argv)
    state = Path(tempfile.mkdtemp(prefix="switchyard-profile-"))
    results = [profile(w, args.seconds, args.flame, state, False) for w in args.workloads.split(",")]
    if args.access_log:
        results += [profile(w, args.seconds, False, state, True) for w in args.workloads.split(",")]
    if args.without_fast_lane:
        results += [profile(w, args.seconds, False, state, False, fast_lane=False) for w in args.workloads.split(",")]
    command = "python bench/layer_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "profile.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results, command.strip())
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
