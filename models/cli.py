"""`python -m models`: build, inspect and verify Switchyard's model versions."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
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
    cmd("list", "registered versions with their key metrics").add_argument("--json", action="store_true")
    cmd("verify", "re-check the sha256 of every artifact of a stored version").add_argument("tag")
    return p


def _settings(args: argparse.Namespace) -> BuildSettings:
    overrides = {k: v for k, v in (("work_dir", args.work_dir), ("threads", args.threads), ("seed", args.seed))
                 if v is not None}
    return BuildSettings(**overrides)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> Any:
    if args.command == "list":
        return _list(args.json)
    if args.command == "verify":
        from models.registry import verify

        hashes = verify(args.tag)
        print(f"{args.tag}: {len(hashes)} artifacts match their recorded sha256")
        return None

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
