"""`python -m models`: build, inspect and verify Switchyard's model versions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from models.errors import BuildError
from models.settings import BuildSettings

DESCRIPTION = """\
Build optimized, validated model versions into the BentoML model store.

Models: digits-mlp, digits-cnn (scikit-learn digits) and minilm (all-MiniLM-L6-v2).
Variants: fp32, int8-dynamic, int8-static, fp16, pruned, distilled (digits-cnn only).

Typical use:
  python -m models build --all                 the default set (what `make serve` builds)
  python -m models build digits-cnn --variant int8-static
  python -m models list                        registered versions and key metrics
  python -m models verify digits-cnn-fp32:latest

Each stage also runs alone, in this order, reading and writing --work-dir:
  train (digits only) -> export -> optimize -> validate -> benchmark -> register

Your own model (PyTorch, TorchScript, a Hugging Face directory or ONNX) takes one command:
  python -m models import --help
"""

IMPORT_HELP = r"""Import your own model: export it to ONNX (parity-checked against torch), optimize it
(fp32, int8-dynamic, int8-static, fp16), gate every variant against fp32 on your data,
and register the ones that pass, with their task, signature, preprocessing, lineage and hashes.

Examples:
  python -m models import --name my-cnn --task image-classification \
      --torch my_model.py:build --state-dict weights.pt --input image:float32:batch,3,32,32 \
      --labels labels.txt --validation val.npz --calibration calib.npz
  python -m models import --name reviews --task text-classification --hf ./my-bert \
      --validation val.jsonl --calibration sentences.txt
  python -m models import --name ranker --task tensor --onnx ranker.onnx --calibration inputs.npz
  python -m models import --name writer --task text-generation --hf ./my-gpt2 --validation text.txt \
      --variant fp32 --variant int8-dynamic

Data: --validation has labels (.npz with inputs and labels, a folder of class sub-folders of
images, or a .jsonl of {"text", "label"}); --calibration has inputs only (.npz, a folder of
images, or a text file of sentences). With labels the gate is the accuracy drop against fp32
(--max-drop points); without, agreement with fp32 (--min-agreement for classifiers,
--min-cosine and --min-p01-cosine for embeddings, --max-rel-l2 for tensors). Text generation
takes plain text (one passage a line) and is judged on perplexity (--max-perplexity-ratio) and
greedy next-token agreement (--min-token-agreement) against fp32; its graph keeps the KV cache.
Then deploy it: PUT /v1/admin/deployments/ENDPOINT, or start a rollout (docs/serve-your-own-model.md).
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work-dir", help="intermediate artifacts (env SWITCHYARD_WORK_DIR, default ./build)")
    common.add_argument("--threads", type=int, help="intra-op threads (env SWITCHYARD_THREADS, default 2)")
    common.add_argument("--seed", type=int, help="training and sampling seed (env SWITCHYARD_SEED, default 0)")

    p = argparse.ArgumentParser(prog="python -m models", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, parents=[common], description=help_)

    def gate_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--max-drop", type=float, default=1.0,
                        help="digits: largest accuracy drop, in points, against fp32 (default 1.0)")
        sp.add_argument("--force", action="store_true", help="register even when the gate fails")

    cmd("train", "train a digits model from scratch (seeded, deterministic)").add_argument("model")
    cmd("export", "export to ONNX (dynamo and TorchScript-based) and TorchScript, with parity checks") \
        .add_argument("model")
    for name, help_ in (("optimize", "produce one variant from the exported graph"),
                        ("validate", "check a variant against the fp32 baseline (the accuracy gate)"),
                        ("register", "store a validated variant in the BentoML model store")):
        sp = cmd(name, help_)
        sp.add_argument("model")
        sp.add_argument("--variant", required=True)
        if name != "optimize":
            gate_opts(sp)
    sp = cmd("benchmark", "latency p50/p95/p99, throughput at batch 1/8/32/64, size and peak RSS")
    sp.add_argument("model")
    sp.add_argument("--variant", action="append", help="repeatable; default: every optimized variant")
    sp.add_argument("--torch", action="store_true", help="also measure torch eager fp32, the reference")
    sp.add_argument("--iterations", type=int, default=50, help="batch-1 latency samples (default 50)")
    sp.add_argument("--seconds", type=float, default=1.0, help="time per throughput point (default 1.0)")
    sp = cmd("build", "run the whole chain for one model, or the default set with --all")
    sp.add_argument("model", nargs="?")
    sp.add_argument("--variant", action="append", help="repeatable (default fp32)")
    sp.add_argument("--all", action="store_true", help="build the default set")
    sp.add_argument("--if-missing", action="store_true", help="skip versions already in the store")
    sp.add_argument("--seconds", type=float, default=1.0, help="time per throughput point (default 1.0)")
    gate_opts(sp)
    _import_parser(sub, common)
    cmd("list", "registered versions with their key metrics").add_argument("--json", action="store_true")
    cmd("verify", "re-check every artifact's sha256 and the manifest's signature").add_argument("tag")
    signer = cmd("sign", "sign versions stored before signing existed (after checking their sha256)")
    signer.add_argument("tags", nargs="*", metavar="TAG")
    signer.add_argument("--unsigned", action="store_true", help="every unsigned Switchyard version in the store")
    return p


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 32 or 32x32, got {text!r}") from None


def _import_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sp = sub.add_parser("import", help="import your own model (PyTorch, TorchScript, Hugging Face, ONNX)",
                        parents=[common], description=IMPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    req = sp.add_argument_group("what and where from (one source)")
    req.add_argument("--name", required=True, help="model name in the store: [a-z0-9-], up to 40")
    req.add_argument("--task", required=True, help="image-classification, text-classification, text-embedding, tensor, "
                     "text-generation")
    req.add_argument("--torch", metavar="FILE.py:FACTORY", help="or package.module:factory; returns an nn.Module")
    req.add_argument("--state-dict", type=Path, help="weights for --torch, loaded with weights_only=True")
    req.add_argument("--torchscript", type=Path, metavar="FILE", help="a TorchScript file")
    req.add_argument("--hf", type=Path, metavar="DIR", help="a local Hugging Face directory (config.json, "
                     "model.safetensors, tokenizer.json)")
    req.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX file; its signature is read from the graph")
    sig = sp.add_argument_group("input signature (PyTorch sources)")
    sig.add_argument("--input", dest="inputs", action="append", default=[], metavar="NAME:DTYPE:SHAPE",
                     help="repeatable, e.g. image:float32:batch,3,32,32 (symbolic axes are names)")
    sig.add_argument("--example", type=Path, metavar="FILE.npz", help="example inputs by name, batch first")
    sig.add_argument("--output-name", dest="output_names", action="append", default=[],
                     help="names for the module's outputs, in order (default: logits for classifiers, else output)")
    data = sp.add_argument_group("data and the gate")
    data.add_argument("--validation", type=Path, help="inputs with labels (see above)")
    data.add_argument("--calibration", type=Path, help="inputs for int8-static and the unlabeled gate")
    data.add_argument("--variant", dest="variants", action="append", help="repeatable; default fp32, int8-dynamic, "
                      "int8-static (also: int4, weight-only for transformers; fp16)")
    data.add_argument("--max-drop", type=float, default=1.0, help="accuracy points a variant may lose (default 1.0)")
    data.add_argument("--min-agreement", type=float, default=0.99, help="top-1 agreement with fp32 (default 0.99)")
    data.add_argument("--min-cosine", type=float, default=0.99, help="mean cosine with fp32 (default 0.99)")
    data.add_argument("--min-p01-cosine", type=float, default=0.98, help="1st-percentile cosine (default 0.98)")
    data.add_argument("--max-rel-l2", type=float, default=0.01, help="relative L2 distance to fp32 (default 0.01)")
    data.add_argument("--max-perplexity-ratio", type=float, default=1.05,
                      help="text-generation: a variant's perplexity over fp32's (default 1.05)")
    data.add_argument("--min-token-agreement", type=float, default=0.9,
                      help="text-generation: greedy next-token agreement with fp32 (default 0.9)")
    data.add_argument("--parity-tolerance", type=float, default=1e-4, help="ONNX vs torch, max abs (default 1e-4)")
    data.add_argument("--force", action="store_true", help="register variants that fail the gate")
    data.add_argument("--allow-non-finite", action="store_true",
                      help="serving passes NaN and Infinity in inputs to the model (default: refused with 422)")
    pre = sp.add_argument_group("preprocessing, stored with the model")
    pre.add_argument("--labels", type=Path, help="class names, one per line (Hugging Face: id2label by default)")
    pre.add_argument("--image-size", type=_ints, help="HxW the model takes (default: from the input shape)")
    pre.add_argument("--mean", type=_floats, help="per channel, after scaling to 0..1, e.g. 0.485,0.456,0.406")
    pre.add_argument("--std", type=_floats, help="per channel, e.g. 0.229,0.224,0.225")
    pre.add_argument("--channels", choices=["RGB", "L"], default="RGB")
    pre.add_argument("--layout", choices=["CHW", "HWC"], default="CHW")
    pre.add_argument("--outputs-are", choices=["logits", "probabilities"], default="logits")
    pre.add_argument("--tokenizer", type=Path, help="tokenizer.json for text tasks (default: the --hf one)")
    pre.add_argument("--max-tokens", type=int, default=256)
    pre.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="text-embedding (default mean)")
    pre.add_argument("--no-normalize", dest="normalize", action="store_false", help="text-embedding: keep norms")
    pre.add_argument("--multi-label", action="store_true", help="text-classification: sigmoid per label")
    pre.add_argument("--threshold", type=float, default=0.5, help="multi-label threshold (default 0.5)")


def _import(args: argparse.Namespace) -> list[str]:
    from pydantic import ValidationError

    from models.importer import ImportOptions, run_import

    fields = {k: v for k, v in vars(args).items() if k in ImportOptions.model_fields and v is not None}
    try:
        opts = ImportOptions(**fields)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        raise BuildError(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}") from None
    tags = run_import(opts, _settings(args), _log)
    for tag in tags:
        print(tag)
    return tags


def _settings(args: argparse.Namespace) -> BuildSettings:
    overrides = {k: v for k, v in (("work_dir", args.work_dir), ("threads", args.threads), ("seed", args.seed))
                 if v is not None}
    return BuildSettings(**overrides)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sign(tags: list[str], unsigned: bool) -> None:
    from models.registry import describe_all, sign_stored

    if bool(tags) == unsigned:
        raise BuildError("sign takes TAG... or --unsigned (not both)")
    for tag in tags or [row["tag"] for row in describe_all() if not row["signed_with"]]:
        print(sign_stored(tag))


def run(args: argparse.Namespace) -> Any:
    if args.command == "list":
        return _list(args.json)
    if args.command == "import":
        _import(args)
        return None
    if args.command == "verify":
        from models.registry import verify

        hashes = verify(args.tag)
        print(f"{args.tag}: {len(hashes)} artifacts match their recorded sha256; the manifest its signature")
        return None
    if args.command == "sign":
        return _sign(args.tags, args.unsigned)

    from models.families import BUILDERS, DEFAULT_SET, check_variant, get_builder
    from models.workdir import ModelDir

    settings = _settings(args)
    if args.command == "build":
        if args.all == bool(args.model):
            raise BuildError("build takes a MODEL or --all (not both); models: " + ", ".join(BUILDERS))
        targets = list(DEFAULT_SET) if args.all else [(args.model, v) for v in (args.variant or ["fp32"])]
        return _build(targets, settings, args)

    builder = get_builder(args.model, settings)
    md = ModelDir(settings.work_dir, builder.key)
    if hasattr(args, "variant") and isinstance(args.variant, str):
        check_variant(builder, args.variant)
    if args.command == "train":
        from models.families.digits import DigitsBuilder

        if not isinstance(builder, DigitsBuilder):
            raise BuildError(f"{builder.key} is pretrained; train is for digits models. "
                             f"Next: `python -m models export {builder.key}`")
        return builder.train(md)
    if args.command == "export":
        from models.export import export

        return export(builder, md)
    if args.command == "optimize":
        from models.optimize import optimize

        return optimize(builder, md, args.variant)
    if args.command == "validate":
        from models.validate import validate

        return validate(builder, md, args.variant, args.max_drop, args.force)
    if args.command == "register":
        from models.registry import register

        tag = register(builder, md, args.variant, args.force)
        print(tag)
        return None
    if args.command == "benchmark":
        return _benchmark(builder, md, args)
    raise BuildError(f"unknown command {args.command}")


def _benchmark(builder: Any, md: Any, args: argparse.Namespace) -> str:
    from models.benchmark import TORCH_EAGER, benchmark, write_report
    from models.families import check_variant

    variants = args.variant or sorted(p.parent.name for p in md.base.glob("*/model.onnx"))
    for v in variants:
        check_variant(builder, v)
    if not variants and not args.torch:
        raise BuildError(f"nothing to benchmark for {builder.key}: run `python -m models optimize` first")
    for v in variants + ([TORCH_EAGER] if args.torch else []):
        _log(f"[{builder.key}] benchmark {v}")
        benchmark(builder, md, v, args.iterations, args.seconds)
    report = write_report(md)
    print(report.read_text())
    return str(report)


def _build(targets: list[tuple[str, str]], settings: BuildSettings, args: argparse.Namespace) -> list[str]:
    from models.families import check_variant, get_builder
    from models.pipeline import build
    from models.registry import check_store_writable, latest_tag, model_name
    from models.workdir import ModelDir

    builders = {key: get_builder(key, settings) for key, _ in targets}
    for key, variant in targets:  # reject a bad request before any work starts
        check_variant(builders[key], variant)
    check_store_writable()
    tags, failures = [], []
    for key, variant in targets:
        existing = latest_tag(model_name(key, variant)) if args.if_missing else None
        if existing:
            _log(f"[{key}] {variant}: already registered as {existing}")
            tags.append(existing)
            continue
        try:
            result = build(builders[key], ModelDir(settings.work_dir, key), variant, max_drop=args.max_drop,
                           force=args.force, log=_log, seconds=args.seconds)
        except BuildError as exc:  # one failing variant does not stop the others
            _log(f"[{key}] {variant}: {exc}")
            failures.append(f"{key} {variant}")
            continue
        tags.append(result["tag"])
    for tag in tags:
        print(tag)
    if failures:
        raise BuildError(f"{len(failures)} of {len(targets)} versions were not registered: {', '.join(failures)}")
    return tags


def _list(as_json: bool) -> None:
    from models.registry import describe_all

    rows = describe_all()
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("no switchyard models in the store; run `python -m models build --all`")
        return
    print(f"{'TAG':<44} {'VARIANT':<13} {'QUALITY':<14} {'SIZE MB':>8} {'P50 MS':>7}  CREATED")
    for r in rows:
        p50 = f"{r['p50_ms']:.2f}" if r["p50_ms"] is not None else "-"
        size = f"{r['size_bytes'] / 1e6:.2f}" if r["size_bytes"] else "-"
        print(f"{r['tag']:<44} {r['labels'].get('variant', '-'):<13} {r['headline']:<14} {size:>8} {p50:>7}  "
              f"{r['created'][:19]}")


def _quiet_libraries() -> None:
    # ORT's quantizer and torch's exporter log advice meant for their developers.
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    try:
        result = run(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0
