"""The Gradio playground at /playground: a tab per endpoint, built from its task type.

Tabs are rendered when a page loads, so endpoints added through the admin API appear on
the next page load, with no restart. Requests go through the endpoints' own routing path
(`Endpoint.handle`, source "playground"), so metrics count them like any other. Pinned
mode reaches any live version, or any version of the endpoint's task in the store (loaded
as a pin-only preview). For scripts, `/ask`, `/compare` and `/about` take any endpoint
with a request body in its REST form. Gradio keeps its sessions in one process: with
several BentoML workers behind one port, put session affinity in front of /playground.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from bentos.api.app import EngineHolder
from bentos.api.problems import first_error, playground_message, send_detail
from bentos.dataplane.call import CallMeta
from bentos.dataplane.catalog import list_versions, signatures_match
from bentos.dataplane.endpoint import Answer
from bentos.dataplane.generation import Generation
from bentos.errors import ServingError
from bentos.tasks.playground_kit import Kit, compare_versions, latency

# Gradio 6.31's sketchpad opens with no tool chosen: dragging drew nothing ("select the draw tool to start")
# and Run then said the sketchpad was empty. It has no parameter for the starting tool, so the page picks the
# brush for each sketchpad as it appears, once: a visitor who then picks another tool keeps it.
CHOOSE_BRUSH_JS = f"""() => {{
  const choose = () => {{
    for (const b of document.querySelectorAll('.{Kit.SKETCHPAD_CLASS} button[aria-label="Brush"]')) {{
      if (b.dataset.switchyardChosen) continue;
      b.dataset.switchyardChosen = "1";
      if (!b.classList.contains("highlight")) b.click();
    }}
  }};
  new MutationObserver(choose).observe(document.body, {{childList: true, subtree: true}});
  choose();
}}"""


def build_playground(holder: EngineHolder) -> Any:
    import gradio as gr
    from fastapi import FastAPI

    def fail(message: str) -> Exception:
        return gr.Error(message, print_exception=False)

    def choices(name: str) -> list[str]:
        """The live versions, then the validated stored ones that could serve this endpoint: of its task and
        its signature (another model of the same task, e.g. a colour CNN beside the digits one, cannot)."""
        endpoint = holder.get().endpoint(name)
        live = [v.tag for v in endpoint.spec.versions] if endpoint.spec else []
        signature = endpoint.signature()
        stored = [v["tag"] for v in list_versions(endpoint.task.name) if v["metrics"].get("validation_passed")
                  and (signature is None or signatures_match(signature, v["signature"]))]
        return live + [t for t in stored if t not in live]

    def visitor(name: str, mode: str, key: str | None, pinned: str | None, api_key: str | None) -> CallMeta:
        """A playground call as the serving path sees it: the visitor's API key, routed or pinned."""
        if mode == "pinned" and not pinned:
            raise fail("Choose a version to pin, or switch to routed mode.")
        credentials = {"x-api-key": api_key.strip()} if api_key and api_key.strip() else {}
        return CallMeta(name, credentials, pin=pinned if mode == "pinned" else None,
                        routing_key=(key or "").strip() or None, source="playground", protocol="playground",
                        stored_pins=True)

    async def ask(name: str, items: list[Any], mode: str, key: str | None, pinned: str | None,
                  api_key: str | None = None) -> Answer:
        """Through the service's own serving path, as any protocol: the gate (the visitor's API key, rates,
        pin scope), admission, routing, pins."""
        meta = visitor(name, mode, key, pinned, api_key)
        try:
            async with holder.serving().admit(meta) as ticket:
                return await ticket.infer(items)
        except ServingError as exc:
            raise fail(playground_message(exc)) from None

    async def write(name: str, prompt: str, params: Any, mode: str, key: str | None, pinned: str | None,
                    api_key: str | None = None) -> AsyncIterator[tuple[str, str]]:
        """Generation through the same serving path: the text so far as it grows, and what answered. Closing
        this generator (the visitor left, or pressed Stop) aborts the request at the decode loop's next step."""
        meta = visitor(name, mode, key, pinned, api_key)
        try:
            async with holder.serving().admit(meta) as ticket:
                ticket.body_read()
                generation = await ticket.generate(prompt, params)
                try:
                    async for _ in generation.pieces():
                        yield generation.text, f"Writing: `{generation.version}` · {generation.route}"
                    yield generation.text, answered(generation)
                finally:
                    generation.close()
        except ServingError as exc:
            raise fail(playground_message(exc)) from None

    async def parse(name: str, body: str) -> tuple[list[Any], dict[str, Any]]:
        """A request body in the endpoint's REST form, as items and options."""
        try:
            endpoint = await holder.serving().endpoint(name)
            parsed = endpoint.request_model.model_validate_json(body or "null")
            return endpoint.task.items(parsed), endpoint.task.options(parsed)
        except ValidationError as exc:
            raise fail(first_error(exc)) from None
        except ServingError as exc:
            raise fail(exc.message) from None

    async def ask_api(name: str, body: str, mode: str, key: str, pinned: str | None,
                      api_key: str = "") -> dict[str, Any]:
        items, options = await parse(name, body)
        answer = await ask(name, items, mode, key, pinned, api_key)
        return {"results": json.loads(json.dumps(answer.codec.decode(answer.outputs, **options), default=_plain)),
                "model_version": answer.version, "route": answer.route, "latency": latency(answer)}

    async def compare_api(name: str, body: str, a: str | None, b: str | None,
                          api_key: str = "") -> tuple[list[list[Any]], str]:
        items, _ = await parse(name, body)
        try:
            return await compare_versions(ask, name, items, a, b, api_key)
        except ValueError as exc:
            raise fail(str(exc).capitalize() + ".") from None

    def about() -> dict[str, Any]:
        engine = holder.get()
        live = {v.tag for e in engine.endpoints.values() if e.spec for v in e.spec.versions}
        return {v["tag"]: {"live": v["tag"] in live, "task": v["task"], "variant": v["labels"].get("variant"),
                           "size_bytes": v["size_bytes"], "lineage": without_paths(v["lineage"]),
                           "quality": v["metrics"].get("validate"),
                           "latency_ms": (v["metrics"].get("benchmark") or {}).get("latency_ms")}
                for v in list_versions()}

    with gr.Blocks(title="Switchyard playground",
                   delete_cache=(PLAYGROUND_FILE_TTL_S, PLAYGROUND_FILE_TTL_S)) as demo:
        gr.Markdown("# Switchyard playground\nTry every endpoint and every version: routed like a user, or pinned.")

        @gr.render(triggers=[demo.load])  # type: ignore[untyped-decorator]
        def tabs() -> None:
            engine = holder.get()
            with gr.Tabs():
                for name, endpoint in sorted(engine.endpoints.items()):
                    with gr.Tab(name, id=f"tab-{name}"):
                        gr.Markdown(f"**{endpoint.task.name}** · `POST /v1/{name}/{endpoint.task.verb}`"
                                    + (f" · {endpoint.config.description}" if endpoint.config.description else ""))
                        endpoint.task.playground(Kit(gr, endpoint, ask, choices(name),
                                                     needs_key=engine.settings.require_api_key, write=write))
                with gr.Tab("About", id="tab-about"):
                    gr.Markdown("Every version in the registry, with its task, metrics, lineage and size.")
                    gr.JSON(about(), label="Versions")

        with gr.Row(visible=False):  # the scripting API, the same for every endpoint
            a_name, a_body, a_mode, a_key, a_pin = (gr.Textbox(), gr.Textbox(), gr.Textbox(), gr.Textbox(),
                                                    gr.Textbox())
            a_api_key = gr.Textbox(value="")  # an API key, when the service requires one (optional last input)
            a_out, c_table, c_text, about_out = gr.JSON(), gr.Dataframe(), gr.Markdown(), gr.JSON()
            gr.Button().click(ask_api, [a_name, a_body, a_mode, a_key, a_pin, a_api_key], a_out, api_name="ask")
            gr.Button().click(compare_api, [a_name, a_body, a_key, a_pin, a_api_key], [c_table, c_text],
                              api_name="compare")
            gr.Button().click(about, None, about_out, api_name="about")

    # A bounded queue: a flood of playground clicks gets "queue full", not memory; uploads are capped before
    # they are written (per-endpoint pixel and byte limits are checked before decoding, in the task), and
    # Gradio's copies of them are deleted once read (Kit.image_file), or after PLAYGROUND_FILE_TTL_S anyway.
    demo.queue(max_size=PLAYGROUND_QUEUE, default_concurrency_limit=2)
    quiet_queue(demo)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    # A middleware, not a wrapper: BentoML runs the FastAPI app's lifespan, which starts Gradio's queue.
    app.add_middleware(Switchable, holder=holder)
    return gr.mount_gradio_app(app, demo, path="/playground", max_file_size=PLAYGROUND_MAX_UPLOAD,
                               js=CHOOSE_BRUSH_JS)


PLAYGROUND_QUEUE = 64
PLAYGROUND_MAX_UPLOAD = 32 * 1024 * 1024
# Any other playground request body (Gradio's JSON calls): a sketch as PNG data is well under this.
PLAYGROUND_MAX_BODY = 4 * 1024 * 1024
PLAYGROUND_FILE_TTL_S = 300


def without_paths(value: Any) -> Any:
    """Lineage as anonymous visitors may see it: a path (where a model was built or imported from) becomes its
    file name."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        head, _, tail = value.replace("\\", "/").partition(" ")
        return head.rsplit("/", 1)[-1] + (f" {tail}" if tail else "")
    return value


class Switchable:
    """The playground app, answering 404 at /playground when SWITCHYARD_PLAYGROUND is false (read when
    the service starts, like every setting: the app itself is built at import)."""

    def __init__(self, app: Any, holder: EngineHolder) -> None:
        self.app, self.holder = app, holder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        engine = self.holder.engine
        if scope["type"] in ("http", "websocket") and engine is not None and not engine.settings.playground \
                and scope.get("path", "").startswith("/playground"):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send_detail(send, 404, "the playground is off (SWITCHYARD_PLAYGROUND=false)")
            return
        if scope["type"] == "http" and scope.get("path", "").startswith("/playground"):
            cap = Capped(scope, receive, send)
            await self.app(scope, cap.receive, cap.send)
            return
        await self.app(scope, receive, send)


class Capped:
    """A playground request's body counted as it arrives: past its cap (uploads: PLAYGROUND_MAX_UPLOAD, which
    Gradio also enforces once the upload is parsed; anything else: PLAYGROUND_MAX_BODY) it is answered 413
    here, the app sees the client go, and whatever the app sends after that is dropped. A chunked body
    without a length cannot grow a worker's memory."""

    def __init__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.cap = PLAYGROUND_MAX_UPLOAD if scope["path"].endswith("/upload") else PLAYGROUND_MAX_BODY
        self._receive, self._send, self.seen, self.answered = receive, send, 0, False

    async def receive(self) -> Any:
        if self.answered:
            return {"type": "http.disconnect"}
        message = await self._receive()
        self.seen += len(message.get("body", b""))
        if self.seen <= self.cap:
            return message
        self.answered = True
        await send_detail(self._send, 413, f"body: over {self.cap} bytes, the playground's limit", close=True)
        return {"type": "http.disconnect"}

    async def send(self, message: Any) -> None:
        if not self.answered:
            await self._send(message)


# Gradio's queue polls every 1 ms while it is empty (its default off Windows, where it is 50 ms):
# a thousand wake-ups a second, most of a service's CPU at rest. 20 ms adds at most that much
# to the start of a playground request, which a person clicking a button does not notice.
QUEUE_POLL_S = 0.02
PROGRESS_POLL_S = 0.1


def quiet_queue(demo: Any) -> None:
    queue = getattr(demo, "_queue", None)
    if queue is not None and hasattr(queue, "sleep_when_free"):
        queue.sleep_when_free = QUEUE_POLL_S
        queue.progress_update_sleep_when_free = PROGRESS_POLL_S


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def answered(generation: Generation) -> str:
    """What the playground says under a finished reply: who wrote it, how fast, and why it was cut if it was."""
    cut = generation.window.cut if generation.window is not None else None
    head = (f"### Cut by the endpoint's guardrails\n\ncheck `{cut.check}` found `{cut.label}` in what came next: "
            "the reply above is the text that passed.\n\n" if cut is not None else "")
    return (f"{head}### Answered by `{generation.version}`\n\n{generation.route} · first token "
            f"{generation.first_token_s * 1000:.0f} ms, {generation.usage.completion_tokens} tokens in "
            f"{generation.total_s * 1000:.0f} ms")
