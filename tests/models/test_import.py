"""`python -m models import` as a user runs it, on models the tests make (nothing downloaded):
a CNN from the user's own file, a Hugging Face directory, an ONNX file with two inputs, a
MobileNet-style network, a scikit-learn pipeline through skl2onnx; and every bad input as a one-line
error with nothing left in the store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.user_models import color_images, hf_sentiment_dir, normalise, review_rows, two_input_graph, user_cnn_files
from tests.conftest import CLI, ROOT


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's own files, outside the repository: model code, trained weights, data, labels."""

    root = tmp_path_factory.mktemp("my-models")
    user_cnn_files(root)
    vp, _ = color_images(200, seed=1)
    np.savez(root / "bad-shape.npz", inputs=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(4, int))
    np.savez(root / "bad-labels.npz", inputs=normalise(vp[:4]), labels=np.array([0, 1, 2, 7]))
    hf_sentiment_dir(root / "hf")
    (root / "reviews.jsonl").write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in review_rows()))
    (root / "sentences.txt").write_text("\n".join(t for t, _ in review_rows()))
    two_input_graph(root)
    rng = np.random.default_rng(0)
    np.savez(root / "pairs.npz", a=rng.random((32, 3), np.float32), b=rng.random((32, 3), np.float32))
    np.savez(root / "small.npz", inputs=rng.random((16, 3, 32, 32), np.float32))
    return root


def cnn_args(root: Path, *extra: str, factory: str = "build") -> list[str]:
    return ["import", "--name", "my-cnn", "--task", "image-classification", "--torch", f"{root}/my_cnn.py:{factory}",
            "--state-dict", str(root / "weights.pt"), "--input", "image:float32:batch,3,16,16", "--labels",
            str(root / "labels.txt"), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", *extra]


def stored(env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "models", "list", "--json"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    return list(json.loads(out.stdout)) if out.stdout.strip().startswith("[") else []


def test_cnn_from_the_users_own_file(cli: CLI, user_dir: Path, store_env: dict[str, str], tmp_path: Path) -> None:
    out = cli(*cnn_args(user_dir, "--validation", str(user_dir / "val.npz"), "--calibration",
                        str(user_dir / "calib.npz"), "--work-dir", str(tmp_path)), check=True)
    tags = out.stdout.split()
    assert [t.split(":")[0] for t in tags] == ["my-cnn-fp32", "my-cnn-int8-dynamic", "my-cnn-int8-static"]
    assert "parity with torch, max abs diff" in out.stderr
    rows = {r["tag"]: r for r in stored(store_env)}
    static = rows[tags[2]]
    assert static["task"] == "image-classification"
    assert static["signature"]["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]
    assert static["gate"]["passed"] and static["gate"]["data"]["validation"]["rows"] == 200
    assert len(static["gate"]["data"]["validation"]["sha256"]) == 64 and static["gate"]["thresholds"]["max_drop"] == 1
    lineage = static["lineage"]
    assert lineage["source"].endswith("my_cnn.py") and lineage["factory"] == "build"
    assert len(lineage["source_sha256"]) == 64 and len(lineage["state_dict_sha256"]) == 64
    assert static["metrics"]["validate"]["accuracy"] > 0.95
    assert static["metrics"]["validate"]["batch_invariance_min_agreement"] == 1.0
    assert set(static["sha256"]) >= {"model.onnx"}


def test_a_hugging_face_directory_carries_id2label_and_its_tokenizer(cli: CLI, user_dir: Path,
                                                                      store_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    out = cli("import", "--name", "reviews", "--task", "text-classification", "--hf", str(user_dir / "hf"),
              "--validation", str(user_dir / "reviews.jsonl"), "--calibration", str(user_dir / "sentences.txt"),
              "--work-dir", str(tmp_path), check=True)
    fp32 = next(r for r in stored(store_env) if r["tag"] == out.stdout.split()[0])
    assert fp32["task"] == "text-classification" and "tokenizer.json" in fp32["sha256"]
    assert fp32["lineage"]["architecture"] == "BertForSequenceClassification"
    assert [i["name"] for i in fp32["signature"]["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert fp32["metrics"]["validate"]["accuracy"] == 1.0  # fine-tuned on these very rows


def test_an_onnx_file_with_two_named_inputs(cli: CLI, user_dir: Path, store_env: dict[str, str],
                                            tmp_path: Path) -> None:
    out = cli("import", "--name", "pairs", "--task", "tensor", "--onnx", str(user_dir / "two-inputs-1.onnx"),
              "--calibration", str(user_dir / "pairs.npz"), "--work-dir", str(tmp_path), check=True)
    rows = {r["tag"]: r for r in stored(store_env)}
    assert [rows[t]["signature"]["inputs"][1]["name"] for t in out.stdout.split()] == ["b"] * 3
    assert rows[out.stdout.split()[0]]["metrics"]["validate"]["relative_l2"] == 0.0


def test_a_mobilenet_style_network_imports_without_special_casing(cli: CLI, user_dir: Path,
                                                                  tmp_path: Path) -> None:
    out = cli("import", "--name", "mobile", "--task", "image-classification", "--torch",
              f"{user_dir}/my_cnn.py:mobilenet_like", "--input", "image:float32:batch,3,32,32", "--calibration",
              str(user_dir / "small.npz"), "--variant", "fp32", "--variant", "int8-dynamic",
              "--work-dir", str(tmp_path), check=True)
    assert [t.split(":")[0] for t in out.stdout.split()] == ["mobile-fp32", "mobile-int8-dynamic"]


def sklearn_pipeline_graph(root: Path) -> tuple[Path, Path, Any, np.ndarray]:
    """A scikit-learn pipeline (StandardScaler + MLPClassifier) exported by skl2onnx with zipmap off: an
    `ai.onnx.ml` Scaler, and two outputs of different dtypes (int64 label, float32 probabilities)."""
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 6)).astype(np.float32) * [1, 10, 100, 1, 1, 0.1]
    y = (x[:, 0] + x[:, 1] / 10 > 0).astype(int) + (x[:, 2] > 50)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=300, random_state=0)).fit(x, y)
    graph = to_onnx(pipe, x[:1].astype(np.float32), options={id(pipe.steps[-1][1]): {"zipmap": False}},
                    target_opset={"": 17, "ai.onnx.ml": 3})
    assert "ai.onnx.ml" in {n.domain for n in graph.graph.node}
    assert [(o.name, o.type.tensor_type.elem_type) for o in graph.graph.output] == [("label", 7),
                                                                                    ("probabilities", 1)]
    (root / "pipe.onnx").write_bytes(graph.SerializeToString())
    np.savez(root / "pipe.npz", X=x[:200].astype(np.float32))
    return root / "pipe.onnx", root / "pipe.npz", pipe, x[200:].astype(np.float32)


SERVE_STORED = """
import json, sys
import numpy as np
from bentos.dataplane.runtime import load_version
version = load_version(sys.argv[1], threads=1)
x = np.load(sys.argv[2])["X"]
rows = version.run([{"X": r} for r in x])
print(json.dumps({"label": [int(r["label"]) for r in rows],
                  "probabilities": [r["probabilities"].tolist() for r in rows]}))
"""


def test_a_scikit_learn_pipeline_imports_its_buildable_variants_and_serves(cli: CLI, store_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    """ORT's static quantizer cannot calibrate this graph (it once ended the import with its traceback):
    int8-static is skipped on one line naming why, and the other variants are registered and serve."""
    onnx_file, calibration, pipe, held_out = sklearn_pipeline_graph(tmp_path)
    # Relative L2 counts the int64 label output too: a label flipped near the boundary weighs like 1.0.
    out = cli("import", "--name", "skl", "--task", "tensor", "--onnx", str(onnx_file), "--calibration",
              str(calibration), "--max-rel-l2", "0.5", "--work-dir", str(tmp_path / "work"))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert [t.split(":")[0] for t in out.stdout.split()] == ["skl-fp32", "skl-int8-dynamic"]
    summary = next(line for line in out.stderr.splitlines() if "registered fp32, int8-dynamic; skipped" in line)
    assert "skipped int8-static (cannot be built: RuntimeError: " in summary and "onnxruntime/quantization" in summary
    np.savez(tmp_path / "held-out.npz", X=held_out)
    served = subprocess.run([sys.executable, "-c", SERVE_STORED, out.stdout.split()[0], str(tmp_path / "held-out.npz")],
                            cwd=ROOT, env=store_env, capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-2000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["label"] == pipe.predict(held_out).tolist()
    np.testing.assert_allclose(answer["probabilities"], pipe.predict_proba(held_out), atol=1e-5)


def test_without_calibration_int8_static_is_skipped_with_a_note(cli: CLI, user_dir: Path, tmp_path: Path) -> None:
    out = cli(*cnn_args(user_dir, "--validation", str(user_dir / "val.npz"), "--work-dir", str(tmp_path)), check=True)
    assert "int8-static skipped: it calibrates on your inputs; give --calibration FILE" in out.stderr
    assert [t.split(":")[0] for t in out.stdout.split()] == ["my-cnn-fp32", "my-cnn-int8-dynamic"]


@pytest.mark.parametrize(("case", "needle"), [
    ("factory", "no factory 'nope' in"),
    ("unsupported", "export to ONNX failed: Exporting the operator 'aten::linalg_eigh'"),
    ("input", "--input 'image:float33:batch,3,16,16': dtype 'float33' is not one of"),
    ("tokenizer", "hf-without-tokenizer: tokenizer.json missing (a Hugging Face directory needs"),
    ("shape", "bad-shape.npz: inputs of shape [4, 3, 8, 8] do not match the model's input"),
    ("labels", "labels outside the model's classes in"),
    ("gate", "failed validation: accuracy drop"),
])
def test_bad_input_is_one_error_line_and_nothing_is_stored(cli: CLI, user_dir: Path, store_env: dict[str, str],
                                                           tmp_path: Path, case: str, needle: str) -> None:
    val, work = ["--validation", str(user_dir / "val.npz")], ["--work-dir", str(tmp_path)]
    no_tokenizer = tmp_path / "hf-without-tokenizer"  # a checkpoint someone saved without its tokenizer
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(user_dir / "hf" / name, no_tokenizer / name)
    args = {
        "factory": cnn_args(user_dir, *val, *work, factory="nope"),
        "unsupported": ["import", "--name", "eig", "--task", "image-classification", "--torch",
                        f"{user_dir}/my_cnn.py:unsupported", "--input", "image:float32:batch,3,16,16",
                        "--calibration", str(user_dir / "calib.npz"), *work],
        "input": [a.replace("image:float32", "image:float33") for a in cnn_args(user_dir, *val, *work)],
        "tokenizer": ["import", "--name", "t", "--task", "text-classification", "--hf", str(no_tokenizer),
                      "--calibration", str(user_dir / "sentences.txt"), *work],
        "shape": cnn_args(user_dir, "--validation", str(user_dir / "bad-shape.npz"), *work),
        "labels": cnn_args(user_dir, "--validation", str(user_dir / "bad-labels.npz"), *work),
        "gate": cnn_args(user_dir, *val, *work, "--max-drop", "-1"),
    }[case]
    out = cli(*args)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and needle in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert stored(store_env) == []
