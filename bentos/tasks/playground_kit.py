"""What a task's playground widget is built with: shared controls, asking through the routing path.

A task supplies its input widgets, a function from their values to request items, its
output widgets and a function from results to their values; the kit adds routed or pinned
mode, the routing key, the answer's version, route and latency, and a generic compare panel.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from bentos.tasks.base import Codec, Limits

# (endpoint, items, mode, routing key, pinned version, API key)
Ask = Callable[[str, list[Any], str, str | None, str | None, str | None], Awaitable[Any]]
# (endpoint, prompt, sampling, mode, routing key, pinned version, API key) -> (text so far, what answered), as
# the text grows
Write = Callable[[str, str, Any, str, str | None, str | None, str | None], AsyncIterator[tuple[str, str]]]


class Kit:
    # The class of every sketchpad: the playground page opens each with its brush chosen (api/playground.py).
    SKETCHPAD_CLASS = "sy-sketchpad"

    def __init__(self, gr: Any, endpoint: Any, ask: Ask, choices: list[str], needs_key: bool = False,
                 write: Write | None = None) -> None:
        self.gr, self.needs_key = gr, needs_key
        self.endpoint = endpoint
        self.ask = ask
        self.write = write
        self.choices = choices
        self.examples = self._examples()

    # --- what a widget needs to know ------------------------------------------------------
    def codec(self) -> Codec | None:
        spec = self.endpoint.spec
        return self.endpoint.codec_of(spec.stable.tag) if spec else None

    def _examples(self) -> list[tuple[str, Any, Any]]:
        """Examples stored with the stable version (examples.json: name, input, label)."""
        codec = self.codec()
        path = Path(codec.model_dir) / "examples.json" if codec and codec.model_dir else None
        if path is None or not path.is_file():
            return []
        rows = json.loads(path.read_text())
        return [(r["name"], np.asarray(r["input"], np.float32), r.get("label")) for r in rows]

    def limits(self) -> Limits:
        return self.endpoint.limits  # type: ignore[no-any-return]

    def labels(self) -> list[str] | None:
        codec = self.codec()
        labels = codec.preprocess.get("labels") if codec else None
        return list(labels) if labels else None

    def warmup_body(self) -> dict[str, Any]:
        codec = self.codec()
        if codec is None:
            return {}
        (item,) = codec.warmup_items()
        return {name: [np.asarray(v).tolist()] for name, v in item.items()} if isinstance(item, dict) else {}

    # --- input helpers ---------------------------------------------------------------------
    def png(self, picture: Any) -> bytes:
        """A drawn picture as PNG bytes, refused first when it has more pixels than the endpoint takes (a
        sketch sent through the API can be any size)."""
        from PIL import Image

        arr = np.asarray(picture)
        pixels = int(np.prod(arr.shape[:2])) if arr.ndim >= 2 else 0
        if pixels > self.limits().max_image_pixels:
            raise ValueError(f"the drawing has {pixels:,} pixels; the limit is {self.limits().max_image_pixels:,} "
                             "(limits.max_image_pixels)")
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(arr).save(out, format="PNG")
        return out.getvalue()

    def image_file(self, path: str) -> bytes:
        """An uploaded image's bytes, refused before anything decodes it when the file or its pixel count
        (read from the header) is over the endpoint's limits: a 50-megapixel PNG is a clear error, not a
        stalled or killed worker."""
        from PIL import Image

        limits, size = self.limits(), Path(path).stat().st_size
        if size > limits.max_body_bytes:
            raise ValueError(f"the file is {size:,} bytes; the limit is {limits.max_body_bytes:,} "
                             "(limits.max_body_bytes)")
        try:
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
            if width * height > limits.max_image_pixels:
                raise ValueError(f"the image is {width}x{height}, {width * height / 1e6:.1f} megapixels; the limit "
                                 f"is {limits.max_image_pixels / 1e6:.1f} (limits.max_image_pixels)")
            return Path(path).read_bytes()
        finally:  # Gradio's copy of the upload is not kept once it is read (or refused)
            Path(path).unlink(missing_ok=True)

    def lines(self, text: str, low: int, high: int) -> list[str]:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if not low <= len(lines) <= high:
            raise ValueError(f"enter {low} to {high} lines, one per line (got {len(lines)})")
        limit = self.limits().max_chars
        too_long = [i + 1 for i, line in enumerate(lines) if len(line) > limit]
        if too_long:
            raise ValueError(f"line {too_long[0]} is longer than {limit} characters")
        return lines

    @staticmethod
    def heatmap(matrix: np.ndarray, labels: list[str]) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(matrix, vmin=-0.2, vmax=1.0, cmap="viridis")
        short = [s if len(s) <= 24 else s[:22] + "…" for s in labels]
        ax.set_xticks(range(len(labels)), short, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), short, fontsize=8)
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        plt.close(fig)
        return fig

    # --- the panel -----------------------------------------------------------------------
    def panel(self, inputs: list[Any], to_items: Callable[..., list[Any]], outputs: list[Any],
              render: Callable[[list[Any], list[Any]], tuple[Any, ...]]) -> None:
        gr, name = self.gr, self.endpoint.name
        with gr.Row():
            # interactive=True: inside gr.render, Gradio 6 otherwise shows inputs of these events disabled.
            mode = gr.Radio(["routed", "pinned"], value="routed", label="Mode", interactive=True)
            key = gr.Textbox(label="Routing key (routed mode)", placeholder="user-42")
            # The playground goes through the same gate as the API: a key when the service requires one.
            api_key = gr.Textbox(label="API key", type="password", placeholder="sy_...", visible=self.needs_key)
            pin = gr.Dropdown(self.choices, value=self.choices[0] if self.choices else None,
                              label="Version (pinned mode)", allow_custom_value=True, interactive=True)
        go = gr.Button("Run", variant="primary", elem_id=f"run-{name}")
        info = gr.Markdown(elem_id=f"answer-{name}")
        details = gr.JSON(label="Response", visible=False)

        def items_of(values: tuple[Any, ...]) -> list[Any]:
            try:
                return to_items(*values)
            except ValueError as exc:
                raise gr.Error(str(exc)[:1].upper() + str(exc)[1:] + ".", print_exception=False) from None

        async def run(*values: Any) -> tuple[Any, ...]:
            *given, how, routing_key, pinned, secret = values
            # Encoding inputs and plotting results are CPU work: off the event loop that serves the API.
            items = await asyncio.to_thread(items_of, tuple(given))
            answer = await self.ask(name, items, how, routing_key, pinned, secret)
            results = answer.codec.decode(answer.outputs)
            shown = await asyncio.to_thread(render, items, results)
            text = f"### Answered by `{answer.version}`\n\n{answer.route} · {latency(answer)}"
            return (*shown, text, {"results": results, "model_version": answer.version, "route": answer.route})

        go.click(run, [*inputs, mode, key, pin, api_key], [*outputs, info, details])
        with gr.Accordion("Compare two versions on this input", open=False):
            with gr.Row():
                a = gr.Dropdown(self.choices, value=self.choices[0] if self.choices else None, label="Version A",
                                allow_custom_value=True, interactive=True)
                b = gr.Dropdown(self.choices, value=self.choices[-1] if self.choices else None, label="Version B",
                                allow_custom_value=True, interactive=True)
            compare_go = gr.Button("Compare")
            verdict = gr.Markdown()
            table = gr.Dataframe(headers=["input", "A", "B", "agreement"], label="Per input")

        async def compare(*values: Any) -> tuple[Any, ...]:
            *given, left_tag, right_tag, secret = values
            items = await asyncio.to_thread(items_of, tuple(given))
            rows, text = await compare_versions(self.ask, name, items, left_tag, right_tag, secret)
            return text, rows

        compare_go.click(compare, [*inputs, a, b, api_key], [verdict, table])


    # --- generation: a chat that streams ---------------------------------------------------
    def chat(self) -> None:
        """A chat whose answer streams token by token, routed or pinned; and two versions side by side on the
        same message, both streaming at once."""
        from bentos.tasks.text_generation import SamplingParams, chat_prompt

        gr, name, write = self.gr, self.endpoint.name, self.write
        assert write is not None, "the playground passes `write` to generative endpoints"
        with gr.Row():
            mode = gr.Radio(["routed", "pinned"], value="routed", label="Mode", interactive=True)
            key = gr.Textbox(label="Routing key (routed mode)", placeholder="user-42", interactive=True)
            api_key = gr.Textbox(label="API key", type="password", placeholder="sy_...", visible=self.needs_key,
                                 interactive=True)
            pin = gr.Dropdown(self.choices, value=self.choices[0] if self.choices else None,
                              label="Version (pinned mode)", allow_custom_value=True, interactive=True)
        with gr.Row():
            max_tokens = gr.Slider(1, self.limits().max_new_tokens, value=min(64, self.limits().max_new_tokens),
                                   step=1, label="max_tokens", interactive=True)
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature (0 = greedy)",
                                    interactive=True)
        chat = gr.Chatbot(label="Chat", elem_id=f"chat-{name}", height=320)
        # interactive=True: inside gr.render, Gradio 6 otherwise shows inputs of these events disabled.
        message = gr.Textbox(label="Message", value="The cat sat on", elem_id=f"message-{name}", interactive=True)
        go = gr.Button("Send", variant="primary", elem_id=f"send-{name}")
        info = gr.Markdown(elem_id=f"answer-{name}")

        def params(tokens: float, temp: float) -> SamplingParams:
            return SamplingParams(max_tokens=int(tokens), temperature=float(temp))

        async def send(history: list[dict[str, Any]] | None, text: str, how: str, routing_key: str, pinned: str,
                       secret: str, tokens: float, temp: float) -> AsyncIterator[tuple[Any, ...]]:
            history = [*(history or []), {"role": "user", "content": text}]
            prompt = chat_prompt([{"role": m["role"], "content": _content(m)} for m in history])
            shown = [*history, {"role": "assistant", "content": ""}]
            async for so_far, answered in write(name, prompt, params(tokens, temp), how, routing_key, pinned,
                                                secret):
                shown[-1] = {"role": "assistant", "content": so_far}
                yield shown, answered

        go.click(send, [chat, message, mode, key, pin, api_key, max_tokens, temperature], [chat, info])
        spec = self.endpoint.spec
        live = [v.tag for v in spec.versions] if spec else []
        with gr.Accordion("Two versions side by side", open=False, elem_id=f"side-{name}"):
            with gr.Row():  # by default the live ones (stable and its canary): the store may hold other models
                a = gr.Dropdown(self.choices, value=(live or self.choices or [None])[0], label="Version A",
                                allow_custom_value=True, interactive=True)
                b = gr.Dropdown(self.choices, value=(live or self.choices or [None])[-1], label="Version B",
                                allow_custom_value=True, interactive=True)
            both = gr.Button("Send to both", elem_id=f"both-{name}")
            with gr.Row():
                left = gr.Textbox(label="A", lines=6, elem_id=f"left-{name}")
                right = gr.Textbox(label="B", lines=6, elem_id=f"right-{name}")

        async def side_by_side(text: str, left_tag: str, right_tag: str, secret: str, tokens: float,
                               temp: float) -> AsyncIterator[tuple[str, str]]:
            prompt = chat_prompt([{"role": "user", "content": text}])
            texts = ["", ""]
            queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

            async def one(i: int, tag: str) -> None:
                try:
                    async for so_far, _ in write(name, prompt, params(tokens, temp), "pinned", None, tag, secret):
                        await queue.put((i, so_far))
                finally:
                    await queue.put(None)

            tasks = [asyncio.create_task(one(i, tag)) for i, tag in enumerate((left_tag, right_tag))]
            try:
                ended = 0
                while ended < 2:
                    item = await queue.get()
                    if item is None:
                        ended += 1
                        continue
                    texts[item[0]] = item[1]
                    yield texts[0], texts[1]
                for task in tasks:
                    task.result()  # an error in either is shown
            finally:
                for task in tasks:
                    task.cancel()

        both.click(side_by_side, [message, a, b, api_key, max_tokens, temperature], [left, right])


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # Gradio may hand back content as parts
        return " ".join(str(p.get("text", p)) if isinstance(p, dict) else str(p) for p in content)
    return str(content or "")


def latency(answer: Any) -> str:
    return (f"queue {answer.timing.queue_s * 1000:.1f} ms, inference {answer.timing.inference_s * 1000:.1f} ms, "
            f"total {answer.total_s * 1000:.1f} ms")


def short(value: Any) -> str:
    text = json.dumps(value, default=lambda v: np.asarray(v).tolist()) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "…"


async def compare_versions(ask: Ask, endpoint: str, items: list[Any], left_tag: str | None,
                           right_tag: str | None, api_key: str | None = None) -> tuple[list[list[Any]], str]:
    """Both versions pinned on the same items; agreement by the task's own measure."""
    if not left_tag or not right_tag:
        raise ValueError("choose two versions to compare")
    left = await ask(endpoint, items, "pinned", None, left_tag, api_key)
    right = await ask(endpoint, items, "pinned", None, right_tag, api_key)
    scores = [left.codec.agreement(x, y) for x, y in zip(left.outputs, right.outputs, strict=True)]
    decoded_a, decoded_b = left.codec.decode(left.outputs), right.codec.decode(right.outputs)
    rows = [[short(i if isinstance(i, str) else "input"), short(da), short(db), round(s, 5)]
            for i, da, db, s in zip(items, decoded_a, decoded_b, scores, strict=True)]
    mean = float(np.mean(scores))
    # Each version passed a gate against fp32 on this same measure: the looser of the two is the agreement
    # they were both allowed (a fixed 0.999 called two int8 embeddings at cosine 0.9905 "disagreeing").
    floor = min(left.codec.agreement_floor(), right.codec.agreement_floor())
    word = "agree" if mean >= floor else "disagree"
    text = (f"**They {word}**: mean {left.codec.agreement_name} {mean:.4f} (agreeing means at least {floor:.4f}, "
            f"the looser of the two versions' accuracy gates), lowest {min(scores):.4f}.\n\n"
            f"`{left.version}`: {latency(left)}\n\n`{right.version}`: {latency(right)}")
    return rows, text
