"""What the generation peers share: the Hugging Face model run by `transformers.generate` with its cache,
streamed token by token (BENCH_LM_DIR names the directory). Each token is one SSE `data:` line, as
Switchyard's stream sends it, so one client measures every server the same way."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

END = object()


class Queued:
    """A `transformers` streamer: each new token id into a queue (the prompt, put first, is skipped)."""

    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.q.put(t)

    def end(self) -> None:
        self.q.put(END)


class LM:
    def __init__(self) -> None:
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
        path = os.environ["BENCH_LM_DIR"]
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))

    def tokens(self, prompt: str, max_new: int) -> Iterator[int]:
        """Greedy token ids, as `generate` writes them (min_new_tokens: always max_new, like ignore_eos)."""
        ids = self.torch.tensor([self.tok.encode(prompt).ids])
        streamer = Queued()

        def run() -> None:
            with self.torch.inference_mode():
                self.model.generate(ids, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False,
                                    streamer=streamer, pad_token_id=self.model.config.eos_token_id)
            streamer.end()

        threading.Thread(target=run, daemon=True).start()
        while (t := streamer.q.get()) is not END:
            yield t

    def piece(self, token: int) -> str:
        return str(self.tok.decode([token]))


def sse(text: str) -> str:
    import json

    return f"data: {json.dumps({'text': text})}\n\n"
