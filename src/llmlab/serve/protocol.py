"""The OpenAI wire format: request bodies, response objects, tool calls as prompts and replies.

Tool calls are honest but simple: the tool list goes into a system message (llmlab does not rely
on a model's template having a tools section), the model is asked to answer a call as one JSON
object ``{"name": ..., "arguments": {...}}``, and such a reply is returned as ``tool_calls``.
With ``tool_choice`` ``required`` or a named function the reply is forced into that shape by a
llama.cpp grammar; with ``auto`` a small model may or may not produce a call.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError
from llmlab.serve.generation import Generation, TokenInfo


class RequestBase(BaseModel):
    """What chat and completion requests share."""

    # OpenAI clients send fields llmlab does not use (user, metadata...): ignored, not refused.
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens (benchmarks)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatRequest(RequestBase):
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(RequestBase):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: Literal[False] = False


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str] = Field(..., description="One text or a list of texts (token-id input is not accepted).")
    encoding_format: Literal["float"] = "float"

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def prompt_text(req: CompletionRequest) -> str:
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise ConfigError("Send one prompt per request.", "Make one request per prompt.")
        return req.prompt[0]
    return req.prompt


# ----- tools -----
def _functions(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in tools:
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ConfigError("Each tool must be {'type': 'function', 'function': {'name': ..., 'parameters': ...}}.",
                              "See the OpenAI tools format.")
        out.append(fn)
    return out


def chat_messages(req: ChatRequest) -> list[dict[str, str]]:
    """The request's messages as plain role/content pairs the model's template accepts."""
    out: list[dict[str, str]] = []
    fns = _functions(req.tools) if req.tools and req.tool_choice != "none" else []
    if fns:
        listing = json.dumps([{k: f[k] for k in ("name", "description", "parameters") if f.get(k)} for f in fns])
        out.append({"role": "system", "content": f"You can call these tools: {listing}\nTo call one, reply with "
                    'only a JSON object {"name": "<tool>", "arguments": {...}}.'})
    for i, m in enumerate(req.messages):
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if role == "tool":
            out.append({"role": "user", "content": f"Tool result ({m.get('name') or m.get('tool_call_id')}): "
                        f"{content}"})
        elif role == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")}
                     for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": json.dumps(calls[0] if len(calls) == 1 else calls)})
        elif role in ("system", "developer", "user", "assistant") and isinstance(content, str):
            out.append({"role": "system" if role == "developer" else role, "content": content})
        else:
            raise ConfigError(f"messages[{i}] needs a role (system, user, assistant, tool) and string content.",
                              "Send {'role': 'user', 'content': '...'}.")
    return out


def forced_schema(req: ChatRequest) -> dict[str, Any] | None:
    """The JSON schema the reply must follow: response_format's, or a forced tool call's."""
    rf = req.response_format or {}
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ConfigError("response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}.")
        return schema
    if rf.get("type") == "json_object":
        return {"type": "object"}
    if rf and rf.get("type") != "text":
        raise ConfigError(f"Unknown response_format type {rf.get('type')!r}.", "Use text, json_object or json_schema.")
    if not req.tools or req.tool_choice in (None, "auto", "none"):
        return None
    fns = _functions(req.tools)
    if isinstance(req.tool_choice, dict):
        name = (req.tool_choice.get("function") or {}).get("name")
        fns = [f for f in fns if f["name"] == name]
        if not fns:
            raise ConfigError(f"tool_choice names '{name}', which is not among the tools.")
    elif req.tool_choice != "required":
        raise ConfigError(f"Unknown tool_choice {req.tool_choice!r}.", "Use auto, none, required or a function.")
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                               "arguments": f.get("parameters") or {"type": "object"}},
              "required": ["name", "arguments"]} for f in fns]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def tool_calls(req: ChatRequest, text: str) -> list[dict[str, Any]] | None:
    """The reply as OpenAI ``tool_calls`` when it is a call of one of the request's tools."""
    if not req.tools or req.tool_choice == "none":
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    names = {f["name"] for f in _functions(req.tools)}
    if not isinstance(obj, dict) or obj.get("name") not in names or not isinstance(obj.get("arguments"), dict):
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": obj["name"], "arguments": json.dumps(obj["arguments"])}}]


# ----- responses -----
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def chat_logprobs(gen: Generation, tokens: list[TokenInfo]) -> dict[str, Any]:
    def entry(tok: int, lp: float) -> dict[str, Any]:
        text = gen.model.detokenize([tok])
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(a, b) for a, b in t.top]}
                        for t in tokens]}


def completion_logprobs(gen: Generation, tokens: list[TokenInfo]) -> dict[str, Any]:
    texts = [gen.model.detokenize([t.token]) for t in tokens]
    return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{gen.model.detokenize([a]): b for a, b in t.top} for t in tokens],
            "text_offset": [sum(len(x) for x in texts[:i]) for i in range(len(texts))]}


def usage(gen: Generation) -> dict[str, int]:
    return token_usage(gen.prompt_tokens, gen.completion_tokens)


def token_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """An OpenAI ``usage`` object (also for an answer made of several generations, as an agent's)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def envelope(kind: str, rid: str, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, **extra}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
