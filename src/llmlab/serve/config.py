"""The server's options (``llmlab serve`` flags, a bundle's ``server.json``) and the host check."""

from __future__ import annotations

import ipaddress
import os
import socket

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmlab.errors import ConfigError


class ServeConfig(BaseModel):
    """How ``llmlab serve`` runs: what it serves, where it listens, and its limits."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(..., description="A bundle folder, an artifact name, a model folder or a .gguf file.")
    model_name: str | None = Field(None, description="Name clients use in 'model'; default: the bundle's or "
                                   "artifact's name.")
    host: str = Field("127.0.0.1", description="Address to bind; anything beyond loopback needs an API key.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    api_key_env: str | None = Field(None, description="Environment variable holding the bearer API key "
                                    "(required when host is not loopback).")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 beyond).")
    max_tokens: int = Field(1024, ge=1, description="Most tokens one request may generate (400 beyond).")
    max_queue: int = Field(16, ge=0, description="Requests that may wait while every slot generates; more get 429.")
    parallel: int | None = Field(None, ge=1, le=64, description="Requests generated together, in one batch per "
                                 "step (continuous batching; GGUF models). Default: twice the "
                                 "cores, at most 8; 1 generates one request at a time.")
    log_path: str | None = Field(None, description="JSONL file of requests (one line each); default: "
                                 "$LLMLAB_HOME/.serve/<model name>.requests.jsonl.")
    log_prompts: bool = Field(False, description="Also log prompt and completion text (off: sizes only).")
    log_fsync: bool = Field(True, description="fsync each log line before answering, so a kill loses no "
                            "acknowledged line.")
    flash_attn: bool = Field(True, description="llama.cpp's flash attention (GGUF models), on as everywhere in "
                             "llmlab's runtime and in llama.cpp: ~25% more tokens/s at 4 requests on 2 cores "
                             "(SmolLM2); false: the plain attention path, whose greedy answers can differ at near "
                             "ties.")
    n_ctx: int | None = Field(None, ge=16, description="Context length to load the model with (default: the "
                            "model's, capped at 4096).")
    verify: bool = Field(True, description="Check every sha256 of a bundle before loading it.")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header names answered besides "
                                     "loopback and the bound address (name, name:port, '*' for any); others get "
                                     "403 (DNS rebinding protection). Bound to 0.0.0.0 with an API key and none "
                                     "listed: any.")
    allowed_origins: list[str] = Field(default_factory=list, description="Browser origins (e.g. "
                                       "http://localhost:3000, '*' for any) allowed to call the server cross-origin "
                                       "(CORS); other Origin headers get 403.")

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """A flag's 'a,b' is the list [a, b]."""
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def api_key(config: ServeConfig) -> str | None:
    """The API key to require, or None; refuses a non-loopback host without one."""
    key = None
    if config.api_key_env:
        key = os.environ.get(config.api_key_env)
        if not key:
            raise ConfigError(f"The environment variable {config.api_key_env} (--api-key-env) is empty or unset.",
                              f"Set it to a secret, e.g. export {config.api_key_env}=$(openssl rand -hex 24).")
    if key is None and not is_loopback(config.host):
        raise ConfigError(f"Refusing to listen on {config.host} without an API key: anyone who can reach it "
                          "could use the model.",
                          "Pass --api-key-env NAME with the key in that variable, or bind 127.0.0.1.")
    return key
