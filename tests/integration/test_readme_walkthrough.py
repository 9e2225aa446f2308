"""The docs' command blocks, run as a newcomer would, against a real service: Get started's first requests and
the whole of "Serve your own model" (README shows lines of it; tests/docs/test_site.py checks they are these)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import AUTH, TOKEN
from tests.servers import Served

pytestmark = pytest.mark.integration


def walkthrough() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "serve-your-own-model.md").read_text(), re.S)
    assert len(blocks) >= 6, "the walkthrough lost its steps"
    return "\n".join(blocks)


def test_get_started_first_requests_run_as_written(server: Served) -> None:
    """Against this test's server instead of make serve's port; -f so that an HTTP error fails the block."""
    page = (ROOT / "docs" / "get-started.md").read_text()
    (block,) = re.findall(r"## First requests.*?```bash\n(.*?)```", page, re.S)
    script = block.replace("localhost:3000", server.url.removeprefix("http://")).replace("curl -s ", "curl -sf ")
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    answers = out.stdout.replace("}{", "}\n{").splitlines()
    assert len(answers) == 4 and '"predictions"' in answers[0], out.stdout[:2000]
    assert all('"embeddings"' in a for a in answers[1:]), out.stdout[:2000]


def test_the_readme_walkthrough_ends_with_a_canary_and_a_rollout(server: Served, tmp_path: Path) -> None:
    env = {**os.environ, "SWITCHYARD": server.url, "TOKEN": TOKEN, "TMPDIR": str(tmp_path),
           "SWITCHYARD_WORK_DIR": str(tmp_path / "build")}
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    assert re.search(r"my-cnn-int8-static:\S+\s+int8-static\s+acc", out.stdout)  # models list
    assert '"label":"' in out.stdout.replace(" ", "")  # the picture was classified by name
    assert re.search(r"\d+ my-cnn-fp32:", out.stdout)  # the 90/10 tally
    assert re.search(r"^running 10 % my-cnn-int8-dynamic:", out.stdout, re.M)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        want, split = {"my-cnn-fp32": 90, "my-cnn-int8-dynamic": 10}, {}
        for _ in range(40):  # the worker answering may be a poll behind the one that started the rollout
            split = {v["tag"].split(":")[0]: v["weight"] for v in
                     c.get("/v1/admin/deployments/my-shapes", headers=AUTH).json()["versions"]}
            if split == want:
                break
            time.sleep(0.05)
        assert split == want
        actions = [a["action"] for a in c.get("/v1/admin/audit?endpoint=my-shapes", headers=AUTH).json()]
        assert {"endpoint-create", "default", "deploy", "rollout-start"} <= set(actions)
        c.post("/v1/admin/rollouts/my-shapes/abort", json={"reason": "test over"}, headers=AUTH)
