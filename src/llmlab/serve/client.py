"""A small client for a running server: streamed chat, metrics, and copyable snippets.

```python
from llmlab.serve.client import stream_chat, snippets
for piece in stream_chat("http://127.0.0.1:8000", "demo-q4_k_m-bundle", [{"role": "user", "content": "Hi"}]):
    print(piece, end="")
print(snippets("http://127.0.0.1:8000", "demo-q4_k_m-bundle")["curl"])
```
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from llmlab.errors import LlmlabError


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def stream_chat(url: str, model: str, messages: Sequence[dict[str, str]], *, api_key: str | None = None,
                **params: Any) -> Iterator[str]:
    """The reply's text pieces from ``/v1/chat/completions`` with ``stream: true``."""
    import httpx

    body = {"model": model, "messages": list(messages), "stream": True, **params}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=_headers(api_key), timeout=300) as r:
        if r.status_code != 200:
            r.read()
            raise LlmlabError(f"The server answered {r.status_code}: {r.json()['error']['message']}")
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if "error" in event:
                    raise LlmlabError(f"The server failed mid-answer: {event['error']['message']}")
                for choice in event.get("choices", []):
                    if choice["delta"].get("content"):
                        yield choice["delta"]["content"]


def metrics(url: str, *, api_key: str | None = None) -> dict[str, float]:
    """The server's ``/metrics`` as {'name{labels}': value}."""
    import httpx

    from llmlab.serve.metrics import parse

    return parse(httpx.get(f"{url}/metrics", headers=_headers(api_key), timeout=5).text)


def snippets(url: str, model: str, api_key_env: str | None = None,
             question: str = "What is the capital of France?") -> dict[str, str]:
    """A curl command and an OpenAI-client script that ask the server ``question`` (pass one the
    model can answer: ``llmlab.world.example_question``)."""
    auth = f' \\\n  -H "Authorization: Bearer ${api_key_env}"' if api_key_env else ""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 64})
    key = f'os.environ["{api_key_env}"]' if api_key_env else '"none"'
    return {
        "curl": f"curl {url}/v1/chat/completions \\\n  -H 'Content-Type: application/json'{auth} \\\n  -d '{body}'",
        "python": f"""import os
from openai import OpenAI

client = OpenAI(base_url="{url}/v1", api_key={key})
reply = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": {json.dumps(question)}}}],
    max_tokens=64,
)
print(reply.choices[0].message.content)
""",
    }
