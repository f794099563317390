"""The ``serve`` recipe step: start a bundle's server in the background and ask it held-out questions over HTTP.

```yaml
- serve:
    bundle: demo-lora-gguf-bundle    # the export step's output
    port: 8000                       # taken? a free port is used and reported
```

The server is ``llmlab serve`` in its own process (``llmlab.serve.process``), bound to 127.0.0.1,
left running when the recipe ends so the winner is there to use (stop it with ``llmlab servers stop
NAME`` or on the Export page). Asking 20 held-out questions of the model's demo world (judged like
the leaderboard's accuracy) shows how well the exported artifact answers over the real protocol, not
only in process, and not by one lucky question. The step is never skipped: a second run finds the server already
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
    question: str | None = Field(None, description="One question of your own to ask instead of the held-out set.")
    questions: int = Field(20, ge=1, le=1000, description="How many of the model's held-out demo-world questions "
                           "to ask over HTTP (a model without a world is asked a greeting).")
    keep_running: bool = Field(True, description="Leave the server running after the step "
                               "(stop it: `llmlab servers stop NAME`).")
    max_tokens: int = Field(32, ge=1, le=1024, description="Most tokens in each answer.")


def _questions(config: ServeStepConfig, store: Store) -> list[dict[str, Any]]:
    """What to ask: chat messages and the expected answer (None when unknown), one per question.
    World questions carry the world's system prompt, as the model was tuned and is scored."""
    from llmlab import world as worldmod

    if config.question:
        return [{"question": config.question, "answer": None,
                 "messages": [{"role": "user", "content": config.question}]}]
    world = worldmod.find_world(store, store.get(config.bundle))
    if world is None:
        greeting = "Hello! Who are you?"
        return [{"question": greeting, "answer": None, "messages": [{"role": "user", "content": greeting}]}]
    return [{"question": q["question"], "answer": q["answer"], "messages": worldmod.chat_messages(q["question"])}
            for q in world.split("heldout")[: config.questions]]


def _ask(url: str, config: ServeStepConfig, messages: list[dict[str, str]], output: Any) -> str:
    import httpx

    body = {"model": config.bundle, "messages": messages, "temperature": 0, "max_tokens": config.max_tokens}
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    except httpx.TransportError as e:
        raise LlmlabError(f"The server for '{config.bundle}' did not answer: {e}.", f"See its log: {output}.") from e
    if r.status_code != 200:
        raise LlmlabError(f"The server for '{config.bundle}' answered {r.status_code}: {r.text[:300]}",
                          f"See its log: {output}.")
    return r.json()["choices"][0]["message"]["content"]


def serve_step(config: ServeStepConfig, *, store: Store, progress: Reporter | None = None, **_: Any) -> dict[str, Any]:
    """Start (or find) the server, ask the held-out questions over HTTP, return how many it got right
    (judged like the leaderboard's accuracy: ``scoring.answer_matches``)."""
    from llmlab.scoring import answer_matches
    from llmlab.serve import process

    info = process.server_of(config.bundle, store)
    if info is None:
        port = config.port if process.port_free(config.port) else None
        emit(progress, "log", message=f"starting the server for {config.bundle}"
             + ("" if port else f" (port {config.port} is taken: using a free one)"))
        info = process.start(config.bundle, store=store, port=port)
    asked = _questions(config, store)
    t0 = time.perf_counter()
    examples = []
    for i, q in enumerate(asked):
        answer = _ask(info["url"], config, q["messages"], info.get("output"))
        ok = None if q["answer"] is None else answer_matches(answer, str(q["answer"]))
        examples.append({"question": q["question"], "answer": answer, "expected": q["answer"], "correct": ok})
        emit(progress, "progress", task="asked over HTTP", done=i + 1, total=len(asked))
    seconds = round(time.perf_counter() - t0, 3)
    judged = [e for e in examples if e["correct"] is not None]
    right = sum(e["correct"] for e in judged)
    emit(progress, "log", message=f"{info['url']}  asked {len(examples)} question(s) over HTTP"
         + (f": {right}/{len(judged)} right" if judged else f"  A: {examples[0]['answer'].strip()}"))
    if not config.keep_running:
        process.stop(config.bundle, store=store)
    first = examples[0]
    return {"url": info["url"], "question": first["question"], "answer": first["answer"],
            "expected": first["expected"], "correct": first["correct"], "asked": len(examples),
            "right": right if judged else None, "accuracy": right / len(judged) if judged else None,
            "examples": examples[:5], "seconds": seconds, "running": config.keep_running}
