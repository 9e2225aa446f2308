"""fp32, int8-dynamic and int4 (weight-only) of one causal LM: file size, the gate's figures, tokens per second.

The generation benchmark's model (bench/generation.py: GPT-2 architecture, 256 wide, 6 layers, 2,000-token
vocabulary), imported as a user imports theirs, `python -m models import --task text-generation` with the
three variants and the default gate (perplexity within 1.05x of fp32's, greedy agreement at least 0.9, on
the benchmark's validation text). Tokens per second are the in-process decode loop's (the serving runner
without a server: the ceiling a server adds to), 64 greedy tokens after five-word prompts, at 1 and 8 rows,
median of 5 runs, one ONNX Runtime thread. Writes bench/results/int4.json and docs/benchmarks-int4.md.

    python bench/int4.py                          # about 2 minutes
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import BENCH_LM, LM_DIR, begin_report, in_process, model_dir  # noqa: E402
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402

VARIANTS = ("fp32", "int8-dynamic", "int4")
NAME = "bench-gpt2q"


def import_variants(hf: Path) -> dict[str, str]:
    """The three variants in the store (imported once); a variant the gate refused is absent."""
    from models.tiny_lm import sentences

    tags_file = LM_DIR / "quant-tags.json"
    if tags_file.is_file():
        return dict(json.loads(tags_file.read_text()))
    text = LM_DIR / "validation.txt"
    text.write_text("\n".join(sentences("english", 40, seed=5)) + "\n")
    args = [sys.executable, "-m", "models", "import", "--name", NAME, "--task", "text-generation", "--hf", str(hf),
            "--validation", str(text)]
    for v in VARIANTS:
        args += ["--variant", v]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    print(proc.stderr[-1500:])
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {proc.stderr[-2000:]}")
    tags = {v: t for t in proc.stdout.split() for v in VARIANTS if t.startswith(f"{NAME}-{v}:")}
    tags_file.write_text(json.dumps(tags))
    return tags


def row(variant: str, tag: str | None) -> dict[str, Any]:
    if tag is None:
        return {"variant": variant, "tag": None}
    import bentoml

    model = bentoml.models.get(tag)
    meta: dict[str, Any] = dict(model.info.metadata)
    metrics = meta.get("metrics", {}).get("validate", {})
    points = {p.streams: p.tokens_per_s for p in in_process(tag, [1, 8], 1)}
    return {"variant": variant, "tag": tag, "file_mb": (Path(model.path) / "model.onnx").stat().st_size / 1e6,
            "perplexity": metrics.get("perplexity"), "perplexity_ratio": metrics.get("perplexity_ratio"),
            "agreement": metrics.get("next_token_agreement"), "gate": meta.get("gate", {}).get("passed"),
            "tokens_per_s_1": points[1], "tokens_per_s_8": points[8]}


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta, rows = data["meta"], data["rows"]
    lines = ["# int4 weight-only against int8 and fp32", "",
             written_by("int4.py", results, meta), "",
             "Perplexity and greedy agreement are the import gate's, on the benchmark's validation text, against "
             "fp32. Tokens per second: the in-process decode loop (no server), 64 greedy tokens, one ONNX Runtime "
             "thread, median of 5.", "",
             "| variant | file | perplexity | vs fp32 | greedy agreement | gate | tokens/s, 1 row | tokens/s, 8 rows |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        if r["tag"] is None:
            lines.append(f"| {r['variant']} | refused by the gate (the import's output says why) ||||||| ")
            continue
        agreement = "" if r["agreement"] is None else f"{r['agreement']:.3f}"
        ratio = "" if r["perplexity_ratio"] is None else f"{r['perplexity_ratio']:.4f}x"
        ppl = "" if r["perplexity"] is None else f"{r['perplexity']:.3f}"
        lines.append(f"| {r['variant']} | {r['file_mb']:.1f} MB | {ppl} | {ratio} | {agreement} | "
                     f"{'passed' if r['gate'] else 'failed'} | {r['tokens_per_s_1']:.0f} | {r['tokens_per_s_8']:.0f} |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = report_parser(__doc__, "int4")
    args = parser.parse_args()
    commit = begin_report(args, render, threads=False)
    if commit is None:
        return
    tags = import_variants(model_dir(90.0))
    rows = [row(v, tags.get(v)) for v in VARIANTS]
    meta = run_meta(commit, model=BENCH_LM.removesuffix(", fp32 ONNX"))
    write_report(args.results, args.out, {"meta": meta, "rows": rows}, render)


if __name__ == "__main__":
    main()
