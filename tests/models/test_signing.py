"""Signed versions in a real store: `python -m models` signs what it registers; `verify` and the loader the
server uses refuse a version whose file and recorded hash were changed together, one signed with another
key, and an unsigned one (unless allowed); `sign` vouches for a version stored before signing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.user_models import two_input_graph
from tests.conftest import CLI, ROOT

EDIT = """
import sys, onnx
import bentoml
from bentos.artifacts import sha256_file
model = bentoml.models.get(sys.argv[1])
path = model.path_of("model.onnx")
if sys.argv[2] == "file-and-hash":  # the graph made to add 1 more, and its recorded hash made to match
    graph = onnx.load(path)
    graph.graph.initializer[0].float_data[:] = [2.0]
    onnx.save(graph, path)
    model.info.metadata["sha256"]["model.onnx"] = sha256_file(__import__("pathlib").Path(path))
elif sys.argv[2] == "unsign":
    del model.info.metadata["signed"]
model._write_info()
"""
LOAD = """
import sys
from bentos.dataplane.runtime import VersionLoadError, load_version
try:
    load_version(sys.argv[1], 1)
except VersionLoadError as exc:
    print("refused:", exc)
else:
    print("loaded")
"""


@pytest.fixture
def signed_tag(cli: CLI, tmp_path: Path) -> str:
    graph = two_input_graph(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pairs.npz", a=rng.random((16, 3), np.float32), b=rng.random((16, 3), np.float32))
    out = cli("import", "--name", "pairs", "--task", "tensor", "--onnx", str(graph), "--calibration",
              str(tmp_path / "pairs.npz"), "--variant", "fp32", "--work-dir", str(tmp_path / "work"), check=True)
    return out.stdout.split()[0]


def python(script: str, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return (out.stdout.strip().splitlines() or [""])[-1]


def test_a_file_changed_with_its_hash_is_refused_by_verify_and_at_load(cli: CLI, signed_tag: str,
                                                                       store_env: dict[str, str]) -> None:
    assert "the manifest its signature" in cli("verify", signed_tag, check=True).stdout
    assert python(LOAD, signed_tag, env=store_env) == "loaded"
    python(EDIT, signed_tag, "file-and-hash", env=store_env)
    assert cli("verify", signed_tag.split(":")[0] + ":latest").returncode == 2  # the hashes alone now agree
    out = cli("verify", signed_tag)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "was altered after it was signed" in errors[0], out.stderr
    assert python(LOAD, signed_tag, env=store_env) == (
        f"refused: {signed_tag} was altered after it was signed: its manifest (artifact hashes, task, signature, "
        "preprocessing, lineage, gate) does not match its signature")


def test_another_key_refuses_and_names_both_keys(cli: CLI, signed_tag: str, store_env: dict[str, str]) -> None:
    other = {**store_env, "SWITCHYARD_SIGNING_KEY": "another-key-of-enough-length"}
    out = cli("verify", signed_tag, env=other)
    assert out.returncode == 2 and "is signed with key" in out.stderr and "not with this key" in out.stderr
    assert python(LOAD, signed_tag, env=other).startswith(f"refused: {signed_tag} is signed with key")


def test_unsigned_loads_only_when_allowed_and_sign_vouches_for_it(cli: CLI, signed_tag: str,
                                                                  store_env: dict[str, str]) -> None:
    python(EDIT, signed_tag, "unsign", env=store_env)
    assert "is not signed" in cli("verify", signed_tag).stderr
    assert python(LOAD, signed_tag, env=store_env).startswith(f"refused: {signed_tag} is not signed")
    assert python(LOAD, signed_tag, env={**store_env, "SWITCHYARD_ALLOW_UNSIGNED": "true"}) == "loaded"
    assert cli("sign", "--unsigned", check=True).stdout.split() == [signed_tag]
    assert cli("verify", signed_tag).returncode == 0
    assert python(LOAD, signed_tag, env=store_env) == "loaded"


def test_a_short_key_is_one_error_line(cli: CLI, tmp_path: Path, store_env: dict[str, str]) -> None:
    graph = two_input_graph(tmp_path)
    np.savez(tmp_path / "pairs.npz", a=np.ones((4, 3), np.float32), b=np.ones((4, 3), np.float32))
    out = cli("import", "--name", "pairs", "--task", "tensor", "--onnx", str(graph), "--calibration",
              str(tmp_path / "pairs.npz"), "--variant", "fp32", "--work-dir", str(tmp_path / "work"),
              env={**store_env, "SWITCHYARD_SIGNING_KEY": "short"})
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "SWITCHYARD_SIGNING_KEY has 5 characters" in errors[0]
    assert "Traceback" not in out.stderr
