"""The ``serve`` recipe step: start a bundle's server in the background and ask it one question over HTTP.

```yaml
- serve:
    bundle: demo-lora-gguf-bundle    # the export step's output
    port: 8000                       # taken? a free port is used and reported
```

The server is ``llmlab serve`` in its own process (``llmlab.serve.process``), bound to 127.0.0.1,
left running when the recipe ends so the winner is there to use (stop it with ``llmlab servers stop
NAME`` or on the Export page). Asking once proves the exported artifact answers over the real
protocol, not only in process. The step is never skipped: a second run finds the server already
running and asks again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import LlmlabError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.store import Store


class ServeStepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(..., description="The bundle (or servable artifact) to serve.")
    port: int = Field(8000, ge=1, le=65535, description="Port on 127.0.0.1; when it is taken, a free one is used.")
    question: str | None = Field(None, description="What to ask once over HTTP; default: the first held-out "
                                 "question of the model's demo world (or a greeting without a world).")
    keep_running: bool = Field(True, description="Leave the server running after the step "
                               "(stop it: `llmlab servers stop NAME`).")
    max_tokens: int = Field(32, ge=1, le=1024, description="Most tokens in the answer.")


def _question(config: ServeStepConfig, store: Store) -> tuple[str, str | None]:
    """The question to ask and its expected answer, if known."""
    if config.question:
        return config.question, None
    from llmlab.world import find_world

    world = find_world(store, store.get(config.bundle))
    if world is None:
        return "Hello! Who are you?", None
    first = world.split("heldout")[0]
    return first["question"], first["answer"]


def serve_step(config: ServeStepConfig, *, store: Store, progress: Reporter | None = None, **_: Any) -> dict[str, Any]:
    """Start (or find) the server, ask one question, return what happened."""
    import httpx

    from llmlab.serve import process

    info = process.server_of(config.bundle, store)
    if info is None:
        port = config.port if process.port_free(config.port) else None
        emit(progress, "log", message=f"starting the server for {config.bundle}"
             + ("" if port else f" (port {config.port} is taken: using a free one)"))
        info = process.start(config.bundle, store=store, port=port)
    question, expected = _question(config, store)
    body = {"model": config.bundle, "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": config.max_tokens}
    t0 = time.perf_counter()
    try:
        r = httpx.post(f"{info['url']}/v1/chat/completions", json=body, timeout=120)
    except httpx.TransportError as e:
        raise LlmlabError(f"The server for '{config.bundle}' did not answer: {e}.",
                          f"See its log: {info.get('output')}.") from e
    if r.status_code != 200:
        raise LlmlabError(f"The server for '{config.bundle}' answered {r.status_code}: {r.text[:300]}",
                          f"See its log: {info.get('output')}.")
    answer = r.json()["choices"][0]["message"]["content"]
    seconds = round(time.perf_counter() - t0, 3)
    emit(progress, "log", message=f"{info['url']}  Q: {question}  A: {answer.strip()}")
    if not config.keep_running:
        process.stop(config.bundle, store=store)
    return {"url": info["url"], "question": question, "answer": answer, "expected": expected,
            "correct": None if expected is None else expected.lower() in answer.lower(),
            "seconds": seconds, "running": config.keep_running}
