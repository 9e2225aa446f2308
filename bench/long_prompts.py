"""Long prompts arriving while others stream: prefill in chunks against prefill whole, in one run.

The generation benchmark's model (bench/generation.py: GPT-2 architecture, 256 wide, 6 layers, about 5M
parameters, fp32 ONNX) behind a real `bentoml serve`. Two callers share one version:

- "short": 4 streams at once, each asking for 64 tokens after a five-word prompt, one after another;
- "long": 2 callers at once, each sending an 800-token prompt for 4 tokens, one after another (the flood).

For each server setting, the short caller is measured alone and then beside the flood:
`SWITCHYARD_PREFILL_TOKENS=128` (a long prompt is prefilled 128 tokens a step, the streams decoding
beside each chunk) and `=1024` (every prompt prefilled whole in one step, as before chunks existed).
Reported: the short streams' gap between two tokens (p50, p99, max: the stall a newcomer's prefill
causes), their time to first token p50/p99 and tokens per second, and the long prompts' time to first
token p50. Writes bench/results/long_prompts.json and docs/benchmarks-long-prompts.md.

    python bench/long_prompts.py                  # about 3 minutes
    python bench/long_prompts.py --seconds 10
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import BENCH_LM, STATE, TOKEN, begin_report, import_model, model_dir, prompts, quantile  # noqa: E402
from bench.harness import report_parser, run_meta, write_report, written_by  # noqa: E402
from tests.servers import Served, serve_env  # noqa: E402

ENDPOINT = "bench-long"
SHORT_STREAMS, SHORT_TOKENS = 4, 64
LONG_CALLERS, LONG_PROMPT_TOKENS = 2, 800
SETTINGS = {"in chunks of 128": 128, "whole": 1024}


@dataclass
class Times:
    ttft_s: float
    gaps_s: list[float]  # between one token and the next
    tokens: int


@dataclass
class Row:
    setting: str
    flood: bool
    short_tokens_per_s: float
    gap_p50_ms: float
    gap_p99_ms: float
    gap_max_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    long_ttft_p50_ms: float | None
    long_requests: int
    errors: int


async def stream(host: str, port: int, body: dict[str, Any], key: str = "") -> Times:
    """One streamed request on a fresh connection: when each `data:` event arrived (the last ends it)."""
    raw = json.dumps({**body, "stream": True}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    auth = f"X-API-Key: {key}\r\n" if key else ""
    writer.write((f"POST /v1/{ENDPOINT}/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"{auth}Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n").encode() + raw)
    start = time.perf_counter()
    await writer.drain()
    times: list[float] = []
    data, status = b"", b""
    while chunk := await reader.read(65536):
        status = status or chunk[9:12]
        data += chunk
        # An event split across reads is counted once its end arrives.
        while (end := data.find(b"\n\n")) >= 0:
            if data[:end].count(b"data: "):
                times.append(time.perf_counter())
            data = data[end + 2:]
    writer.close()
    if status != b"200" or len(times) < 2:
        raise RuntimeError(f"status {status!r}, {len(times)} events")
    tokens = times[:-1]  # the last event is the end, not a token
    return Times(tokens[0] - start, [b - a for a, b in itertools.pairwise(tokens)], len(tokens))


async def callers(url: str, seconds: float, flood: bool, long_prompt: str) -> tuple[list[Times], list[Times], int]:
    host, port = url.removeprefix("http://").split(":")
    texts, errors = prompts(), 0
    short: list[Times] = []
    long: list[Times] = []
    end = time.perf_counter() + seconds

    async def caller(out: list[Times], body: Any) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < end:
            i += 1
            try:
                out.append(await stream(host, int(port), body(i)))
            except (OSError, RuntimeError):
                errors += 1
                await asyncio.sleep(0.05)

    def short_body(i: int) -> dict[str, Any]:
        return {"prompt": texts[i % len(texts)], "max_tokens": SHORT_TOKENS, "ignore_eos": True}

    def long_body(i: int) -> dict[str, Any]:
        return {"prompt": f"{i} {long_prompt}", "max_tokens": 4, "ignore_eos": True}

    jobs = [caller(short, short_body) for _ in range(SHORT_STREAMS)]
    jobs += [caller(long, long_body) for _ in range(LONG_CALLERS)] if flood else []
    await asyncio.gather(*jobs)
    return short, long, errors


def measure(setting: str, url: str, seconds: float, flood: bool, long_prompt: str) -> Row:
    asyncio.run(callers(url, min(3.0, seconds / 3), flood, long_prompt))  # warm-up
    began = time.perf_counter()
    short, long, errors = asyncio.run(callers(url, seconds, flood, long_prompt))
    wall = time.perf_counter() - began
    gaps = [g * 1000 for t in short for g in t.gaps_s]
    ttft = [t.ttft_s * 1000 for t in short]
    row = Row(setting, flood, sum(t.tokens for t in short) / wall, quantile(gaps, 0.5), quantile(gaps, 0.99),
              max(gaps), quantile(ttft, 0.5), quantile(ttft, 0.99),
              quantile([t.ttft_s * 1000 for t in long], 0.5) if long else None, len(long), errors)
    print(f"  {setting:18s} flood={flood!s:5s} short {row.short_tokens_per_s:6.0f} tok/s  gap p50 "
          f"{row.gap_p50_ms:6.1f} p99 {row.gap_p99_ms:6.1f} max {row.gap_max_ms:6.1f} ms  ttft p50 "
          f"{row.ttft_p50_ms:6.1f} p99 {row.ttft_p99_ms:6.1f} ms  long ttft p50 {row.long_ttft_p50_ms} ms "
          f"({row.long_requests})  errors {errors}", flush=True)
    return row


def serve(tag: str, state: Path, endpoint: dict[str, Any] | None = None, **settings: str) -> Served:
    """A server with `settings` (SWITCHYARD_*, by lower-case name) and the endpoint, created through the API."""
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    (state / "none.yaml").write_text("endpoints: []\n")
    env = serve_env(Path(os.environ["BENTOML_HOME"]), state, admin_token=TOKEN, playground="false",
                    config=str(state / "none.yaml"), **settings)
    served = Served(env, log_dir=state)
    served.wait_ready()
    import httpx

    r = httpx.post(f"{served.url}/v1/admin/endpoints", headers={"Authorization": f"Bearer {TOKEN}"},
                   json={"name": ENDPOINT, "task": "text-generation", "model": tag, "reason": "benchmark",
                         "limits": {"max_streams": 8}, **(endpoint or {})}, timeout=120)
    r.raise_for_status()
    return served


def long_prompt(tag: str, tokens: int = LONG_PROMPT_TOKENS) -> str:
    """Text of about `tokens` tokens under the model's own tokenizer."""
    from tokenizers import Tokenizer

    from models.tiny_lm import sentences

    name, version = tag.split(":")
    store = Path(os.environ["BENTOML_HOME"]) / "models"
    tokenizer = Tokenizer.from_file(str(store / name / version / "tokenizer.json"))
    words = " ".join(sentences("english", 400, seed=3)).split()
    ids = tokenizer.encode(" ".join(words)).ids[:tokens - 2]
    return str(tokenizer.decode(ids))


def render(results: Path, out: Path) -> None:
    data = json.loads(results.read_text())
    meta, rows = data["meta"], [Row(**r) for r in data["rows"]]
    lines = ["# Long prompts beside running streams: prefill in chunks", "",
             written_by("long_prompts.py", results, meta), "",
             f"The short caller: {SHORT_STREAMS} streams of {SHORT_TOKENS} tokens after a five-word prompt. The "
             f"flood: {LONG_CALLERS} callers sending {LONG_PROMPT_TOKENS}-token prompts for 4 tokens each, one "
             "after another. A gap is the time between two tokens of one short stream.", "",
             "| prefill | flood | short tok/s | gap p50 | gap p99 | gap max | TTFT p50 | TTFT p99 | long TTFT p50 "
             "| long requests | errors |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        long = "" if r.long_ttft_p50_ms is None else f"{r.long_ttft_p50_ms:.0f} ms"
        lines.append(f"| {r.setting} | {'yes' if r.flood else 'no'} | {r.short_tokens_per_s:.0f} | "
                     f"{r.gap_p50_ms:.1f} ms | {r.gap_p99_ms:.1f} ms | {r.gap_max_ms:.0f} ms | "
                     f"{r.ttft_p50_ms:.0f} ms | {r.ttft_p99_ms:.0f} ms | {long} | {r.long_requests} | {r.errors} |")
    lines += ["", *[f"- {g}" for g in goals(rows)], ""]
    out.write_text("\n".join(lines))


def goals(rows: list[Row]) -> list[str]:
    """The stall a flood of long prompts adds to the running streams, in each setting, as ratios."""
    out = []
    for setting in SETTINGS:
        alone = next((r for r in rows if r.setting == setting and not r.flood), None)
        flooded = next((r for r in rows if r.setting == setting and r.flood), None)
        if alone and flooded:
            out.append(f"{setting}: under the flood the short streams' gap p99 is "
                       f"{flooded.gap_p99_ms / alone.gap_p99_ms:.1f}x and their TTFT p99 "
                       f"{flooded.ttft_p99_ms / alone.ttft_p99_ms:.1f}x their values alone.")
    return out


def main() -> None:
    parser = report_parser(__doc__, "long_prompts")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    commit = begin_report(args, render)
    if commit is None:
        return
    tag = import_model(model_dir(90.0))
    text = long_prompt(tag)
    logs = STATE / "bench-long-prompts"
    rows: list[Row] = []
    for setting, prefill_tokens in SETTINGS.items():
        served = serve(tag, logs / f"prefill-{prefill_tokens}", prefill_tokens=str(prefill_tokens))
        try:
            rows += [measure(setting, served.url, args.seconds, flood, text) for flood in (False, True)]
        finally:
            served.kill()
    meta = run_meta(commit, model=BENCH_LM, seconds=args.seconds)
    write_report(args.results, args.out, {"meta": meta, "rows": [asdict(r) for r in rows]}, render)


if __name__ == "__main__":
    main()
