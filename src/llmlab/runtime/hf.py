"""The transformers engine: Hugging Face folders with safetensors weights.

Loads with ``use_safetensors=True`` and never ``trust_remote_code``. On CPU the weights run in
float32; when torch sees a CUDA device they go there in bf16 (fp16 where bf16 is unsupported).
Both can be forced with ``device=`` and ``dtype=``. torch and transformers are imported here,
never by ``import llmlab.runtime``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmlab import settings
from llmlab.errors import ConfigError, CorruptFileError, MissingExtraError, StoreError
from llmlab.formats import safetensors
from llmlab.noise import quiet_loading
from llmlab.runtime.base import MB, Message, Model, check_memory

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


class HFModel(Model):
    """A transformers causal LM and its tokenizer."""

    engine = "transformers"

    def __init__(self, path: Path, *, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None):
        super().__init__(path)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise MissingExtraError("Running Hugging Face models", "lab", "torch and transformers") from e
        from llmlab.formats.hf import check_hf_folder

        self._torch = torch
        try:
            config = check_hf_folder(path)  # config, no custom code, complete safetensors headers
        except StoreError as e:
            raise CorruptFileError(e.message, e.hint) from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = "float32" if self.device == "cpu" else (
                "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
        if dtype not in _DTYPE_BYTES:
            raise ConfigError(f"Unknown dtype '{dtype}'.", f"Use one of: {', '.join(_DTYPE_BYTES)}.")
        self.dtype = dtype
        self._n_params = safetensors.params(path)
        self._n_ctx = n_ctx or int(config.get("max_position_embeddings") or 2048)
        # weights in the run dtype, plus ~10% and 300 MB for activations and the torch runtime
        need = int(self._n_params * _DTYPE_BYTES[dtype] * 1.1) + 300 * MB
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info()
            check_memory(need, f"'{path.name}' on the GPU", available=free, where="GPU memory")
        else:
            check_memory(need, f"'{path.name}'")
        if self.device == "cpu":
            torch.set_num_threads(settings.threads())
        with quiet_loading():
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False,
                local_files_only=True,
            ).to(self.device).eval()
        eos: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            eos.update([src] if isinstance(src, int) else (src or []))
        self._eos = eos
        self._cache: Any = None

    # ----- tokens and templates -----
    def tokenize(self, text: str, add_special: bool = False) -> list[int]:
        # verbose=False: no warning for texts longer than the context (scoring windows them)
        return list(self.tokenizer.encode(text, add_special_tokens=add_special, verbose=False))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        if not self.tokenizer.chat_template:
            raise ConfigError(f"The model in '{self.path}' has no chat template.",
                              "Use complete() with a plain prompt, or a model with a chat template.")
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

    def token_text(self, token: int) -> str | None:
        if token < 0 or token >= len(self.tokenizer):
            return None
        return self.tokenizer.convert_ids_to_tokens(token)

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template or None

    def is_eog(self, token: int) -> bool:
        return token in self._eos

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def info(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "path": str(self.path), "n_params": self._n_params, "n_ctx": self.n_ctx,
            "vocab_size": self.vocab_size, "device": self.device, "dtype": self.dtype,
            "size_bytes": sum(f.stat().st_size for f in self.path.glob("*.safetensors")),
        }

    # ----- forward passes -----
    def _forward(self, ids: Sequence[int], cache: Any = None, last_only: bool = False) -> Any:
        torch = self._torch
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        # last_only: only the last position's logits (a prompt's other rows are never read)
        keep = {"logits_to_keep": 1} if last_only else {}
        with torch.inference_mode():
            return self.model(input_ids=x, past_key_values=cache, use_cache=cache is not None, **keep)

    def logprobs(self, ids: Sequence[int]) -> np.ndarray:
        if len(ids) > self.n_ctx:
            raise ConfigError(f"{len(ids)} tokens do not fit the model's context of {self.n_ctx}.")
        with self._lock:
            logits = self._forward(ids).logits[0].float()
            return self._torch.log_softmax(logits, dim=-1).cpu().numpy()

    def _begin(self, ids: Sequence[int]) -> np.ndarray:
        from transformers import DynamicCache

        out = self._forward(ids, DynamicCache(), last_only=True)
        self._cache = out.past_key_values
        return out.logits[0, -1].float().cpu().numpy()

    def _advance(self, token: int) -> np.ndarray:
        out = self._forward([token], self._cache)
        self._cache = out.past_key_values
        return out.logits[0, -1].float().cpu().numpy()

    def close(self) -> None:
        self._cache = None
        self.model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
