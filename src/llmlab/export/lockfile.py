"""``requirements.lock`` for a bundle: only what serving needs, pinned to what is installed here.

The roots are llmlab's base dependencies plus the server (FastAPI, uvicorn) and the engine the
bundle's model runs on (llama-cpp-python for GGUF; vLLM users bring their own), plus Chroma, bm25s
and onnxruntime for a bundled index and LangGraph for an agent. The closure is
read from the installed packages' metadata (environment markers evaluated for this machine, no
extras), so a GGUF bundle's lock has no torch in it.
"""

from __future__ import annotations

import re
from importlib import metadata

from llmlab.errors import MissingExtraError

SERVE_ROOTS = ("pydantic", "pyyaml", "rich", "psutil", "numpy", "fastapi", "uvicorn", "jinja2")
ENGINE_ROOTS = {"gguf": ("llama-cpp-python", "gguf"), "hf": ()}
# A bundled index: Chroma, BM25 and the ONNX embedder (onnxruntime + tokenizers, no torch).
RAG_ROOTS = ("chromadb", "bm25s", "pystemmer", "onnxruntime", "tokenizers")
AGENT_ROOTS = ("langgraph", "langchain-core")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """{distribution name: installed version} of ``roots`` and everything they require, following the
    extras a requirement asks for (chromadb needs ``uvicorn[standard]``)."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    extras_done: dict[str, set[str]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(r, frozenset()) for r in roots]
    while todo:
        raw, extras = todo.pop()
        name = _norm(raw)
        wanted = {""} | set(extras)
        new = wanted - extras_done.get(name, set())
        if not new:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise MissingExtraError(f"Writing a bundle's requirements.lock ({name})", "lab", name) from None
        seen[name] = dist.version
        extras_done.setdefault(name, set()).update(new)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in new):
                todo.append((req.name, frozenset(req.extras)))
    return seen


def lock_text(model_format: str, *, rag: bool = False, agent: bool = False) -> str:
    roots = SERVE_ROOTS + ENGINE_ROOTS[model_format] + (RAG_ROOTS if rag else ()) + (AGENT_ROOTS if agent else ())
    pins = closure(roots)
    head = ["# What `llmlab serve` needs for this bundle, pinned to the versions it was exported with.",
            "# llmlab itself: install its wheel (pip install llmlab-*.whl --no-deps) beside these."]
    return "\n".join(head + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n"
