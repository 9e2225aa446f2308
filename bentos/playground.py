"""The Gradio playground at /playground: try every version, routed or pinned, side by side.

Requests go through the endpoints' own routing path (`Endpoint.handle`, source
"playground"), so metrics count them like any other. Pinned mode reaches any live
version, or any validated version in the store (loaded as a pin-only preview).
Gradio is imported by `build_playground` alone, never on the request path. Gradio keeps
its sessions in one process: with several BentoML workers behind one port, put session
affinity in front of /playground, or serve the playground from a one-worker replica.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bentos.batching import Overloaded
from bentos.catalog import list_versions
from bentos.endpoint import Answer, ModelFailure, NoDeployment
from bentos.engine import AdminError
from bentos.families.digits import N_CLASSES, image_to_pixels
from bentos.http import EngineHolder
from bentos.routing import UnknownPin

MIN_SENTENCES, MAX_SENTENCES = 2, 10
DEFAULT_SENTENCES = ("A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell.")


def _test_examples() -> tuple[list[list[float]], list[int]]:
    """40 scikit-learn digits shipped as JSON, so the image needs neither scikit-learn nor scipy."""
    data = json.loads((Path(__file__).parent / "families" / "digits_examples.json").read_text())
    return [[float(v) for v in row] for row in data["pixels"]], list(data["labels"])


def build_playground(holder: EngineHolder) -> Any:
    import gradio as gr
    from fastapi import FastAPI

    examples_x, examples_y = _test_examples()
    example_names = [f"example {i}: a {label}" for i, label in enumerate(examples_y)]

    def fail(message: str) -> Exception:
        return gr.Error(message, print_exception=False)

    def choices(endpoint: str) -> list[str]:
        engine = holder.get()
        spec = engine.endpoint(endpoint).spec
        live = [v.tag for v in spec.versions] if spec else []
        stored = [v["tag"] for v in list_versions(endpoint) if v["metrics"].get("validation_passed")]
        return live + [t for t in stored if t not in live]

    async def ask(endpoint: str, items: list[Any], mode: str, key: str | None, pinned: str | None) -> Answer:
        engine = holder.get()
        try:
            pin = None
            if mode == "pinned":
                if not pinned:
                    raise fail("Choose a version to pin, or switch to routed mode.")
                pin = await engine.preview(endpoint, pinned)
            return await engine.endpoint(endpoint).handle(items, (key or "").strip() or None, pin, "playground")
        except (UnknownPin, AdminError, NoDeployment, ModelFailure) as exc:
            raise fail(str(getattr(exc, "message", exc))) from None
        except Overloaded:
            raise fail("The service is busy right now; try again in a moment.") from None

    def why(endpoint: str, answer: Answer, key: str | None) -> str:
        if answer.route == "pinned":
            return "pinned by you"
        if answer.route == "fallback":
            return "fallback: the chosen version failed, stable answered"
        spec = holder.get().endpoint(endpoint).spec
        if key and spec and spec.sticky:
            return f"{answer.route}, sticky for routing key {key!r}"
        return f"{answer.route}, by weighted split"

    def latency(answer: Answer) -> str:
        return (f"queue {answer.timing.queue_s * 1000:.1f} ms, inference {answer.timing.inference_s * 1000:.1f} ms, "
                f"total {answer.total_s * 1000:.1f} ms")

    # --- digits ---------------------------------------------------------------------
    def pixels_from(source: str, sketch: Any, upload: Any, example: str | None) -> tuple[list[float], int | None]:
        try:
            if source == "sketch":
                if sketch is None or sketch.get("composite") is None:
                    raise ValueError("the sketchpad is empty: draw a digit first")
                return image_to_pixels(sketch["composite"]), None
            if source == "upload":
                if upload is None:
                    raise ValueError("no image uploaded")
                return image_to_pixels(upload), None
        except ValueError as exc:
            raise fail(str(exc).capitalize() + ".") from None
        if not example or example not in example_names:
            raise fail("Pick an example from the list.")
        i = example_names.index(example)
        return examples_x[i], examples_y[i]

    def preview(pixels: list[float]) -> np.ndarray:
        grid = 255 - (np.array(pixels, np.float32).reshape(8, 8) / 16 * 255)
        return np.kron(grid, np.ones((16, 16))).astype(np.uint8)

    def confidences(probs: np.ndarray) -> dict[str, float]:
        return {str(i): float(probs[i]) for i in range(N_CLASSES)}

    async def predict(source: str, sketch: Any, upload: Any, example: str | None, mode: str, key: str,
                      pinned: str | None) -> tuple[dict[str, float], np.ndarray, str, dict[str, Any]]:
        pixels, truth = pixels_from(source, sketch, upload, example)
        answer = await ask("digits", [pixels], mode, key, pinned)
        probs = answer.outputs[0]
        label = int(probs.argmax())
        reason = why("digits", answer, key)
        details = {"label": label, "confidence": float(probs[label]), "true_label": truth,
                   "model_version": answer.version, "route": answer.route, "why": reason,
                   "latency_ms": {"queue": answer.timing.queue_s * 1000, "inference": answer.timing.inference_s * 1000,
                                  "total": answer.total_s * 1000}}
        truth_md = "" if truth is None else f" (true label **{truth}**{' ✓' if truth == label else ' ✗'})"
        info = (f"### Predicted **{label}**{truth_md}\n\nVersion `{answer.version}` — {reason}\n\n"
                f"{latency(answer)}")
        return confidences(probs), preview(pixels), info, details

    async def compare_digits(source: str, sketch: Any, upload: Any, example: str | None, a: str | None,
                             b: str | None) -> tuple[dict[str, float], dict[str, float], str]:
        if not a or not b:
            raise fail("Choose two versions to compare.")
        pixels, _ = pixels_from(source, sketch, upload, example)
        left = await ask("digits", [pixels], "pinned", None, a)
        right = await ask("digits", [pixels], "pinned", None, b)
        la, lb = int(left.outputs[0].argmax()), int(right.outputs[0].argmax())
        verdict = ("<span style='color:#15803d'>**They agree**</span>" if la == lb else
                   "<span style='color:#b91c1c'>**They disagree**</span>")
        text = (f"{verdict}: `{left.version}` says **{la}** ({latency(left)}); "
                f"`{right.version}` says **{lb}** ({latency(right)})")
        return confidences(left.outputs[0]), confidences(right.outputs[0]), text

    # --- embeddings -----------------------------------------------------------------
    def sentences_of(text: str) -> list[str]:
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        limit = holder.get().settings.max_chars
        if not MIN_SENTENCES <= len(lines) <= MAX_SENTENCES:
            raise fail(f"Enter {MIN_SENTENCES} to {MAX_SENTENCES} sentences, one per line (got {len(lines)}).")
        too_long = [i + 1 for i, line in enumerate(lines) if len(line) > limit]
        if too_long:
            raise fail(f"Line {too_long[0]} is longer than {limit} characters.")
        return lines

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

    async def embed(text: str, mode: str, key: str, pinned: str | None) -> tuple[Any, str, dict[str, Any]]:
        lines = sentences_of(text)
        answer = await ask("minilm", lines, mode, key, pinned)
        emb = np.stack(answer.outputs)
        matrix = emb @ emb.T
        info = f"Version `{answer.version}` — {why('minilm', answer, key)}\n\n{latency(answer)}"
        details = {"similarity": matrix.round(6).tolist(), "model_version": answer.version, "route": answer.route}
        return heatmap(matrix, lines), info, details

    async def compare_embeddings(text: str, a: str | None, b: str | None) -> tuple[list[list[Any]], str]:
        if not a or not b:
            raise fail("Choose two versions to compare.")
        lines = sentences_of(text)
        left = await ask("minilm", lines, "pinned", None, a)
        right = await ask("minilm", lines, "pinned", None, b)
        agree = [float(np.dot(x, y)) for x, y in zip(left.outputs, right.outputs, strict=True)]
        rows = [[s, round(c, 5)] for s, c in zip(lines, agree, strict=True)]
        text_out = (f"Mean agreement (cosine) **{np.mean(agree):.4f}**, lowest {min(agree):.4f}.\n\n"
                    f"`{left.version}`: {latency(left)}\n\n`{right.version}`: {latency(right)}")
        return rows, text_out

    def about() -> dict[str, Any]:
        engine = holder.get()
        live = {v.tag for e in engine.endpoints.values() if e.spec for v in e.spec.versions}
        return {v["tag"]: {"live": v["tag"] in live, "variant": v["labels"].get("variant"),
                           "size_bytes": v["size_bytes"], "lineage": v["lineage"],
                           "quality": v["metrics"].get("validate"),
                           "latency_ms": (v["metrics"].get("benchmark") or {}).get("latency_ms")}
                for v in list_versions()}

    def refresh() -> tuple[Any, ...]:
        d, m = choices("digits"), choices("minilm")
        return (gr.Dropdown(choices=d, value=d[0] if d else None), gr.Dropdown(choices=d, value=d[0] if d else None),
                gr.Dropdown(choices=d, value=d[-1] if d else None),
                gr.Dropdown(choices=m, value=m[0] if m else None), gr.Dropdown(choices=m, value=_pick(m, "fp32")),
                gr.Dropdown(choices=m, value=_pick(m, "int8")), about())

    with gr.Blocks(title="Switchyard playground") as demo:
        gr.Markdown("# Switchyard playground\nTry every model version: routed like a user, or pinned.")
        with gr.Tab("Digits"):
            with gr.Row():
                with gr.Column():
                    d_source = gr.Radio(["example", "sketch", "upload"], value="example", label="Input")
                    d_example = gr.Dropdown(example_names, value=example_names[0], label="Example from the test split")
                    d_sketch = gr.Sketchpad(type="numpy", image_mode="RGBA", canvas_size=(280, 280),
                                            label="Draw a digit")
                    d_upload = gr.Image(type="numpy", label="Upload a digit image")
                with gr.Column():
                    d_mode = gr.Radio(["routed", "pinned"], value="routed", label="Mode")
                    d_key = gr.Textbox(label="Routing key (routed mode)", placeholder="user-42")
                    d_pin = gr.Dropdown([], label="Version (pinned mode)", allow_custom_value=True)
                    d_go = gr.Button("Predict", variant="primary", elem_id="predict-digit")
                    d_info = gr.Markdown(elem_id="digit-answer")
                    d_label = gr.Label(num_top_classes=N_CLASSES, label="Confidence")
                    d_preview = gr.Image(label="What the model sees (8x8, 0..16)", interactive=False, height=170)
                    d_json = gr.JSON(label="Response", visible=False)
            d_go.click(predict, [d_source, d_sketch, d_upload, d_example, d_mode, d_key, d_pin],
                       [d_label, d_preview, d_info, d_json], api_name="predict_digit")
            with gr.Accordion("Compare two versions on this input", open=False):
                with gr.Row():
                    d_a = gr.Dropdown([], label="Version A", allow_custom_value=True)
                    d_b = gr.Dropdown([], label="Version B", allow_custom_value=True)
                d_cmp = gr.Button("Compare")
                d_verdict = gr.Markdown()
                with gr.Row():
                    d_la, d_lb = gr.Label(label="A"), gr.Label(label="B")
            d_cmp.click(compare_digits, [d_source, d_sketch, d_upload, d_example, d_a, d_b],
                        [d_la, d_lb, d_verdict], api_name="compare_digits")
        with gr.Tab("Embeddings"):
            e_text = gr.Textbox(lines=6, label=f"{MIN_SENTENCES} to {MAX_SENTENCES} sentences, one per line",
                                value="\n".join(DEFAULT_SENTENCES))
            with gr.Row():
                e_mode = gr.Radio(["routed", "pinned"], value="routed", label="Mode")
                e_key = gr.Textbox(label="Routing key")
                e_pin = gr.Dropdown([], label="Version (pinned mode)", allow_custom_value=True)
            e_go = gr.Button("Embed", variant="primary")
            e_info = gr.Markdown()
            e_plot = gr.Plot(label="Cosine similarity")
            e_json = gr.JSON(visible=False)
            e_go.click(embed, [e_text, e_mode, e_key, e_pin], [e_plot, e_info, e_json], api_name="embed")
            with gr.Accordion("Compare two versions (fp32 against int8)", open=False):
                with gr.Row():
                    e_a = gr.Dropdown([], label="Version A", allow_custom_value=True)
                    e_b = gr.Dropdown([], label="Version B", allow_custom_value=True)
                e_cmp = gr.Button("Compare")
                e_verdict = gr.Markdown()
                e_table = gr.Dataframe(headers=["sentence", "agreement (cosine)"], label="Per sentence")
            e_cmp.click(compare_embeddings, [e_text, e_a, e_b], [e_table, e_verdict], api_name="compare_embeddings")
        with gr.Tab("About"):
            gr.Markdown("Every version in the registry, with its metrics, lineage and size.")
            a_json = gr.JSON(label="Versions")
            gr.Button("Refresh").click(about, None, a_json, api_name="about")
        demo.load(refresh, None, [d_pin, d_a, d_b, e_pin, e_a, e_b, a_json])

    return gr.mount_gradio_app(FastAPI(docs_url=None, redoc_url=None, openapi_url=None), demo, path="/playground")


def _pick(options: list[str], word: str) -> str | None:
    return next((o for o in options if word in o), options[0] if options else None)
