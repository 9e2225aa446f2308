"""Tier three: `bentoml build` the project, then serve the built bento from an empty directory."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.conftest import AUTH, TOKEN
from tests.servers import Served, serve_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bento_tag(tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repo's bentofile, with this session's registered versions as its models."""
    spec = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    spec["models"] = [tags["mlp"], tags["cnn"], tags["minilm"]]
    bentofile = tmp_path_factory.mktemp("bentofile") / "bentofile.yaml"
    bentofile.write_text(yaml.safe_dump(spec))
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "--output", "tag", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "BENTOML_DO_NOT_TRACK": "True"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


@pytest.fixture(scope="module")
def bento(bento_tag: str, tags: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    empty = tmp_path_factory.mktemp("empty-cwd")
    state = tmp_path_factory.mktemp("bento-state")
    served = Served(serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN), target=bento_tag,
                    cwd=empty, log_dir=state)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


def test_bento_carries_code_models_and_no_torch(bento_tag: str, tags: dict[str, str]) -> None:
    import bentoml

    info = bentoml.get(bento_tag)
    root = Path(info.path)
    assert (root / "src" / "service.py").is_file() and (root / "src" / "bentos" / "engine.py").is_file()
    assert not (root / "src" / "models").exists() and not (root / "src" / "tests").exists()
    assert {str(m.tag) for m in info.info.all_models} >= {tags["mlp"], tags["minilm"]}
    requirements = (root / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "tokenizers" in requirements
    assert "torch" not in requirements and "transformers" not in requirements
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    assert "EXPOSE 3000" in dockerfile and "bentoml" in dockerfile.lower()


def test_served_bento_answers_everything(bento: Served, tags: dict[str, str]) -> None:
    with httpx.Client(base_url=bento.url, timeout=60) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/digits/predict", json={"inputs": [[0.0] * 20 + [16.0] * 10 + [4.0] * 34]})
        assert r.status_code == 200 and r.headers["x-model-version"]
        r = c.post("/v1/minilm/embed", json={"texts": ["served from the bento"]})
        assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 384
        assert c.get("/playground/", follow_redirects=True).status_code == 200
        assert "switchyard_requests_total" in c.get("/metrics").text
        assert c.get("/v1/admin/deployments", headers=AUTH).status_code == 200
        assert c.get("/v1/admin/deployments").status_code == 401
