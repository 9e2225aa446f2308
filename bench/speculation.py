"""Prompt-lookup speculation on and off, for fp32, int8-dynamic and int4, at 1 and 8 rows, on two workloads.

The model is the generation benchmark's (bench/generation.py), its three variants imported as bench/int4.py
imports them. Tokens per second are the in-process decode loop's (the serving runner, no server), 64 greedy
tokens per request, median of 5 runs, one ONNX Runtime thread. Each run compares the tokens written with and
without speculation: fp32 must match exactly (the test suite shows it does); the int8-dynamic graph quantizes
activations per tensor over the whole pass, so a wider pass may move a near tie, and the table says how many
requests' texts were identical.

- **repetitive** (text that copies from its prompt, as extracting or rewriting a given passage does): a
  five-word prompt, the 64 tokens the model writes after it, then the five words again. What the model
  writes next is mostly that passage again.
- **non-repetitive**: 100 tokens drawn at random from the vocabulary, then a five-word prompt: the prompt's
  n-grams do not recur, so drafts come only from the text the model writes itself.

Writes bench/results/speculation.json and docs/benchmarks-speculation.md.

    python bench/speculation.py                   # about 3 minutes (imports the variants once)
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

from bench.generation import BENCH_LM, begin_report, model_dir, prompts  # noqa: E402
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402
from bench.int4 import VARIANTS, import_variants  # noqa: E402

NEW_TOKENS = 64
ROWS = (1, 8)
SPECULATION: dict[str, Any] = {"tokens": 5, "ngram": 3, "min_acceptance": 0.3, "pass_tokens": 8}
WORKLOADS = ("repetitive", "non-repetitive")


def workload(kind: str, version: Any, rows: int, offset: int) -> list[list[int]]:
    import numpy as np

    codec = version.codec
    texts = prompts()
    starts = [codec.tokenize(texts[(offset + i) % len(texts)]) for i in range(rows)]
    if kind == "repetitive":
        written = decode(version, starts, None)[0]
        return [s + w + s for s, w in zip(starts, written, strict=True)]
    rng = np.random.default_rng(offset)
    return [[int(t) for t in rng.integers(0, codec.spec.vocab, 100)] + s for s in starts]


def decode(version: Any, prompts_: list[list[int]], speculation: Any) -> tuple[list[list[int]], float, int, int]:
    """Each prompt's 64 greedy tokens in one batch (rows leave as they finish); the seconds it took; tokens
    drafted and accepted."""
    from bentos.dataplane.decode.runner import DecodeRunner
    from bentos.dataplane.decode.scheduler import StepPlan
    from bentos.tasks.text_generation import SamplingParams

    runner = DecodeRunner(version.session, version.codec, speculation=speculation)
    ids = [f"r{i}" for i in range(len(prompts_))]
    for rid, p in zip(ids, prompts_, strict=True):
        runner.add(rid, p, SamplingParams(max_tokens=NEW_TOKENS))
    out: dict[str, list[int]] = {rid: [] for rid in ids}
    drafted = accepted = 0
    plan = StepPlan(prefill=tuple(ids))
    began = time.perf_counter()
    while True:
        result = runner.step(plan)
        drafted, accepted = drafted + result.drafted, accepted + result.accepted
        for rid, token in result.tokens.items():
            out[rid] += [token, *result.more.get(rid, [])]
        live = tuple(rid for rid in ids if len(out[rid]) < NEW_TOKENS)
        for rid in set(ids) - set(live):
            runner.release(rid)
        if not live:
            break
        plan = StepPlan(decode=live)
    return [out[rid][:NEW_TOKENS] for rid in ids], time.perf_counter() - began, drafted, accepted


def measure(tag: str, kind: str, rows: int) -> dict[str, Any]:
    from bentos.dataplane.decode.speculation import Speculation
    from bentos.dataplane.runtime import load_version

    version = load_version(tag, 1)
    spec = Speculation(**SPECULATION)
    off, on, drafted, accepted, same = [], [], 0, 0, 0
    for r in range(5):
        batch = workload(kind, version, rows, r)
        plain, seconds, _, _ = decode(version, batch, None)
        fast, fast_seconds, d, a = decode(version, batch, spec)
        same += sum(x == y for x, y in zip(fast, plain, strict=True))
        off.append(rows * NEW_TOKENS / seconds)
        on.append(rows * NEW_TOKENS / fast_seconds)
        drafted, accepted = drafted + d, accepted + a
    point = {"tag": tag, "workload": kind, "rows": rows, "tokens_per_s_off": statistics.median(off),
             "tokens_per_s_on": statistics.median(on), "acceptance": accepted / drafted if drafted else None,
             "identical": same / (5 * rows)}
    print(f"  {tag} {kind:15s} {rows}: {point['tokens_per_s_off']:7.0f} -> {point['tokens_per_s_on']:7.0f} tok/s"
          f"  acceptance {point['acceptance']}  identical {point['identical']:.2f}")
    return point


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta = data["meta"]
    lines = ["# Prompt-lookup speculation", "",
             written_by("speculation.py", results, meta) + f" Speculation: {meta['speculation']}.", "",
             "In-process decode loop (the serving runner, no server), 64 greedy tokens per request, one ONNX "
             "Runtime thread, median of 5 runs. *identical*: the share of requests that wrote the same tokens with "
             "speculation as without (int8-dynamic quantizes activations over the whole pass, so a wider pass can "
             "move a near tie). "
             "*repetitive*: a prompt that holds the passage the model writes next (extract, rewrite); "
             "*non-repetitive*: 100 random vocabulary tokens, then five words. Acceptance: the share of drafted "
             "tokens accepted.", "",
             "| variant | workload | rows | tokens/s off | tokens/s on | on / off | acceptance | identical |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in data["points"]:
        acceptance = "no draft" if p["acceptance"] is None else f"{p['acceptance']:.2f}"
        lines.append(f"| {p['variant']} | {p['workload']} | {p['rows']} | {p['tokens_per_s_off']:.0f} | "
                     f"{p['tokens_per_s_on']:.0f} | {p['tokens_per_s_on'] / p['tokens_per_s_off']:.2f}x | "
                     f"{acceptance} | {p['identical']:.0%} |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    args = report_parser(__doc__, "speculation").parse_args()
    commit = begin_report(args, render, threads=False)
    if commit is None:
        return
    tags = import_variants(model_dir(90.0))
    points = [{"variant": v, **measure(tags[v], kind, rows)}
              for v in VARIANTS if v in tags for kind in WORKLOADS for rows in ROWS]
    meta = run_meta(commit, model=BENCH_LM.removesuffix(", fp32 ONNX"), speculation=SPECULATION)
    write_report(args.results, args.out, {"meta": meta, "points": points}, render)


if __name__ == "__main__":
    main()
