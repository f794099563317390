"""LangChain chat models over llmlab's runtime and over any OpenAI-compatible endpoint.

```python
from llmlab.runtime import load
from llmlab.agents.chat_model import RuntimeChatModel, OpenAIChatModel, chat_model_for
llm = RuntimeChatModel(model=load("demo"), max_tokens=32)
llm.invoke("Where does Bodo live?").content
for chunk in llm.stream("Hello"): print(chunk.content, end="")
api = OpenAIChatModel(base_url="http://127.0.0.1:8080/v1", model_name="demo")
```

``RuntimeChatModel`` wraps a loaded ``llmlab.runtime.Model`` (transformers or llama.cpp) and streams
through its ``stream_chat``; token counts come from the model's own tokenizer and land in
``usage_metadata`` (with ``model_name`` in ``response_metadata``, so LangChain's usage callbacks
count them). With ``batcher`` (a ``llmlab.runtime.batched.Batcher`` over the same model) it
generates in that batch instead, beside the requests of other threads (``llm.batched(batcher)``).
With ``adapter`` it runs a GGUF model holding several adapters with that one (None: the base alone),
whichever adapter other requests switch the model to meanwhile.
``OpenAIChatModel`` speaks the ``/chat/completions`` API with httpx (streaming
via server-sent events); its key is read from the environment variable the spec names, never
stored. ``chat_model_for(spec.model)`` picks one from an agent spec.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from llmlab.errors import ConfigError, LlmlabError, NotFoundError
from llmlab.runtime.batched import ACTIVE

if TYPE_CHECKING:
    from llmlab.agents.spec import ModelSpec
    from llmlab.store import Store

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "user"}


def to_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the ``{"role", "content"}`` dicts the runtime and OpenAI APIs take."""
    out = []
    for m in messages:
        role = _ROLES.get(m.type)
        if role is None:
            raise ConfigError(f"Cannot send a '{m.type}' message to a chat model.")
        out.append({"role": role, "content": m.content if isinstance(m.content, str) else str(m.content)})
    return out


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


class RuntimeChatModel(BaseChatModel):
    """A chat model over a loaded ``llmlab.runtime.Model``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model: Any = Field(..., description="A loaded llmlab.runtime.Model.")
    temperature: float = 0.0
    max_tokens: int = 64
    seed: int | None = 0
    stop: list[str] = Field(default_factory=list)
    batcher: Any = Field(None, description="A llmlab.runtime.batched.Batcher over the same model to generate "
                                           "in (None: the model's own stream_chat, one request at a time).")
    adapter: str | None = Field(ACTIVE, description="The adapter to generate with, of a model holding several "
                                                    "(None: the base alone; default: whichever is active).")

    @property
    def _llm_type(self) -> str:
        return "llmlab-runtime"

    def batched(self, batcher: Any) -> RuntimeChatModel:
        """This chat model generating through ``batcher`` (which must run over the same model)."""
        if batcher.engine.model is not self.model:
            raise ConfigError("The batcher runs over another model than this chat model.",
                              "Make the Batcher with the chat model's own model (llm.model).")
        return self.model_copy(update={"batcher": batcher})

    def _params(self, stop: list[str] | None) -> Any:
        from llmlab.runtime import SamplingParams

        return SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed,
                              stop=[*self.stop, *(stop or [])])

    def prompt_tokens(self, messages: list[BaseMessage]) -> int:
        return len(self.model.tokenize(self.model.apply_chat_template(to_dicts(messages)), add_special=False))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        dicts = to_dicts(messages)
        text = ""
        # on the model's own context the adapter is held for the whole reply: no other thread switches it
        # meanwhile (a batch sets each request's adapter itself)
        own = self.batcher is None and self.adapter != ACTIVE
        with self.model.adapter(self.adapter) if own else contextlib.nullcontext():
            pieces = self.model.stream_chat(dicts, self._params(stop)) if self.batcher is None \
                else self.batcher.stream_chat(dicts, self._params(stop), adapter=self.adapter)
            for piece in pieces:
                text += piece
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        n_out = len(self.model.tokenize(text)) if text else 0
        yield ChatGenerationChunk(message=AIMessageChunk(  # model_name: LangChain's usage callbacks need it
            content="", usage_metadata=_usage(self.prompt_tokens(messages), n_out),  # type: ignore[arg-type]
            response_metadata={"model_name": Path(str(self.model.path)).name}))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        merged: AIMessageChunk | None = None
        for chunk in self._stream(messages, stop, run_manager, **kwargs):
            merged = chunk.message if merged is None else merged + chunk.message  # type: ignore[assignment]
        assert merged is not None
        message = AIMessage(content=merged.content, usage_metadata=merged.usage_metadata,
                            response_metadata=merged.response_metadata)
        return ChatResult(generations=[ChatGeneration(message=message)])


class OpenAIChatModel(BaseChatModel):
    """A chat model over an OpenAI-compatible ``/chat/completions`` endpoint (llama.cpp's server,
    vLLM, Ollama, a hosted API)."""

    base_url: str = Field(..., description="e.g. http://127.0.0.1:8080/v1")
    model_name: str = Field("default", description="The 'model' field of each request.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    temperature: float = 0.0
    max_tokens: int = 64
    timeout: float = 120.0

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, stream: bool) -> tuple[dict, dict]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"The environment variable {self.api_key_env} (the endpoint's API key) is not set.",
                                  f"export {self.api_key_env}=... before starting llmlab.")
            headers["Authorization"] = f"Bearer {key}"
        body: dict[str, Any] = {"model": self.model_name, "messages": to_dicts(messages),
                                "temperature": self.temperature, "max_tokens": self.max_tokens, "stream": stream}
        if stop:
            body["stop"] = stop
        if stream:
            body["stream_options"] = {"include_usage": True}
        return headers, body

    def _url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def _fail(self, e: Exception) -> LlmlabError:
        import httpx

        if isinstance(e, httpx.HTTPStatusError):
            return LlmlabError(f"The endpoint {self._url()} answered HTTP {e.response.status_code}: "
                               f"{e.response.text[:200]}", "Check the model name and API key.")
        return NotFoundError(f"Cannot reach the chat endpoint {self._url()}: {type(e).__name__}: {e}.",
                             "Start the server (e.g. `python -m llama_cpp.server --model FILE`) or fix the URL.")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        import httpx

        headers, body = self._request(messages, stop, stream=False)
        try:
            r = httpx.post(self._url(), json=body, headers=headers, timeout=self.timeout)
            r.raise_for_status()
        except httpx.HTTPError as e:
            raise self._fail(e) from None
        data = r.json()
        usage = data.get("usage") or {}
        message = AIMessage(content=data["choices"][0]["message"].get("content") or "",
                            usage_metadata=_usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
                            response_metadata={"model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        import httpx

        headers, body = self._request(messages, stop, stream=True)
        try:
            with httpx.stream("POST", self._url(), json=body, headers=headers, timeout=self.timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if event.get("usage"):
                        u = event["usage"]
                        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=_usage(
                            u.get("prompt_tokens", 0), u.get("completion_tokens", 0)),  # type: ignore[arg-type]
                            response_metadata={"model_name": self.model_name}))
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                            if run_manager:
                                run_manager.on_llm_new_token(piece, chunk=chunk)
                            yield chunk
        except httpx.HTTPError as e:
            raise self._fail(e) from None


def chat_model_for(spec: ModelSpec, *, store: Store | None = None) -> BaseChatModel:
    """The chat model an agent spec names (a store artifact is loaded with the runtime)."""
    if spec.endpoint:
        return OpenAIChatModel(base_url=spec.endpoint, model_name=spec.endpoint_model or "default",
                               api_key_env=spec.api_key_env, temperature=spec.temperature,
                               max_tokens=spec.max_tokens)
    if not spec.artifact:
        raise ConfigError("The agent spec names no chat model.",
                          "Set model.artifact (a store artifact, e.g. demo) or model.endpoint.")
    from llmlab.runtime import load

    return RuntimeChatModel(model=load(spec.artifact, store=store), temperature=spec.temperature,
                            max_tokens=spec.max_tokens)
