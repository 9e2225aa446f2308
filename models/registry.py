"""Register stage, and the `list` and `verify` commands over the BentoML model store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, cast

from bentos.artifacts import find_mismatches, sha256_file
from bentos.signing import Trust, load_trust, problem, sign
from models.errors import BuildError
from models.export import check_onnx
from models.families.base import Builder
from models.workdir import ModelDir, read_json

SCHEMA_FILE = "schema.json"
MODEL_FILE = "model.onnx"


def store_dir() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    try:  # BentoML creates its home on first use and raises if it cannot
        return Path(BentoMLContainer.model_store_dir.get())
    except OSError as exc:
        raise BuildError(f"model store under BENTOML_HOME={os.environ.get('BENTOML_HOME', '~/bentoml')} is not "
                         f"writable ({exc.strerror}): set BENTOML_HOME to a writable directory") from exc


def check_store_writable() -> Path:
    path = store_dir()
    probe = path / f".switchyard-probe-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BuildError(f"model store {path} is not writable ({exc.strerror}): "
                         "set BENTOML_HOME to a writable directory") from exc
    return path


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else "unknown"


def model_name(key: str, variant: str) -> str:
    return f"{key}-{variant}"


def latest_tag(name: str) -> str | None:
    import bentoml

    try:
        return str(bentoml.models.get(f"{name}:latest").tag)
    except bentoml.exceptions.NotFound:
        return None


def artifacts_for(builder: Builder, md: ModelDir, variant: str) -> dict[str, Path]:
    files = {MODEL_FILE: md.require_variant(variant), **builder.extra_artifacts()}
    torchscript = md.export_dir / "model.ts"
    if variant == "fp32" and torchscript.is_file():
        files["model.ts"] = torchscript  # the alternative artifact
    return files


REFERENCE_ROWS = 1000


def drift_reference(builder: Builder, model: Path) -> dict[str, Any]:
    """The version's drift reference: its validation inputs' watched features and its own predictions
    on them, binned as serving bins live traffic (bentos/dataplane/drift.py)."""
    import onnxruntime as ort

    from bentos.dataplane.drift import reference_profile

    codec, items = builder.codec(), builder.eval_items()[:REFERENCE_ROWS]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows: list[Any] = []
    for i in range(0, len(items), 64):
        feed = codec.encode(items[i:i + 64])
        rows += codec.split(feed, session.run(codec.output_names, feed))
    predicted = codec.predicted_classes(rows)
    features = {**codec.drift_features(items), **codec.output_features(rows)}
    return reference_profile(features, *(predicted or (None, None)))


def register(builder: Builder, md: ModelDir, variant: str, force: bool = False) -> str:
    import bentoml

    check_store_writable()
    files = artifacts_for(builder, md, variant)
    check_onnx(files[MODEL_FILE])
    vdir = md.variant_dir(variant)
    validation = read_json(vdir / "validate.json",
                           f"run `python -m models validate {builder.key} --variant {variant}` first")
    if not validation["passed"] and not force:
        raise BuildError(f"{builder.key} {variant} failed validation ({'; '.join(validation['failures'])}); "
                         "not registered. Pass --force to register anyway")
    optimization = read_json(vdir / "optimize.json", "run the optimize stage first")
    bench_path = vdir / "benchmark.json"
    bench = read_json(bench_path, "") if bench_path.is_file() else None
    hashes = {name: sha256_file(src) for name, src in files.items()}
    codec = builder.codec()
    parent = None if variant == "fp32" else latest_tag(model_name(builder.key, "fp32"))
    metrics = validation["metrics"]
    metadata: dict[str, Any] = {
        "schema": codec.schema(),
        "preprocess": codec.preprocess_config(),
        "metrics": {"validate": metrics, "benchmark": bench, "validation_passed": validation["passed"]},
        "lineage": {"model": builder.key, "parent": parent or f"{builder.key}/export/model.onnx (fp32, unregistered)",
                    "optimization": variant, "parameters": optimization, "git_commit": git_commit(),
                    **builder.lineage()},
        "sha256": hashes,
        "size_bytes": files[MODEL_FILE].stat().st_size,
        "task": builder.task,
        "gate": {"passed": validation["passed"], "forced": validation.get("forced", False),
                 "failures": validation["failures"], "max_drop": validation.get("max_drop"),
                 "data": validation.get("data"), "thresholds": validation.get("thresholds")},
    }
    if "batch_invariance_min_cosine" in metrics:
        metadata["batch_invariance_min_cosine"] = metrics["batch_invariance_min_cosine"]
    metadata["drift_reference"] = drift_reference(builder, files[MODEL_FILE])
    labels = {"task": builder.task, "family": builder.family, "model": builder.key, "variant": variant,
              "stage": "candidate"}
    with bentoml.models.create(model_name(builder.key, variant), labels=labels,
                               metadata=_without_none(metadata)) as bento_model:
        root = Path(bento_model.path)
        for name, src in files.items():
            shutil.copyfile(src, root / name)
        (root / SCHEMA_FILE).write_text(json.dumps(codec.schema(), indent=2))
        problems = find_mismatches(root, hashes)
        if problems:  # raising inside the block leaves nothing in the store
            raise BuildError("copy into the store was corrupted: " + "; ".join(problems))
        sign_new(bento_model)
    return str(bento_model.tag)


def _without_none(value: Any) -> Any:
    """BentoML metadata refuses None; an absent key says the same."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def describe_all() -> list[dict[str, Any]]:
    """Every Switchyard version in the store, as the server sees it, plus the figures `list` shows."""
    from bentos.dataplane.catalog import list_versions

    rows = list_versions()
    for row in rows:
        metrics = row["metrics"] or {}
        row["headline"] = _headline(metrics.get("validate") or {})
        row["p50_ms"] = ((metrics.get("benchmark") or {}).get("latency_ms") or {}).get("p50")
    return rows


def _headline(metrics: dict[str, Any]) -> str:
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy'] * 100:.2f}%"
    if "mean_cosine" in metrics:
        return f"cos {metrics['mean_cosine']:.4f}"
    if "top1_agreement" in metrics:
        return f"agree {metrics['top1_agreement']:.4f}"
    if "relative_l2" in metrics:
        return f"relL2 {metrics['relative_l2']:.1e}"
    if "perplexity" in metrics:
        return f"ppl {metrics['perplexity']:.3f}"
    return "-"


def build_trust() -> Trust:
    """The build side's key: SWITCHYARD_SIGNING_KEY, else the key file, made on first use."""
    try:
        return load_trust(create=True)
    except ValueError as exc:
        raise BuildError(str(exc)) from None


def sign_new(model: Any) -> None:
    """Sign a version inside its `bentoml.models.create` block, so it is stored signed or not at all."""
    model.info.metadata["signed"] = sign(str(model.tag), model.info.metadata, build_trust())


def _stored(tag: str) -> Any:
    import bentoml

    try:
        return bentoml.models.get(tag)
    except (bentoml.exceptions.NotFound, bentoml.exceptions.BentoMLException, ValueError):
        raise BuildError(f"model {tag!r} is not in the store {store_dir()}") from None


def _hashes_hold(model: Any) -> dict[str, str]:
    expected = cast(dict[str, str] | None, model.info.metadata.get("sha256"))
    if not expected:
        raise BuildError(f"{model.tag} has no recorded sha256 values: was it registered by switchyard?")
    problems = find_mismatches(Path(model.path), expected)
    if problems:
        raise BuildError(f"{model.tag} failed verification: " + "; ".join(problems))
    return dict(expected)


def verify(tag: str) -> dict[str, str]:
    """Every artifact matches its recorded sha256, and the manifest its signature under this key."""
    model = _stored(tag)
    hashes = _hashes_hold(model)
    try:
        trust = load_trust()
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    if why := problem(str(model.tag), model.info.metadata, trust):
        raise BuildError(f"{model.tag} failed verification: {why}")
    return hashes


def sign_stored(tag: str) -> str:
    """Sign a version stored before signing existed, once its artifacts match their hashes: the operator
    vouches for it. model.yaml is replaced whole, never half-written."""
    model = _stored(tag)
    _hashes_hold(model)
    model.info.metadata["signed"] = sign(str(model.tag), model.info.metadata, build_trust())
    target = Path(model.path) / "model.yaml"
    temporary = target.with_name(f".model.yaml.{uuid.uuid4().hex}")
    with temporary.open("w", encoding="utf8") as fh:
        model.info.dump(fh)
    os.replace(temporary, target)
    return str(model.tag)


def graph_signature(path: Path) -> dict[str, Any]:
    """Input and output names, dtypes and shapes, read from an ONNX graph (symbolic axes by name)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def spec(value: Any) -> dict[str, Any]:
        t = value.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else f"d{i}")
                for i, d in enumerate(t.shape.dim)]
        return {"name": value.name, "dtype": str(helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": dims}

    return {"inputs": [spec(v) for v in graph.input if v.name not in inits],
            "outputs": [spec(v) for v in graph.output]}


def register_file(name: str, onnx_path: Path, *, task: str, preprocess: dict[str, Any],
                  extra_files: dict[str, Path] | None = None, metrics: dict[str, Any] | None = None,
                  lineage: dict[str, Any] | None = None, variant: str = "fp32",
                  signature: dict[str, Any] | None = None) -> str:
    """Store one ONNX graph as a Switchyard version: task, signature, preprocessing, hashes, lineage.

    Nothing is left in the store if any step fails (the BentoML model is written on success only).
    """
    import bentoml

    from bentos.tasks import get_task

    check_store_writable()
    check_onnx(onnx_path)
    signature = signature or graph_signature(onnx_path)
    problems = get_task(task).check_signature(signature)
    if problems:
        raise BuildError(f"{onnx_path} cannot serve {task}: {'; '.join(problems)}")
    files = {MODEL_FILE: onnx_path, **(extra_files or {})}
    hashes = {n: sha256_file(src) for n, src in files.items()}
    metrics = metrics or {}
    labels = {"task": task, "family": name, "model": name, "variant": variant, "stage": "candidate"}
    metadata = {"schema": signature, "preprocess": preprocess, "task": task, "sha256": hashes,
                "metrics": {"validation_passed": True, **metrics},
                "lineage": {"model": name, "optimization": variant, "git_commit": git_commit(), **(lineage or {})},
                "size_bytes": onnx_path.stat().st_size}
    with bentoml.models.create(model_name(name, variant), labels=labels,
                               metadata=_without_none(metadata)) as bento_model:
        root = Path(bento_model.path)
        for file_name, src in files.items():
            shutil.copyfile(src, root / file_name)
        (root / SCHEMA_FILE).write_text(json.dumps(signature, indent=2))
        # The serving half must load it exactly as the server will, before it is stored.
        get_task(task).codec(metadata, root).encode(get_task(task).codec(metadata, root).warmup_items())
        problems_copy = find_mismatches(root, hashes)
        if problems_copy:
            raise BuildError("copy into the store was corrupted: " + "; ".join(problems_copy))
        sign_new(bento_model)
    return str(bento_model.tag)
