"""The generation server most teams start with: FastAPI, one request at a time through `transformers.generate`."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from bench.servers.gen_common import LM, sse


class Ask(BaseModel):
    prompt: str
    max_tokens: int = 64


def create_app() -> FastAPI:
    app, lm, lock = FastAPI(), LM(), threading.Lock()

    @app.get("/health")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/generate")
    def generate(ask: Ask) -> StreamingResponse:
        def events() -> Iterator[str]:
            with lock:  # one model, one request at a time
                for t in lm.tokens(ask.prompt, ask.max_tokens):
                    yield sse(lm.piece(t))
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
