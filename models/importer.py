"""`python -m models import`: a user's model through export -> optimize -> gate -> register.

The imported model becomes a Builder like our own, so the same optimize, validate,
benchmark and register stages run on it; its task's build half (models/tasks/) reads the
user's data and judges each variant against fp32 on it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from bentos.dataplane.runtime import load_session
from bentos.tasks import Codec, get_task
from bentos.tasks.text_generation import GenerationCodec
from models.errors import BuildError
from models.families.base import Builder
from models.registry import check_store_writable, graph_signature
from models.settings import BuildSettings
from models.sources import Source, hf_directory, inputs_from_example, onnx_file, parse_input, torch_module, torchscript
from models.tasks import build_half
from models.tasks.base import Dataset, batch_invariance, check_labels, run_rows
from models.workdir import ModelDir, write_json

OPSET = 17
VARIANTS = ("fp32", "int8-dynamic", "int8-static", "int4", "fp16")
Log = Callable[[str], None]


class ImportOptions(BaseModel):
    """Everything `python -m models import` takes (the CLI's one boundary model)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    task: str
    torch: str | None = None
    state_dict: Path | None = None
    torchscript: Path | None = None
    hf: Path | None = None
    onnx: Path | None = None
    inputs: list[str] = Field(default_factory=list)
    example: Path | None = None
    output_names: list[str] = Field(default_factory=list)
    variants: list[str] = Field(default_factory=lambda: ["fp32", "int8-dynamic", "int8-static"])
    validation: Path | None = None
    calibration: Path | None = None
    labels: Path | None = None
    image_size: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    channels: str = "RGB"
    layout: str = "CHW"
    outputs_are: str = "logits"
    tokenizer: Path | None = None
    max_tokens: int = 256
    pooling: str = "mean"
    normalize: bool = True
    multi_label: bool = False
    threshold: float = 0.5
    max_drop: float = 1.0
    min_agreement: float = 0.99
    min_cosine: float = 0.99
    min_p01_cosine: float = 0.98
    max_rel_l2: float = 0.01
    max_perplexity_ratio: float = Field(1.05, ge=1.0)
    min_token_agreement: float = Field(0.9, ge=0.0, le=1.0)
    parity_tolerance: float = 1e-4
    force: bool = False
    allow_non_finite: bool = False

    def thresholds(self) -> dict[str, float]:
        return {"max_drop": self.max_drop, "min_agreement": self.min_agreement, "min_cosine": self.min_cosine,
                "min_p01_cosine": self.min_p01_cosine, "max_rel_l2": self.max_rel_l2,
                "max_perplexity_ratio": self.max_perplexity_ratio, "min_token_agreement": self.min_token_agreement}


class ImportedBuilder(Builder):
    """A user's model, seen by the pipeline stages like one of ours."""

    variants: ClassVar[tuple[str, ...]] = VARIANTS
    parity_tolerance: ClassVar[float] = 1e-4
    input_names: ClassVar[tuple[str, ...]] = ()
    output_name: ClassVar[str] = ""

    def __init__(self, settings: BuildSettings, opts: ImportOptions, signature: dict[str, Any],
                 preprocess: dict[str, Any], staging: Path, source: Source) -> None:
        super().__init__(settings)
        self.opts, self.signature, self.preprocess, self.staging, self.source = opts, signature, preprocess, staging, \
            source
        self.key = self.family = opts.name  # type: ignore[misc]
        self.task = opts.task  # type: ignore[misc]
        self.half: ModuleType = build_half(opts.task)
        self.validation: Dataset | None = None
        self.calibration: Dataset | None = None

    def codec(self) -> Codec:
        schema = {**self.signature, **({"allow_non_finite": True} if self.opts.allow_non_finite else {})}
        return get_task(self.task).codec({"schema": schema, "preprocess": self.preprocess}, self.staging)

    def extra_artifacts(self) -> dict[str, Path]:
        tok = self.staging / "tokenizer.json"
        return {"tokenizer.json": tok} if tok.is_file() else {}

    def load_torch(self, md: ModelDir) -> Any:
        raise BuildError(f"{self.key} was imported; its torch module is not kept (variants start from ONNX)")

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        return {}

    def data(self) -> Dataset:
        data = self.validation or self.calibration
        assert data is not None
        return data

    def eval_items(self) -> list[Any]:
        return self.data().items

    def calibration_items(self) -> list[Any]:
        return self.calibration.items if self.calibration else []

    def transformer_fusion(self) -> dict[str, Any] | None:
        cfg = self.source.hf_config
        if cfg is None or getattr(cfg, "model_type", "") not in ("bert", "distilbert", "roberta"):
            return None
        return {"model_type": "bert", "num_heads": cfg.num_attention_heads, "hidden_size": cfg.hidden_size}

    def evaluate(self, candidate: Any, baseline: Any) -> dict[str, Any]:
        codec, data = self.codec(), self.data()
        cand, base = run_rows(candidate, codec, data.items), run_rows(baseline, codec, data.items)
        classes = len(np.atleast_1d(base[0])) if not isinstance(base[0], dict) else 0
        metrics = self.half.evaluate(cand, base, data, classes)
        key = "batch_invariance_min_cosine" if self.task == "text-embedding" else "batch_invariance_min_agreement"
        metrics[key] = batch_invariance(candidate, codec, data.items, self.settings.seed)
        return dict(metrics)

    def gate(self, metrics: dict[str, Any], max_drop: float) -> list[str]:
        return list(self.half.gate(metrics, {**self.opts.thresholds(), "max_drop": max_drop}, self.data()))

    def headline(self, metrics: dict[str, Any]) -> str:
        return str(self.half.headline(metrics))

    def gate_context(self) -> dict[str, Any]:
        data = self.data()
        return {"data": {"validation" if self.validation else "calibration": data.describe()},
                "thresholds": self.opts.thresholds()}

    def lineage(self) -> dict[str, Any]:
        return {"imported_from": self.source.kind, **self.source.lineage}


class GenerationBuilder(ImportedBuilder):
    """A causal LM: its graph keeps the KV cache; judged on perplexity and greedy next-token agreement."""

    def evaluate(self, candidate: Any, baseline: Any) -> dict[str, Any]:
        return dict(self.half.evaluate(candidate, baseline, self.codec(), self.data().items))

    def gate(self, metrics: dict[str, Any], max_drop: float) -> list[str]:
        return list(self.half.gate(metrics, self.opts.thresholds(), self.data()))

    def bench_items(self, batch: int) -> list[Any]:
        return [self.data().items[0]] * batch  # one length: a benchmark of the prefill at that batch


# --- preparing the source ------------------------------------------------------------------
def _load_source(opts: ImportOptions) -> Source:
    given = [k for k in ("torch", "torchscript", "hf", "onnx") if getattr(opts, k) is not None]
    if len(given) != 1:
        raise BuildError("give exactly one source: --torch FILE.py:FACTORY, --torchscript FILE, --hf DIR or "
                         f"--onnx FILE (got {', '.join('--' + g for g in given) or 'none'})")
    if opts.torch:
        return torch_module(opts.torch, opts.state_dict)
    if opts.torchscript:
        return torchscript(opts.torchscript)
    if opts.hf:
        return hf_directory(opts.hf, opts.task)
    assert opts.onnx is not None
    return onnx_file(opts.onnx)


def _inputs(opts: ImportOptions, source: Source) -> tuple[list[dict[str, Any]], dict[str, np.ndarray] | None]:
    if source.kind == "onnx":
        return graph_signature(source.path)["inputs"], None
    if source.kind == "hf" and opts.task == "text-generation":
        return [], None  # read from the exported graph
    if source.kind == "hf":
        return [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
                for n in ("input_ids", "attention_mask", "token_type_ids")], None
    if opts.example is not None:
        return inputs_from_example(opts.example)
    if opts.inputs:
        return [parse_input(s) for s in opts.inputs], None
    raise BuildError("give the input signature: --input name:dtype:shape (repeatable, e.g. "
                     "image:float32:batch,3,32,32) or --example inputs.npz")


def _labels(opts: ImportOptions, source: Source) -> list[str] | None:
    if opts.labels is not None:
        if not opts.labels.is_file():
            raise BuildError(f"--labels {opts.labels} does not exist")
        return [line.strip() for line in opts.labels.read_text().splitlines() if line.strip()]
    cfg = source.hf_config
    if cfg is not None and getattr(cfg, "id2label", None):
        return [str(cfg.id2label[i]) for i in sorted(cfg.id2label)]
    return None


def _preprocess(opts: ImportOptions, inputs: list[dict[str, Any]], labels: list[str] | None) -> dict[str, Any]:
    if opts.task == "image-classification":
        spatial = [d for d in inputs[0]["shape"][1:] if isinstance(d, int) and d not in (1, 3)]
        size = opts.image_size or (spatial[:2] if len(spatial) >= 2 else None)
        if not size:
            raise BuildError("--image-size is needed: the input's height and width are not fixed sizes")
        size = size * 2 if len(size) == 1 else size
        channels = 3 if opts.channels == "RGB" else 1
        return {"labels": labels, "output": opts.outputs_are,
                "image": {"mode": opts.channels, "size": size, "layout": opts.layout, "scale": 1 / 255,
                          "mean": opts.mean or [0.0] * channels, "std": opts.std or [1.0] * channels}}
    if opts.task == "text-classification":
        return {"tokenizer": "tokenizer.json", "max_tokens": opts.max_tokens, "labels": labels,
                "problem": "multi_label" if opts.multi_label else "single_label", "threshold": opts.threshold}
    if opts.task == "text-embedding":
        return {"tokenizer": "tokenizer.json", "max_tokens": opts.max_tokens, "pooling": opts.pooling,
                "normalize": opts.normalize}
    return {}


def _generation_preprocess(source: Source, staging: Path) -> dict[str, Any]:
    """The graph's shape and the end-of-text token, for the server's decode loop and KV budget."""
    from tokenizers import Tokenizer

    from models.tasks.text_generation import graph_spec_of

    cfg = source.hf_config
    if source.kind != "hf" or cfg is None:
        raise BuildError("--task text-generation takes --hf DIR (a Hugging Face causal LM: GPT-2, Llama, ...)")
    eos = getattr(cfg, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    if eos is None:
        eos = Tokenizer.from_file(str(staging / "tokenizer.json")).token_to_id("<|endoftext|>")
    return {"tokenizer": "tokenizer.json", "generation": graph_spec_of(cfg, eos).as_meta()}


def _stage_tokenizer(opts: ImportOptions, staging: Path) -> None:
    if opts.task not in ("text-classification", "text-embedding", "text-generation"):
        return
    src = opts.tokenizer or (opts.hf / "tokenizer.json" if opts.hf else None)
    if src is None or not src.is_file():
        raise BuildError(f"tokenizer missing: {src or 'no --tokenizer given'} (text tasks need a Hugging Face "
                         "tokenizer.json: --tokenizer FILE, or inside the --hf directory)")
    shutil.copyfile(src, staging / "tokenizer.json")


# --- export --------------------------------------------------------------------------------
def _export(builder: ImportedBuilder, md: ModelDir, example: dict[str, np.ndarray] | None, log: Log) -> None:
    out = md.export_dir
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "model.onnx"
    source = builder.source
    report: dict[str, Any] = {"source": source.kind, "opset": OPSET}
    if builder.task == "text-generation":
        half, codec = builder.half, builder.codec()
        assert isinstance(codec, GenerationCodec)
        report["exporter"] = half.export(source.module, codec.spec, dest)
        session = load_session(dest, builder.settings.threads, cpu_only=True)
        report["parity"] = half.parity(source.module, session, codec, builder.data().items,
                                       builder.opts.parity_tolerance)
        log(f"[{builder.key}] export with the KV cache: logits within {report['parity']['logits_max_abs_diff']:.2e} "
            f"of torch, greedy tokens equal to transformers' generate")
        builder.signature = graph_signature(dest)
        shutil.copyfile(dest, out / "model.legacy.onnx")
        write_json(out / "export.json", report)
        return
    if source.onnx_path is not None:
        shutil.copyfile(source.onnx_path, dest)
    else:
        feed = example or builder.codec().encode(builder.eval_items()[:4])
        report["parity_max_abs_diff"] = _torch_to_onnx(builder, source.module, feed, dest)
        report["tolerance"] = builder.opts.parity_tolerance
        log(f"[{builder.key}] export: parity with torch, max abs diff {report['parity_max_abs_diff']:.2e}")
    shutil.copyfile(dest, out / "model.legacy.onnx")  # what int8 and fusion read
    builder.signature = {"inputs": builder.signature["inputs"], "outputs": graph_signature(dest)["outputs"]}
    write_json(out / "export.json", report)


def _torch_to_onnx(builder: ImportedBuilder, module: Any, feed: dict[str, np.ndarray], dest: Path) -> float:
    import torch

    names = [i["name"] for i in builder.signature["inputs"]]
    args = tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
    with torch.no_grad():
        ref = module(*args)
    refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
    outputs = builder.opts.output_names or (["logits"] if builder.task.endswith("classification") and len(refs) == 1
                                            else [f"output_{i}" if len(refs) > 1 else "output"
                                                  for i in range(len(refs))])
    if len(outputs) != len(refs):
        raise BuildError(f"--output-name gives {len(outputs)} names; the module returns {len(refs)} tensors")
    axes = {i["name"]: {k: str(d) for k, d in enumerate(i["shape"]) if isinstance(d, str)}
            for i in builder.signature["inputs"]}
    axes.update(zip(outputs, builder.half.output_axes(len(outputs)), strict=True))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(dest), input_names=names, output_names=outputs, dynamic_axes=axes,
                              dynamo=False, opset_version=OPSET)
    except Exception as exc:  # the exporter names the operator it cannot convert
        message = str(exc).strip().splitlines()[0][:300] or type(exc).__name__
        raise BuildError(f"export to ONNX failed: {message}") from None
    session = load_session(dest, builder.settings.threads, cpu_only=True)
    got = session.run(outputs, {n: np.ascontiguousarray(feed[n]) for n in names})
    diff = max(float(np.abs(np.asarray(g, np.float64) - r.detach().numpy().astype(np.float64)).max())
               for g, r in zip(got, refs, strict=True))
    if diff > builder.opts.parity_tolerance:
        raise BuildError(f"ONNX export differs from torch by {diff:.2e}, over --parity-tolerance "
                         f"{builder.opts.parity_tolerance:.0e}")
    return diff


# --- the whole import ------------------------------------------------------------------------
def prepare(opts: ImportOptions, settings: BuildSettings, log: Log) -> tuple[ImportedBuilder, ModelDir]:
    """Everything before optimization: source, signature, data, export with its parity check."""
    try:
        get_task(opts.task)
    except KeyError as exc:
        raise BuildError(f"--task: {str(exc).strip(chr(39))}") from None
    bad = [v for v in opts.variants if v not in VARIANTS]
    if bad:
        raise BuildError(f"--variant {bad[0]!r}: imports take {', '.join(VARIANTS)}")
    check_store_writable()
    source = _load_source(opts)
    inputs, example = _inputs(opts, source)
    labels = _labels(opts, source)
    md = ModelDir(settings.work_dir, f"import-{opts.name}")
    shutil.rmtree(md.base, ignore_errors=True)  # an import always starts clean
    staging = md.base / "staging"
    staging.mkdir(parents=True)
    _stage_tokenizer(opts, staging)
    signature = {"inputs": inputs, "outputs": [{"name": "output", "dtype": "float32", "shape": ["batch"]}]}
    if opts.task == "text-generation":
        builder: ImportedBuilder = GenerationBuilder(settings, opts, signature,
                                                     _generation_preprocess(source, staging), staging, source)
    else:
        builder = ImportedBuilder(settings, opts, signature, _preprocess(opts, inputs, labels), staging, source)
    codec = builder.codec()
    if opts.validation:
        builder.validation = builder.half.load(opts.validation, codec, labels, True)
    if opts.calibration:
        builder.calibration = builder.half.load(opts.calibration, codec, labels, False)
    if builder.validation is None and builder.calibration is None:
        raise BuildError("give --validation (inputs with labels) or --calibration (inputs): each variant is "
                         "gated against fp32 on your data")
    log(f"[{opts.name}] export ({source.kind})")
    _export(builder, md, example, log)
    _check_data_fits(builder)
    return builder, md


def _check_data_fits(builder: ImportedBuilder) -> None:
    """Run the exported graph on the first rows: a validation file of the wrong shape fails here, named."""
    data = builder.data()
    try:
        rows = run_rows(load_session(ModelDir(builder.settings.work_dir, f"import-{builder.key}").require_export(),
                                     builder.settings.threads, cpu_only=True), builder.codec(), data.items[:2])
    except Exception as exc:
        raise BuildError(f"{data.source} does not fit the model's inputs "
                         f"({', '.join(str(i['shape']) for i in builder.signature['inputs'])}): "
                         f"{str(exc).splitlines()[0][:200]}") from None
    if data.labels is not None and not isinstance(rows[0], dict):
        check_labels(data.labels, len(np.atleast_1d(rows[0])), data.source)


def cause_of(exc: BaseException) -> str:
    """One line: the exception, its first line, and the file it came from (whose tool failed)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (in {'/'.join(Path(frames[-1].filename).parts[-3:])})" if frames else ""
    first = next(iter(str(exc).strip().splitlines()), "")[:240]
    return f"{type(exc).__name__}: {first}{where}"


def run_import(opts: ImportOptions, settings: BuildSettings, log: Log) -> list[str]:
    from tqdm import tqdm

    from models.benchmark import benchmark, write_report
    from models.optimize import optimize
    from models.registry import register
    from models.validate import validate

    builder, md = prepare(opts, settings, log)
    variants = list(opts.variants)
    skipped: dict[str, str] = {}
    if "int8-static" in variants and builder.calibration is None:
        variants.remove("int8-static")
        skipped["int8-static"] = "it calibrates on your inputs; give --calibration FILE"
        log(f"[{opts.name}] int8-static skipped: {skipped['int8-static']}")
    if any(v != "fp32" for v in variants) and "fp32" not in variants:
        variants.insert(0, "fp32")  # fp16 starts from it, and it is every variant's reference
    failures = []
    # Every variant is optimized and gated before any is registered: a gate failure stores nothing. A variant
    # the tools cannot build (a quantizer that does not know a foreign graph's operators) is skipped instead:
    # the others go on, since nothing about them depends on it.
    for variant in tqdm(variants, desc=f"optimize and gate {opts.name}", unit="variant"):
        try:
            optimize(builder, md, variant)
            validate(builder, md, variant, opts.max_drop, opts.force)
        except BuildError as exc:
            failures.append(str(exc))
        except Exception as exc:  # any tool's failure on this one graph, reported in one line
            if variant == "fp32":
                raise BuildError(f"fp32 cannot be built from this graph: {cause_of(exc)}") from None
            skipped[variant] = f"cannot be built: {cause_of(exc)}"
            shutil.rmtree(md.variant_dir(variant), ignore_errors=True)
            log(f"[{opts.name}] {variant} skipped: {skipped[variant]}")
    if failures:
        raise BuildError("; ".join(failures))
    variants = [v for v in variants if v not in skipped]
    tags = []
    for variant in tqdm(variants, desc=f"benchmark and register {opts.name}", unit="variant"):
        benchmark(builder, md, variant, latency_iters=20, seconds=0.5)
        tags.append(register(builder, md, variant, opts.force))
        log(f"[{opts.name}] registered {tags[-1]}")
    log(f"[{opts.name}] registered {', '.join(variants)}"
        + "".join(f"; skipped {v} ({why})" for v, why in skipped.items()))
    write_report(md)
    return tags
