"""Structured output's cost: the token mask per step, and tokens per second with and without a JSON schema.

The generation benchmark's model (bench/generation.py) and its own 2,000-token tokenizer, in the serving
runner in process (no server), one ONNX Runtime thread. Each request asks for 64 tokens after a five-word
prompt; constrained ones follow a JSON schema of an enum, an integer and a string of up to 200 characters
(so that the text runs to 64 tokens instead of closing early), compact JSON. Reported per row count (1, 8):
tokens per second without a format and with the schema (median of 5 runs), and the time spent computing and
applying the masks per step and constrained row: p50 and p99 over the steps after the first, and the first
(where llguidance builds its lexer states). Also the compile time of the schema and of the
tokenizer. Writes bench/results/structured.json and docs/benchmarks-structured.md.

    python bench/structured.py                    # about a minute
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import BENCH_LM, begin_report, import_model, model_dir, prompts  # noqa: E402
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402

NEW_TOKENS = 64
ROWS = (1, 8)
SCHEMA = {"type": "object", "properties": {"animal": {"enum": ["cat", "dog", "bird"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 999},
                                           "note": {"type": "string", "maxLength": 200}},
          "required": ["animal", "count", "note"], "additionalProperties": False}


def run(version: Any, rows: int, offset: int, grammars: Any, steps: list[float]) -> float:
    """Tokens per second of one batch of `rows` requests (constrained when `grammars` is given); each step's
    mask seconds per row appended to `steps`."""
    from bentos.dataplane.decode.runner import DecodeRunner
    from bentos.dataplane.decode.scheduler import StepPlan
    from bentos.tasks.text_generation import OutputFormat, SamplingParams

    fmt = OutputFormat("json_schema", json.dumps(SCHEMA))
    runner = DecodeRunner(version.session, version.codec)
    masks = runner._masks
    apply = masks.apply

    def timed(logits: Any, constrained: Any) -> None:
        began = time.perf_counter()
        apply(logits, constrained)
        steps.append((time.perf_counter() - began) / len(constrained))

    masks.apply = timed  # type: ignore[method-assign,assignment]
    texts = prompts()
    ids = tuple(f"r{i}" for i in range(rows))
    for i, rid in enumerate(ids):
        matcher = grammars.matcher(fmt) if grammars else None
        prompt = version.codec.tokenize(texts[(i + offset) % len(texts)])
        runner.add(rid, prompt, SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True),
                   matcher=matcher)
    began = time.perf_counter()
    runner.step(StepPlan(prefill=ids))
    for _ in range(NEW_TOKENS - 1):
        runner.step(StepPlan(decode=ids))
    return rows * NEW_TOKENS / (time.perf_counter() - began)


def measure(tag: str) -> dict[str, Any]:
    from bentos.dataplane.decode.constraints import Grammars
    from bentos.dataplane.runtime import load_version
    from bentos.tasks.text_generation import OutputFormat

    version = load_version(tag, 1)
    codec: Any = version.codec
    began = time.perf_counter()
    grammars = Grammars(codec.tokenizer_file.read_text(), codec.spec.eos_id, codec.spec.vocab)
    _ = grammars.tokenizer
    tokenizer_s = time.perf_counter() - began
    began = time.perf_counter()
    grammars.matcher(OutputFormat("json_schema", json.dumps(SCHEMA)))
    compile_s = time.perf_counter() - began
    points = []
    for rows in ROWS:
        free, constrained, first, later = [], [], [], []
        for r in range(5):
            free.append(run(version, rows, r, None, []))
            steps: list[float] = []
            constrained.append(run(version, rows, r, grammars, steps))
            first.append(steps[0] * 1e6)
            later += [t * 1e6 for t in steps[1:]]
        later.sort()
        point = {"rows": rows, "tokens_per_s_free": statistics.median(free),
                 "tokens_per_s_schema": statistics.median(constrained), "first_mask_us": statistics.median(first),
                 "mask_us_p50": statistics.median(later), "mask_us_p99": later[int(0.99 * (len(later) - 1))]}
        print(f"  {rows} rows: {point['tokens_per_s_free']:.0f} -> {point['tokens_per_s_schema']:.0f} tok/s, "
              f"mask p50 {point['mask_us_p50']:.1f} p99 {point['mask_us_p99']:.1f} us a row, first "
              f"{point['first_mask_us']:.0f} us", flush=True)
        points.append(point)
    return {"tokenizer_s": tokenizer_s, "compile_s": compile_s, "vocab": codec.spec.vocab, "points": points}


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta = data["meta"]
    lines = ["# Structured output: what the mask costs", "",
             written_by("structured.py", results, meta) + f" Its tokenizer has {data['vocab']:,} tokens. "
             "Library: llguidance.", "",
             "In-process decode loop (the serving runner, no server), 64 tokens per request after a five-word "
             "prompt, one ONNX Runtime thread, median of 5 runs. The schema: an enum, an integer and a string "
             "of up to 200 characters. *Mask*: computing and applying the allowed-token mask, per step and "
             "constrained row (p50 and p99 over every step after the first; *first mask*: a request's first step, "
             "where llguidance builds its lexer states).", "",
             f"Reading the tokenizer into llguidance took {data['tokenizer_s'] * 1000:.0f} ms (once per version); "
             f"compiling the schema {data['compile_s'] * 1000:.1f} ms (cached per schema).", "",
             "| rows | tokens/s, no format | tokens/s, JSON schema | ratio | mask p50 | mask p99 | first mask |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        lines.append(f"| {p['rows']} | {p['tokens_per_s_free']:.0f} | {p['tokens_per_s_schema']:.0f} | "
                     f"{p['tokens_per_s_schema'] / p['tokens_per_s_free']:.2f}x | {p['mask_us_p50']:.1f} µs | "
                     f"{p['mask_us_p99']:.1f} µs | {p['first_mask_us']:.0f} µs |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    args = report_parser(__doc__, "structured").parse_args()
    commit = begin_report(args, render, threads=False)
    if commit is None:
        return
    tag = import_model(model_dir(90.0))
    payload = {"meta": run_meta(commit, model=BENCH_LM), **measure(tag)}
    write_report(args.results, args.out, payload, render)


if __name__ == "__main__":
    main()
