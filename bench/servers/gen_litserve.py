"""LitServe generation with `stream=True`: `python -m bench.servers.gen_litserve PORT`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import litserve as ls

from bench.servers.gen_common import LM, sse


class GenerateAPI(ls.LitAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(api_path="/generate", stream=True, **kwargs)

    def setup(self, device: str) -> None:
        self.lm = LM()

    def decode_request(self, request, **kwargs: Any) -> tuple[str, int]:  # type: ignore[no-untyped-def]
        return str(request["prompt"]), int(request.get("max_tokens", 64))

    def predict(self, x: tuple[str, int], **kwargs: Any) -> Iterator[int]:
        yield from self.lm.tokens(*x)

    def encode_response(self, output: Iterator[int], **kwargs: Any) -> Iterator[str]:
        for t in output:
            yield sse(self.lm.piece(t))
        yield "event: done\ndata: {}\n\n"


def main(port: int) -> None:
    server = ls.LitServer(GenerateAPI(), accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=port, generate_client_file=False)


if __name__ == "__main__":
    main(int(sys.argv[1]))
