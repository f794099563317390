"""Parity: does the exported bundle answer as the artifact that was evaluated?

```python
from llmlab.export.parity import check
report = check("models/demo-q4_k_m-bundle", "demo-q4_k_m")   # raises ParityError on drift
```

A fixed prompt set is replayed through the bundle's server over HTTP (``llmlab.serve`` on a free
loopback port) and through the artifact in process. For the same format (GGUF -> GGUF) the chat
template rendering, the prompt token ids and the greedy outputs must be equal and every
generated token's log-probability within ``tolerance``; any difference raises ``ParityError``
naming what drifted. For a format change (a safetensors artifact against a GGUF bundle) outputs may
legitimately differ: the report gives KL divergence and top-1 agreement (``scoring.compare``) of
the bundle's model against the artifact instead, and only the chat template must match.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import LlmlabError
from llmlab.events import Reporter, emit

if TYPE_CHECKING:
    from llmlab.store import Artifact, Store

PROMPTS: tuple[str, ...] = (
    "Where does Ada live?",
    "Tell me a short story about a baker.",
    "What is the favourite colour of the miner?",
    "Once upon a time",
)


def decoded_logprobs(model: Any, ids: list[int], out: list[int]) -> Any:
    """Log-probabilities of the tokens ``out`` after the prompt ``ids``, decoded token by token as a
    server does. (One batched forward over prompt + output uses other kernels in llama.cpp: on a
    30-layer quantized model its log-probabilities differ from decoding's by up to ~0.2.)"""
    import numpy as np

    got = []
    with model.decoding(ids) as decoder:
        for j, tok in enumerate(out):
            logits = decoder.logits.astype(np.float64)
            top = logits.max()
            got.append(logits[tok] - top - np.log(np.exp(logits - top).sum()))
            if j + 1 < len(out):
                decoder.push(tok)
    return np.array(got)


class ParityError(LlmlabError):
    """The bundle does not answer as the evaluated artifact."""

    exit_code = 4


def check(bundle: str | Path, artifact: str | Artifact, *, store: Store | None = None,
          prompts: tuple[str, ...] = PROMPTS, max_tokens: int = 16, tolerance: float = 1e-2,
          progress: Reporter | None = None, verify: bool = True,
          adapters: Mapping[str, str | Artifact] | None = None) -> dict[str, Any]:
    """Compare the bundle's server with ``artifact`` (see module doc); returns the report.

    ``adapters`` ({name: gguf-adapter artifact}): a bundle holding several adapters is also compared,
    as ``<bundle>:<name>``, with each adapter's artifact loaded on its own; the requests alternate
    between the base and the adapters, so the server switches adapters between every two."""
    import httpx

    from llmlab.runtime import load
    from llmlab.serve import ServeConfig, running
    from llmlab.serve.bundle import open_bundle

    spec = open_bundle(bundle, verify=verify)
    report: dict[str, Any] = {"prompts": len(prompts), "max_tokens": max_tokens, "tolerance": tolerance}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as refs, \
            running(ServeConfig(source=str(bundle), port=0, verify=False, log_path=f"{tmp}/parity.jsonl",
                                log_fsync=False, max_tokens=max_tokens)) as url, \
            httpx.Client(base_url=url, timeout=120) as http:
        ref = refs.enter_context(load(artifact, store=store))
        served = {spec["name"]: ref} | {f"{spec['name']}:{name}": refs.enter_context(load(a, store=store))
                                        for name, a in (adapters or {}).items()}
        same_format = ref.engine == "llama.cpp"
        report["mode"] = "exact" if same_format else "format-change"
        worst = {name: 0.0 for name in served}
        drift: list[str] = []
        for i, text in enumerate(prompts):
            for name, model in served.items():
                where = f"prompt {i}" + (f" ({name})" if len(served) > 1 else "")
                diff = _compare(http, name, model, text, max_tokens, same_format, where, drift)
                worst[name] = max(worst[name], diff)
            emit(progress, "progress", task="parity", done=i + 1, total=len(prompts))
        report["max_logprob_diff"] = max(worst.values())
        if adapters:
            report["adapters"] = {name.split(":", 1)[1]: {"max_logprob_diff": d} for name, d in worst.items()
                                  if ":" in name}
        for name, d in worst.items():
            if d > tolerance:
                drift.append(f"log-probabilities of {name} differ by up to {d:.2e} (tolerance {tolerance:.0e})")
        if not same_format and not drift:
            from llmlab.scoring import compare

            with load(Path(bundle) / spec["model"]["file"]) as served_model:
                report.update(compare(served_model, ref, list(prompts)))
    report["drift"] = drift
    report["ok"] = not drift
    if drift:
        raise ParityError(f"The bundle does not answer as '{getattr(artifact, 'name', artifact)}': {drift[0]}"
                          + (f" (and {len(drift) - 1} more differences)" if len(drift) > 1 else "") + ".",
                          "Re-export from the evaluated artifact; do not edit the model or its template by hand.")
    return report


def _compare(http: Any, name: str, ref: Any, text: str, max_tokens: int, same_format: bool, where: str,
             drift: list[str]) -> float:
    """One prompt through the server as model ``name`` and through ``ref``; appends what drifted to
    ``drift``; the largest log-probability difference."""
    import numpy as np

    from llmlab.runtime import SamplingParams

    body = {"model": name, "messages": [{"role": "user", "content": text}]}
    served = http.post("/apply-template", json=body).json()
    prompt = ref.apply_chat_template(body["messages"])
    if served.get("prompt") != prompt:
        drift.append(f"{where}: the chat template renders differently ({served.get('prompt')!r} vs {prompt!r})")
        return 0.0
    if not same_format:
        return 0.0
    if served["tokens"] != ref.tokenize(prompt):
        drift.append(f"{where}: the prompt tokenizes differently")
        return 0.0
    r = http.post("/v1/chat/completions", json={**body, "temperature": 0, "max_tokens": max_tokens,
                                                 "logprobs": True}).json()
    got = r["choices"][0]["message"]["content"]
    want = ref.chat(body["messages"], SamplingParams.greedy(max_tokens))
    if got != want:
        drift.append(f"{where}: greedy output {got!r} differs from the artifact's {want!r}")
        return 0.0
    ids = ref.tokenize(prompt)
    out = list(ref.generate_ids(ids, SamplingParams.greedy(max_tokens)))
    want_lp = decoded_logprobs(ref, ids, out)
    got_lp = np.array([t["logprob"] for t in (r["choices"][0]["logprobs"] or {}).get("content", [])])
    if len(got_lp) != len(want_lp):
        drift.append(f"{where}: {len(got_lp)} log-probabilities for {len(want_lp)} tokens")
        return 0.0
    return float(np.abs(got_lp - want_lp).max()) if len(got_lp) else 0.0
