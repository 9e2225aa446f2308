"""`bench/serving.py --smoke`: a server of every kind answers every smoke workload, so the harness cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faulty import register_copy

pytestmark = pytest.mark.integration


def test_smoke_run_measures_every_installed_server(tags: dict[str, str], digits_root: Path, tmp_path: Path) -> None:
    copy, _ = register_copy(tags["minilm"], "minilm-bench-canary")
    versions = {"minilm": {"stable": tags["minilm"], "canary": copy, "shadow": copy},
                "digits": {"stable": tags["mlp"], "canary": tags["cnn"], "shadow": tags["cnn_int8"]}}
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "SWITCHYARD_WORK_DIR": str(digits_root), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "bench/serving.py", "--smoke", "--versions", json.dumps(versions),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    runs = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())["runs"]}
    expected = {"HTTP floor (Starlette, no model)", "naive FastAPI + torch eager fp32",
                "naive FastAPI + ORT (same file)", "stock BentoML max_latency_ms=100", "LitServe batch_timeout=0ms",
                "Switchyard 90-10"}
    assert set(runs) == expected  # all are installed by `make install`
    for name, run in runs.items():
        assert {load["workload"] for load in run["loads"]} == {"embed-one", "digits-one"}, name
        for load in run["loads"]:
            assert load["requests"] > 0 and load["cdf_ms"] and load["cpu_pct"] > 0, (name, load)
            if not name.startswith("stock"):  # stock BentoML may shed with 503 by design
                assert load["non2xx"] == 0 and load["rows_per_s"] > 0, (name, load)
        assert run["ready_s"] > 0 and run["peak_rss_mb"] > 0
    assert len(runs["Switchyard 90-10"]["repeats"]) == 1 and runs["Switchyard 90-10"]["repeats"][0] > 0
    report = out.read_text()
    assert "## Targets" in report and "| Switchyard 90-10 | 4 |" in report
    assert (tmp_path / "benchmarks-throughput.png").stat().st_size > 1000
    assert (tmp_path / "benchmarks-latency-cdf.png").stat().st_size > 1000
