"""An OpenAI-compatible server for a bundle or an artifact (``llmlab serve``).

```python
from llmlab.serve import ServeConfig, running
with running(ServeConfig(source="demo-q4_k_m", port=0)) as url:        # a thread on a free port
    httpx.post(f"{url}/v1/chat/completions", json={"model": "demo-q4_k_m",
               "messages": [{"role": "user", "content": "Where does Ada live?"}], "temperature": 0})
```

Endpoints: ``/v1/chat/completions`` and ``/v1/completions`` (streaming as server-sent events,
``logprobs``, ``response_format`` JSON schemas through llama.cpp grammars, tool calls),
``/v1/models``, ``/health``, ``/metrics`` (Prometheus text). It binds 127.0.0.1 unless told
otherwise and refuses a wider bind without an API key; request size, ``max_tokens`` and the queue
are bounded (429 when full); every request is one line in a JSONL log. A bundle is checked
against its sha256s before anything in it is opened. A bundle holding several LoRA adapters loads
its base once and answers ``<bundle>:<adapter>`` with that adapter, switched per request. Modules: ``config`` (options, host check),
``app`` (endpoints, queue), ``generation`` (grammar, logprobs, cancel), ``protocol`` (OpenAI
format, tool calls), ``metrics``, ``requestlog``.
"""

from __future__ import annotations

from llmlab.serve.config import ServeConfig, is_loopback

__all__ = ["ServeConfig", "create_app", "is_loopback", "load_served", "running", "serve"]


def __getattr__(name: str):  # the app module imports FastAPI: only when used
    if name in ("create_app", "load_served", "running", "serve"):
        from llmlab.serve import app

        return getattr(app, name)
    raise AttributeError(name)
