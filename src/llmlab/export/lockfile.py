"""``requirements.lock`` for a bundle: only what serving needs, pinned to what is installed here.

The roots are llmlab's base dependencies plus the server (FastAPI, uvicorn) and the engine the
bundle's model runs on (llama-cpp-python for GGUF; vLLM users bring their own). The closure is
read from the installed packages' metadata (environment markers evaluated for this machine, no
extras), so a GGUF bundle's lock has no torch in it.
"""

from __future__ import annotations

import re
from importlib import metadata

from llmlab.errors import MissingExtraError

SERVE_ROOTS = ("pydantic", "pyyaml", "rich", "psutil", "numpy", "fastapi", "uvicorn", "jinja2")
ENGINE_ROOTS = {"gguf": ("llama-cpp-python",), "hf": ()}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: tuple[str, ...]) -> dict[str, str]:
    """{distribution name: installed version} of ``roots`` and everything they require."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise MissingExtraError(f"Writing a bundle's requirements.lock ({name})", "lab", name) from None
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def lock_text(model_format: str) -> str:
    pins = closure(SERVE_ROOTS + ENGINE_ROOTS[model_format])
    head = ["# What `llmlab serve` needs for this bundle, pinned to the versions it was exported with.",
            "# llmlab itself: install its wheel (pip install llmlab-*.whl --no-deps) beside these."]
    return "\n".join(head + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n"
