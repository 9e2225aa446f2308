"""`make bench`: the optimization table, torch eager fp32 against every ORT variant.

Also two imported models, made here the way a user brings theirs (bench/user_models.py): a
CNN from a user's file with its state dict, and a BERT-style classifier from a Hugging Face
directory, through `python -m models import`'s stages; their rows compare with fp32.

For digits-cnn and minilm it builds what is missing in the work dir (no store writes),
validates (recording failures rather than stopping), benchmarks every variant in a
fresh process, prints one table per family with ratios to torch eager, and writes
docs/optimization.md plus a throughput plot per family. Every figure comes from this run.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.benchmark import TORCH_EAGER, benchmark, write_report  # noqa: E402
from models.errors import BuildError  # noqa: E402
from models.families import get_builder  # noqa: E402
from models.optimize import optimize  # noqa: E402
from models.pipeline import ensure_exported  # noqa: E402
from models.settings import BuildSettings  # noqa: E402
from models.validate import validate  # noqa: E402
from models.workdir import ModelDir  # noqa: E402

MODELS = {"digits-cnn": ("fp32", "int8-dynamic", "int8-static", "fp16", "pruned", "distilled"),
          "minilm": ("fp32", "int8-dynamic", "int8-static", "fp16", "pruned")}


def measure(key: str, variants: tuple[str, ...], settings: BuildSettings, seconds: float) -> dict[str, Any]:
    builder = get_builder(key, settings)
    md = ModelDir(settings.work_dir, key)
    ensure_exported(builder, md, print)
    rows: dict[str, Any] = {}
    for variant in variants:
        if not (md.variant_dir(variant) / "model.onnx").is_file():
            print(f"[{key}] optimize {variant}", flush=True)
            optimize(builder, md, variant)
        try:
            quality = validate(builder, md, variant, max_drop=1.0, force=True)
        except BuildError as exc:
            quality = {"passed": False, "failures": [str(exc)], "metrics": {}}
        print(f"[{key}] benchmark {variant}", flush=True)
        rows[variant] = {"bench": benchmark(builder, md, variant, 100, seconds), "quality": quality}
    print(f"[{key}] benchmark torch eager", flush=True)
    rows[TORCH_EAGER] = {"bench": benchmark(builder, md, TORCH_EAGER, 100, seconds), "quality": None}
    write_report(md)
    return rows


IMPORTED = ("fp32", "int8-dynamic", "int8-static", "fp16")


def measure_imported(settings: BuildSettings, seconds: float) -> dict[str, dict[str, Any]]:
    """Both imports, prepared and optimized in the work dir and gated on their data (nothing registered)."""
    from bench.user_models import hf_sentiment_dir, review_rows, user_cnn_files
    from models.importer import ImportOptions, prepare

    data = settings.work_dir / "bench-imports"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    user_cnn_files(data)
    hf_sentiment_dir(data / "hf")
    (data / "reviews.jsonl").write_text("\n".join(f'{{"text": "{t}", "label": "{lab}"}}' for t, lab in review_rows()))
    (data / "sentences.txt").write_text("\n".join(t for t, _ in review_rows()))
    imports = {
        "imported CNN (--torch)": ImportOptions(
            name="bench-cnn", task="image-classification", torch=f"{data}/my_cnn.py:build",
            state_dict=data / "weights.pt", inputs=["image:float32:batch,3,16,16"], labels=data / "labels.txt",
            mean=[0.5] * 3, std=[0.5] * 3, validation=data / "val.npz", calibration=data / "calib.npz"),
        "imported BERT-style classifier (--hf)": ImportOptions(
            name="bench-bert", task="text-classification", hf=data / "hf", validation=data / "reviews.jsonl",
            calibration=data / "sentences.txt"),
    }
    out = {}
    for title, opts in imports.items():
        builder, md = prepare(opts, settings, print)
        rows: dict[str, Any] = {}
        for variant in IMPORTED:
            print(f"[{opts.name}] optimize, validate and benchmark {variant}", flush=True)
            optimize(builder, md, variant)
            try:
                quality = validate(builder, md, variant, max_drop=opts.max_drop, force=True)
            except BuildError as exc:
                quality = {"passed": False, "failures": [str(exc)], "metrics": {}}
            rows[variant] = {"bench": benchmark(builder, md, variant, 100, seconds), "quality": quality}
        out[title] = rows
    return out


def imported_table(title: str, rows: dict[str, Any]) -> str:
    ref = rows["fp32"]["bench"]
    lines = [f"### {title}", "", "| variant | size MB | smaller than fp32 | b1 p50 ms | b1 vs fp32 | b32 rows/s "
             "| b32 vs fp32 | quality against fp32 | gate |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        b, m = row["bench"], row["quality"]["metrics"]
        p50, b32 = b["latency_ms"]["p50"], b["throughput_rows_per_s"]["32"]
        quality = (f"acc {m['accuracy'] * 100:.2f}% (drop {m['accuracy_drop_points']:.2f} pt), "
                   f"top-1 agreement {m['top1_agreement']:.4f}") if m else "-"
        lines.append(f"| {name} | {b['size_bytes'] / 1e6:.3f} | {ref['size_bytes'] / b['size_bytes']:.2f}x "
                     f"| {p50:.3f} | {ref['latency_ms']['p50'] / p50:.2f}x | {b32:.0f} "
                     f"| {b32 / ref['throughput_rows_per_s']['32']:.2f}x | {quality} "
                     f"| {'pass' if row['quality']['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def table(key: str, rows: dict[str, Any]) -> str:
    ref = rows[TORCH_EAGER]["bench"]
    fp32_size = rows["fp32"]["bench"]["size_bytes"]
    head = ("| variant | size MB | smaller than fp32 | b1 p50 ms | b1 speed-up vs torch | b32 rows/s "
            "| b32 vs torch | quality | gate |")
    lines = [f"### {key}", "", head, "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        b = row["bench"]
        p50, b32 = b["latency_ms"]["p50"], b["throughput_rows_per_s"]["32"]
        size = b["size_bytes"] or 0  # 0: nothing stored (torch eager of a pretrained model)
        size_mb, smaller = (f"{size / 1e6:.2f}", f"{fp32_size / size:.2f}x") if size else ("-", "-")
        quality, gate = "fp32 reference", "-"
        if row["quality"] is not None:
            m = row["quality"]["metrics"]
            quality = (f"acc {m['accuracy'] * 100:.2f}% (drop {m['accuracy_drop_points']:.2f} pt)" if "accuracy" in m
                       else f"cos mean {m['mean_cosine']:.4f} p1 {m['p1_cosine']:.4f}, "
                            f"batch-inv {m['batch_invariance_min_cosine']:.4f}")
            gate = "pass" if row["quality"]["passed"] else "FAIL"
        lines.append(
            f"| {name} | {size_mb} | {smaller} | {p50:.2f} "
            f"| {ref['latency_ms']['p50'] / p50:.2f}x | {b32:.0f} | {b32 / ref['throughput_rows_per_s']['32']:.2f}x "
            f"| {quality} | {gate} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per throughput point")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "optimization.md")
    args = parser.parse_args()
    settings = BuildSettings()
    sections = []
    for key, variants in MODELS.items():
        sections.append(table(key, measure(key, variants, settings, args.seconds)))
        plot = settings.work_dir / key / "benchmark.png"
        shutil.copyfile(plot, args.out.parent / f"optimization-{key}.png")
    sections.append("## Imported models\n\nMade by bench/user_models.py and taken through the import stages "
                    "(`python -m models import`); each variant is gated and compared with the imported fp32 graph "
                    "on the model's own validation data.\n")
    for title, rows in measure_imported(settings, args.seconds).items():
        sections.append(imported_table(title, rows))
    header = (f"# Optimization table\n\nGenerated by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{platform.processor() or platform.machine()}, {settings.threads} intra-op threads, one run. "
              "Ratios compare with torch eager fp32 in the same run. Batch-1 latency includes tokenization.\n\n")
    text = header + "\n".join(sections)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
