"""What output guardrails add to a stream: hold-back and checks, against no guardrails, in one run.

The generation benchmark's model (bench/generation.py) behind a real `bentoml serve`; 4 callers, each
streaming 64 tokens (end-of-text ignored) after a five-word prompt, one request after another. Rows:

- no guardrails;
- a pattern check (RE2), chunks of 64 characters;
- a classifier check: `topics`, a small BERT trained here (bench/user_models.topic_rows) and served as a
  text-classification endpoint on the same server, chunks of 64 and of 16 characters.

Reported: generated tokens per second, time to the first text the reader gets (p50, p99), the gap between two
pieces of text the reader gets (p50, p99), and each request's time from sending it to its last text, per
token. Writes bench/results/guardrails.json and docs/benchmarks-guardrails.md.

    python bench/guardrails.py                    # about 3 minutes
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import (  # noqa: E402
    BENCH_LM,
    LM_DIR,
    STATE,
    TOKEN,
    begin_report,
    import_model,
    model_dir,
    prompts,
    quantile,
)
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402
from bench.long_prompts import Times, serve, stream  # noqa: E402

CALLERS, TOKENS = 4, 64
# Flagged, not blocked: every chunk is checked and every stream runs to its end, so the rows compare like work
# (a blocking check would cut the streams that name an animal, as tests/integration/test_generation.py shows).
CLASSIFIER = {"name": "no-animals", "classifier": "topics", "labels": {"animals": 0.5}, "action": "flag"}
ROWS: dict[str, dict[str, Any] | None] = {
    "no guardrails": None,
    "patterns, chunks of 64": {"output": [{"name": "no-ids", "patterns": {"ssn": r"\b\d{3}-\d{2}-\d{4}\b"}}],
                               "chunk_chars": 64},
    "classifier, chunks of 64": {"output": [CLASSIFIER], "chunk_chars": 64},
    "classifier, chunks of 16": {"output": [CLASSIFIER], "chunk_chars": 16},
}


@dataclass
class Row:
    name: str
    tokens_per_s: float
    first_text_p50_ms: float
    first_text_p99_ms: float
    gap_p50_ms: float
    gap_p99_ms: float
    per_token_ms: float
    requests: int
    errors: int


def topics_tag() -> str:
    """The topic classifier in the benchmark's store (trained and imported once)."""
    from bench.user_models import import_topics

    tag_file = LM_DIR / "topics-tag.txt"
    if not tag_file.is_file():
        (LM_DIR / "topics").mkdir(parents=True, exist_ok=True)
        tag_file.write_text(import_topics(LM_DIR / "topics"))
    return tag_file.read_text().strip()


async def callers(url: str, seconds: float) -> tuple[list[Times], int]:
    host, port = url.removeprefix("http://").split(":")
    texts, done, errors = prompts(), [], 0
    end = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        nonlocal errors
        i = n
        while time.perf_counter() < end:
            i += CALLERS
            body = {"prompt": texts[i % len(texts)], "max_tokens": TOKENS, "ignore_eos": True}
            try:
                done.append(await stream(host, int(port), body))
            except (OSError, RuntimeError):
                errors += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    return done, errors


def measure(name: str, url: str, seconds: float) -> Row:
    asyncio.run(callers(url, min(3.0, seconds / 3)))  # warm-up
    began = time.perf_counter()
    done, errors = asyncio.run(callers(url, seconds))
    wall = time.perf_counter() - began
    first = [t.ttft_s * 1000 for t in done]
    gaps = [g * 1000 for t in done for g in t.gaps_s]
    row = Row(name, len(done) * TOKENS / wall, quantile(first, 0.5), quantile(first, 0.99), quantile(gaps, 0.5),
              quantile(gaps, 0.99), sum(t.ttft_s + sum(t.gaps_s) for t in done) / max(1, len(done)) / TOKENS * 1000,
              len(done), errors)
    print(f"  {name:26s} {row.tokens_per_s:6.0f} tok/s  first text p50 {row.first_text_p50_ms:6.1f} p99 "
          f"{row.first_text_p99_ms:6.1f} ms  gap p50 {row.gap_p50_ms:6.1f} p99 {row.gap_p99_ms:6.1f} ms  "
          f"{row.per_token_ms:.2f} ms/token  errors {errors}", flush=True)
    return row


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta, rows = data["meta"], [Row(**r) for r in data["rows"]]
    lines = ["# Guardrails: what holding output back costs", "",
             written_by("guardrails.py", results, meta), "",
             f"{CALLERS} callers stream {TOKENS} tokens each after a five-word prompt, one request after another. "
             "*First text*: from sending the request to the first text the reader gets. *Gap*: between two "
             "pieces of text the reader gets (a token without guardrails, a chunk with them). *Per token*: a "
             "request's time from sending it to its last text, over its tokens. The classifier's hits are "
             "flagged, not blocked, so every stream runs to its end.", "",
             "| row | tokens/s | first text p50 | first text p99 | gap p50 | gap p99 | per token | requests | "
             "errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.tokens_per_s:.0f} | {r.first_text_p50_ms:.0f} ms | {r.first_text_p99_ms:.0f} ms"
                     f" | {r.gap_p50_ms:.1f} ms | {r.gap_p99_ms:.1f} ms | {r.per_token_ms:.2f} ms | {r.requests} | "
                     f"{r.errors} |")
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = report_parser(__doc__, "guardrails")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    commit = begin_report(args, render)
    if commit is None:
        return
    tag, classifier = import_model(model_dir(90.0)), topics_tag()
    rows = []
    for name, policy in ROWS.items():
        served = serve(tag, STATE / "guardrails", {"guardrails": policy})
        try:
            r = httpx.post(f"{served.url}/v1/admin/endpoints", headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"name": "topics", "task": "text-classification", "model": classifier,
                                 "reason": "benchmark"}, timeout=120)
            r.raise_for_status()
            rows.append(measure(name, served.url, args.seconds))
        finally:
            served.kill()
    meta = run_meta(commit, model=BENCH_LM, seconds=args.seconds)
    write_report(args.results, args.out, {"meta": meta, "rows": [asdict(r) for r in rows]}, render)


if __name__ == "__main__":
    main()
