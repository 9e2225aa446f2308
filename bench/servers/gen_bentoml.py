"""Stock BentoML generation: a streaming `@bentoml.api` that calls `transformers.generate` per request."""

from __future__ import annotations

from collections.abc import Generator

import bentoml

from bench.servers.gen_common import LM, sse


@bentoml.service(name="stock_generate", workers=1, traffic={"timeout": 600})
class StockGenerate:
    def __init__(self) -> None:
        self.lm = LM()

    @bentoml.api(route="/generate")
    def generate(self, prompt: str, max_tokens: int = 64) -> Generator[str, None, None]:
        for t in self.lm.tokens(prompt, max_tokens):
            yield sse(self.lm.piece(t))
        yield "event: done\ndata: {}\n\n"
