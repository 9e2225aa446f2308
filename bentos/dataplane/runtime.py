"""ONNX Runtime sessions: execution providers, threads and spinning chosen in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from bentos.artifacts import find_mismatches
from bentos.signing import Trust, load_trust
from bentos.signing import problem as signature_problem
from bentos.tasks import Codec, get_task

# Preferred order; only those this onnxruntime build offers are used.
_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Versions stored before task types existed carry only a family label.
_LEGACY_TASKS = {"digits": "image-classification", "minilm": "text-embedding"}
_LEGACY_PREPROCESS: dict[str, dict[str, Any]] = {
    "digits": {"pixel_range": [0.0, 16.0], "image": {"fit": "ink", "scale": 16.0}},
    "minilm": {"pooling": "graph", "normalize": False},
}


def task_of(labels: dict[str, str]) -> str | None:
    """A stored version's task type; None for models that are not Switchyard's."""
    return labels.get("task") or _LEGACY_TASKS.get(labels.get("family", ""))


def default_threads(workers: int = 1) -> int:
    """Intra-op threads so that workers x threads stays within the machine's cores."""
    return max(1, available_cores() // max(1, workers))


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a Kubernetes
    `limits.cpu`), which os.cpu_count() ignores: a pod limited to 2 CPUs on a 64-core node has 2."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # 1.5 CPUs: 2 threads
    except (OSError, ValueError):
        pass
    return max(1, cores)


def pick_providers(cpu_only: bool = False, required: tuple[str, ...] = ()) -> list[str]:
    """`required` (SWITCHYARD_PROVIDERS) must all be present: a GPU pod must not fall back to CPU quietly."""
    available = ort.get_available_providers()
    missing = [p for p in required if p not in available]
    if missing:
        raise VersionLoadError(
            f"SWITCHYARD_PROVIDERS asks for {missing}, but this onnxruntime offers {available}; for CUDA install "
            "onnxruntime-gpu (`pip install --force-reinstall --no-deps onnxruntime-gpu`) or unset SWITCHYARD_PROVIDERS")
    if required:
        return [*required, *(["CPUExecutionProvider"] if "CPUExecutionProvider" not in required else [])]
    wanted = ("CPUExecutionProvider",) if cpu_only else _PROVIDER_ORDER
    return [p for p in wanted if p in available]


def session_options(threads: int, spinning: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle spinning steals the core the event loop needs when both share the machine.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


class VersionLoadError(RuntimeError):
    """A model version could not be loaded: it stays out of traffic."""


def load_session(
    path: Path, threads: int | None = None, cpu_only: bool = False, spinning: bool = False,
    providers: tuple[str, ...] = (),
) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path),
        session_options(threads or default_threads(), spinning),
        providers=pick_providers(cpu_only, providers),
    )


@dataclass
class LoadedVersion:
    """One model version, verified, loaded and warmed, ready for traffic."""

    tag: str
    task: str
    variant: str
    codec: Codec
    session: ort.InferenceSession
    metadata: dict[str, Any]
    path: Path

    @property
    def execution(self) -> str:
        """"forward" (one pass per batch) or "decode" (token by token): the task's."""
        return get_task(self.task).execution

    def run(self, items: list[Any]) -> list[Any]:
        """One result row per input item."""
        feed = self.codec.encode(items)
        return self.codec.split(feed, self.session.run(self.codec.output_names, feed))

    def warm(self) -> None:
        if self.execution == "decode":
            self._warm_decode()
            return
        for batch in (1, 8):
            self.run(self.codec.warmup_items() * batch)

    def _warm_decode(self) -> None:
        """A prefill of 1 and 8 prompts, then a few decode steps: the shapes traffic brings first."""
        from bentos.dataplane.decode.runner import DecodeRunner
        from bentos.dataplane.decode.scheduler import StepPlan
        from bentos.tasks.text_generation import GenerationCodec, SamplingParams

        assert isinstance(self.codec, GenerationCodec)
        prompt = self.codec.tokenize(self.codec.warmup_items()[0]) or [0]
        for batch in (1, 8):
            runner = DecodeRunner(self.session, self.codec)
            ids = tuple(f"w{i}" for i in range(batch))
            for rid in ids:
                runner.add(rid, prompt, SamplingParams())
            runner.step(StepPlan(prefill=ids))
            for _ in range(3):
                runner.step(StepPlan(decode=ids))


def warm_runtime() -> None:
    """Start ONNX Runtime's process-wide parts (its environment, default allocators, kernel registries) with
    a one-node graph: about 9 MB here, which the first real load's memory measurement would otherwise count."""
    import numpy as np
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "warm", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.zeros(1, np.float32)})


def resolve_tag(tag: str) -> Any:
    """The stored model for a tag, a `name:latest` or a bare name."""
    import bentoml

    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise VersionLoadError(f"model {tag!r} is not in the model store") from None
    except (bentoml.exceptions.BentoMLException, ValueError) as exc:  # a malformed tag, e.g. "x:"
        raise VersionLoadError(f"{tag!r} is not a valid tag: {exc}") from None


@dataclass(frozen=True)
class StoredVersion:
    """A stored version, verified (hashes and signature), with its codec but no session: what serving knows of
    an on-demand version before it loads (its tensors for OIP metadata, its size for the memory budget)."""

    tag: str
    task: str
    variant: str
    codec: Codec
    metadata: dict[str, Any]
    path: Path

    @property
    def file_bytes(self) -> int:
        try:
            return (self.path / "model.onnx").stat().st_size
        except OSError:
            return 0


def inspect_version(tag: str, trust: Trust | None = None) -> StoredVersion:
    """A stored version's verified description: its artifacts must match their hashes, and its manifest the
    signature made with `trust`'s key (SWITCHYARD_SIGNING_KEY by default)."""
    model = resolve_tag(tag)
    labels, meta = model.info.labels, model.info.metadata
    root = Path(model.path)
    task = task_of(labels)
    if task is None:
        raise VersionLoadError(f"{model.tag} has no 'task' label: import it with `python -m models import`")
    problems = find_mismatches(root, meta.get("sha256") or {})
    if problems or not meta.get("sha256"):
        raise VersionLoadError(f"{model.tag} failed its sha256 check: {'; '.join(problems) or 'no hashes recorded'}")
    if why := signature_problem(str(model.tag), meta, trust or load_trust()):
        raise VersionLoadError(why)
    meta = {**meta, "preprocess": {**_LEGACY_PREPROCESS.get(labels.get("family", ""), {}),
                                   **(meta.get("preprocess") or {})}}
    try:
        codec = get_task(task).codec(meta, root)
    except Exception as exc:
        raise VersionLoadError(f"{model.tag} failed to load: {str(exc).splitlines()[0][:300]}") from exc
    return StoredVersion(str(model.tag), task, labels.get("variant", "?"), codec, dict(meta), root)


def load_version(tag: str, threads: int, providers: tuple[str, ...] = (), trust: Trust | None = None,
                 stored: StoredVersion | None = None) -> LoadedVersion:
    """A stored version, verified (`inspect_version`), loaded and warmed, with `threads` intra-op threads. A
    generative version gets as many as a one-forward batch (one, on 2 cores): its decode loop's event-loop work
    (streams, SSE) needs the other core; two ORT threads wrote fewer tokens per second, not more, at every
    concurrency measured here (1, 8, 32 streams; TPOT at 1 stream 3.1 against 2.2 ms). `stored`, verified
    before (an on-demand version loading again): its files are hashed again against the verified manifest,
    without the model store's lookup."""
    if stored is None:
        stored = inspect_version(tag, trust)
    elif problems := find_mismatches(stored.path, stored.metadata.get("sha256") or {}):
        raise VersionLoadError(f"{tag} failed its sha256 check: {'; '.join(problems)}")
    try:
        session = load_session(stored.path / "model.onnx", threads, providers=providers)
        version = LoadedVersion(stored.tag, stored.task, stored.variant, stored.codec, session, stored.metadata,
                                stored.path)
        version.warm()
    except VersionLoadError:  # a missing provider names its setting: keep that message
        raise
    except Exception as exc:  # a corrupt graph raises ORT's own exception types
        raise VersionLoadError(f"{stored.tag} failed to load: {str(exc).splitlines()[0][:300]}") from exc
    return version
