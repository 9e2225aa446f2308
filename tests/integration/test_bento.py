"""Tier three: `bentoml build` the project, then serve the built bento from an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.conftest import AUTH, TOKEN
from tests.servers import Served, free_port, serve_env

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
    served = Served(serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN, grpc_port=str(free_port())),
                    target=bento_tag, cwd=empty, log_dir=state)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


def test_bento_carries_code_models_and_no_torch(bento_tag: str, tags: dict[str, str]) -> None:
    import bentoml

    info = bentoml.get(bento_tag)
    root = Path(info.path)
    assert (root / "src" / "service.py").is_file()
    assert (root / "src" / "bentos" / "controlplane" / "engine.py").is_file()
    assert not (root / "src" / "models").exists() and not (root / "src" / "tests").exists()
    assert {str(m.tag) for m in info.info.all_models} >= {tags["mlp"], tags["minilm"]}
    requirements = (root / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "tokenizers" in requirements
    assert "torch" not in requirements and "transformers" not in requirements
    assert "scikit-learn" not in requirements
    assert "grpcio-health-checking" in requirements and "tritonclient[grpc]" in requirements
    assert (root / "src" / "switchyard.yaml").is_file() and (root / "src" / "bentos" / "tasks" / "tensor.py").is_file()
    assert {e.name for e in info.info.envs} >= {"SWITCHYARD_STATE_DIR", "SWITCHYARD_THREADS", "HF_HUB_OFFLINE"}


def test_dockerfile_entrypoint_and_port_are_the_ones_readme_documents(bento_tag: str) -> None:
    import bentoml

    root = Path(bentoml.get(bento_tag).path)
    dockerfile = (root / "env" / "docker" / "Dockerfile").read_text()
    readme = (ROOT / "docs" / "deploy.md").read_text()
    entrypoint = re.search(r'^ENTRYPOINT \[ "([^"]+)" \]', dockerfile, re.M)
    ports = re.findall(r"^EXPOSE (\d+)", dockerfile, re.M)
    assert entrypoint and ports[0] == "3000"
    assert f"The image's entrypoint is `{entrypoint.group(1)}`" in readme
    assert f"the port is `{ports[0]}`" in readme and f"-p {ports[0]}:{ports[0]}" in readme
    assert (root / "env" / "docker" / "entrypoint.sh").is_file()
    assert re.search(r"apt-get install .*\bcurl\b", dockerfile)  # system_packages reached the image
    for variable in ("SWITCHYARD_ADMIN_TOKEN", "SWITCHYARD_DB_URL", "SWITCHYARD_STATE_DIR", "SWITCHYARD_THREADS",
                     "SWITCHYARD_WORKERS"):
        assert f"-e {variable}=" in readme, f"docs/deploy.md's docker run lacks {variable}"


def test_export_writes_an_archive_with_the_models(bento_tag: str, tags: dict[str, str], tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bentoml", "export", bento_tag, str(tmp_path / "s.bento")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with tarfile.open(tmp_path / "s.bento") as archive:
        names = archive.getnames()
    assert any(n.endswith("src/service.py") for n in names)
    assert any(tags["minilm"].split(":")[0] in n and n.endswith("tokenizer.json") for n in names)


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
    import numpy as np
    import tritonclient.grpc as tc

    assert bento.grpc is not None  # the bento starts the gRPC server too
    client = tc.InferenceServerClient(bento.grpc)
    pixels = tc.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(np.array([[0.0] * 20 + [16.0] * 10 + [4.0] * 34], np.float32))
    assert client.infer("digits", [pixels]).as_numpy("probabilities").shape == (1, 10)
