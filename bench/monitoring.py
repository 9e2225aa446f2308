"""What monitoring costs: throughput with drift sampling and the payload log on, against both off.

One worker serves digits (a version with a drift reference) and wrk loads it with one-row requests at
64 connections; each configuration runs in alternating rounds, in one run, so that a drifting machine
hits them alike. Configurations:
- off: SWITCHYARD_DRIFT_SAMPLE=0, no payload log;
- drift: the default drift sampling (5 %), no payload log;
- drift + payload log: the default drift sampling, and the payload log sampling 5 % to a temp dir.

    python bench/monitoring.py      # writes docs/benchmarks-monitoring.md and bench/results/monitoring.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import settle, wrk  # noqa: E402
from bench.serving import TOKEN  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402

ROW = json.dumps({"inputs": [[float(i % 17) for i in range(64)]]})
MODEL = "digits-mlp-int8-dynamic:latest"  # registered with a drift reference (python -m models register)


def configs(where: Path) -> dict[str, dict[str, str]]:
    payloads = json.dumps({"sample": 0.05, "dir": str(where / "payloads")})
    return {"off": {"drift_sample": "0"}, "drift": {}, "drift + payload log": {"payload_log": payloads}}


def run_once(name: str, settings: dict[str, str], state: Path, seconds: float) -> dict[str, Any]:
    env = serve_env(Path(os.environ.get("BENTOML_HOME", ROOT / ".state" / "bentoml")), state, admin_token=TOKEN,
                    default_models=json.dumps({"digits": MODEL}), **settings)
    server = Served(env, log_dir=state)
    try:
        server.wait_ready()
        watched = httpx.get(f"{server.url}/v1/admin/drift", params={"endpoint": "digits"},
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()["digits"]
        if name != "off" and not watched:
            raise SystemExit(f"{MODEL} has no drift reference: register it again (python -m models register ...)")
        settle(server.proc.pid)
        load = wrk(f"{server.url}/v1/digits/predict", [ROW], connections=64, seconds=seconds, pid=server.proc.pid,
                   rows_per_request=1)
        return {"rps": round(load.rps, 1), "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "non2xx": load.non2xx,
                "socket_errors": load.socket_errors, "cpu_ms_per_request": round(load.cpu_s_per_1k, 3)}
    finally:
        server.kill()


def report(results: dict[str, list[dict[str, Any]]], command: str, seconds: float) -> str:
    base = statistics.mean(r["rps"] for r in results["off"])
    lines = [
        "# What monitoring costs\n",
        f"One run, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, made by `{command}`. Every number below comes from it.\n",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; wrk and the service share the cores.",
        f"- One worker serving `{MODEL}` (it has a drift reference); wrk, 64 connections, one-row digits "
        f"requests, {seconds:g} s per round; the configurations alternate, round after round.\n",
        "| configuration | req/s per round | mean req/s | vs off | p50 ms | CPU ms per request |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        mean = statistics.mean(r["rps"] for r in runs)
        lines.append(f"| {name} | {', '.join(str(r['rps']) for r in runs)} | {mean:.0f} | {mean / base:.3f}x | "
                     f"{statistics.mean(r['p50_ms'] for r in runs):.2f} | "
                     f"{statistics.mean(r['cpu_ms_per_request'] for r in runs):.3f} |")
    spread = max(r["rps"] for r in results["off"]) / min(r["rps"] for r in results["off"]) - 1
    lines += ["", f"The spread between rounds of the same configuration (off) was {spread * 100:.1f} %: a "
              "difference smaller than that is noise, not cost."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-monitoring.md")
    args = parser.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="switchyard-monitoring-"))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configs(where)}
    for round_ in range(args.rounds):
        for name, settings in configs(where).items():
            results[name].append(run_once(name, settings, where / f"{round_}-{name.split()[0]}", args.seconds))
            print(name, results[name][-1], flush=True)
    command = ("python bench/monitoring.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.write_text(report(results, command, args.seconds))
    print(report(results, command, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
