"""Where one decode step's time goes, at 1 and 8 rows: the graph, the cache's copies, sampling, detokenizing.

The serving runner (bentos/dataplane/decode/runner.py) and its token streams, in process, on the generation
benchmark's model (GPT-2 architecture, 256 wide, 6 layers, fp32 ONNX), one ONNX Runtime thread, greedy,
256 tokens per request after five-word prompts. Each part is timed where it is called, by wrapping it:

- graph: `InferenceSession.run`;
- cache: re-making the running batch (`_arrange`: rows taken out, parked ones joined) and what `_decode`
  does around the graph (the mask grown by a column, the feed, the next batch's arrays);
- sampling: `_sample` (argmax, or the sampler per row);
- detokenizing: `TokenStream.push` (the text so far decoded again, stop strings, the buffer);
- other: the rest of the step (Python between them).

With `--before REV`, the same profile of that commit's code (a git worktree of it, on the same model, in the
same run) goes beside it. Writes bench/results/decode_profile.json and docs/benchmarks-decode-profile.md.

    python bench/decode_profile.py --before 67c8ae1
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import BENCH_LM, STATE, begin_report, import_model, model_dir, prompts  # noqa: E402
from bench.harness import baseline_tree, report_parser, run_meta, write_report, written_by  # noqa: E402

TOKENS = 256
PARTS = ("graph", "cache", "sampling", "detokenizing")


class Clock:
    """Seconds spent in each wrapped part, its own time only: a timed part called inside another is charged to
    itself, not to both."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open part: time of the timed parts inside it

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                took = time.perf_counter() - began
                self.spent[part] += took - self._inner.pop()
                if self._inner:
                    self._inner[-1] += took
        return timed


def profile(tag: str, rows: int) -> dict[str, Any]:
    from bentos.dataplane.decode.runner import DecodeRunner
    from bentos.dataplane.decode.scheduler import StepPlan
    from bentos.dataplane.decode.streams import TokenStream
    from bentos.dataplane.runtime import load_version
    from bentos.tasks.text_generation import GenerationCodec, SamplingParams

    version = load_version(tag, 1)
    codec = version.codec
    assert isinstance(codec, GenerationCodec)
    clock = Clock()

    class Session:  # the graph, timed
        def __init__(self, inner: Any) -> None:
            self.run = clock.wrap("graph", inner.run)

    runner = DecodeRunner(Session(version.session), codec)
    runner._arrange = clock.wrap("cache", runner._arrange)  # type: ignore[method-assign]
    runner._decode = clock.wrap("cache", runner._decode)  # type: ignore[method-assign]
    runner._sample = clock.wrap("sampling", runner._sample)  # type: ignore[method-assign]
    texts = prompts()
    ids = tuple(f"r{i}" for i in range(rows))
    streams = {}
    for i, rid in enumerate(ids):
        prompt = codec.tokenize(texts[i % len(texts)])
        runner.add(rid, prompt, SamplingParams(max_tokens=TOKENS, ignore_eos=True))
        stream = TokenStream(rid, codec.detokenize, prompt_tokens=len(prompt), max_tokens=TOKENS)
        stream.push = clock.wrap("detokenizing", stream.push)  # type: ignore[method-assign]
        streams[rid] = stream

    def step(plan: StepPlan) -> float:
        began = time.perf_counter()
        result = runner.step(plan)
        for rid, token in result.tokens.items():
            streams[rid].push(token)
            streams[rid]._pieces.clear()  # the reader takes every piece at once
        return time.perf_counter() - began

    step(StepPlan(prefill=ids))
    clock.spent.clear()
    walls = [step(StepPlan(decode=ids)) for _ in range(TOKENS - 2)]
    total = sum(walls)
    parts = {p: clock.spent[p] for p in PARTS}
    parts["other"] = total - sum(parts.values())
    return {"rows": rows, "steps": len(walls), "step_ms": 1000 * total / len(walls),
            "step_p50_ms": 1000 * statistics.median(walls),
            "parts_ms": {p: 1000 * s / len(walls) for p, s in parts.items()},
            "shares": {p: s / total for p, s in parts.items()}}


def profile_at(rev: str, tag: str) -> list[dict[str, Any]]:
    """The profile of commit `rev`'s code: its own copy of this script, run in a worktree of it."""
    tree = STATE / "bench-decode-profile" / f"baseline-{rev}"
    if not tree.exists():
        tree = baseline_tree(rev, STATE / "bench-decode-profile")
    code = ("import json, sys; sys.path.insert(0, '.'); from bench.decode_profile import profile; "
            f"print(json.dumps([profile({tag!r}, rows) for rows in (1, 8)]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def table(runs: list[dict[str, Any]]) -> list[str]:
    parts = [*PARTS, "other"]
    lines = ["| rows | step | " + " | ".join(parts) + " |", "|---:|---:|" + "---:|" * len(parts)]
    for r in runs:
        cells = [f"{r['parts_ms'][p]:.3f} ({r['shares'][p]:.0%})" for p in parts]
        lines.append(f"| {r['rows']} | {r['step_ms']:.2f} ms | " + " | ".join(cells) + " |")
    return lines


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta, runs = data["meta"], data["runs"]
    lines = ["# Where a decode step's time goes", "",
             written_by("decode_profile.py", results, meta) + " The serving runner and its token streams "
             f"in process, one ONNX Runtime thread, greedy, {TOKENS} tokens per request; each part timed where it "
             "is called (the script's docstring says what each covers). Mean ms per decode step, and its share.", ""]
    before = data.get("before")
    if before:
        lines += [f"## Before: commit {before['commit']}", "", *table(before["runs"]), "",
                  f"## After: commit {meta['commit']}", ""]
    lines += table(runs)
    if before:
        lines.append("")
        for b, a in zip(before["runs"], runs, strict=True):
            lines.append(f"- {a['rows']} rows: detokenizing {b['parts_ms']['detokenizing']:.3f} -> "
                         f"{a['parts_ms']['detokenizing']:.3f} ms a step; the step {b['step_ms']:.2f} -> "
                         f"{a['step_ms']:.2f} ms.")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = report_parser(__doc__, "decode_profile")
    parser.add_argument("--before", metavar="REV", help="profile this commit's code too, beside it")
    args = parser.parse_args()
    commit = begin_report(args, render, threads=False)
    if commit is None:
        return
    tag = import_model(model_dir(90.0))
    before = {"commit": args.before, "runs": profile_at(args.before, tag)} if args.before else None
    runs = [profile(tag, rows) for rows in (1, 8)]
    for r in runs:
        print(f"  {r['rows']} rows: {r['step_ms']:.2f} ms a step; "
              + ", ".join(f"{p} {ms:.3f} ms" for p, ms in r["parts_ms"].items()))
    write_report(args.results, args.out, {"meta": run_meta(commit, model=BENCH_LM), "runs": runs, "before": before},
                 render)


if __name__ == "__main__":
    main()
