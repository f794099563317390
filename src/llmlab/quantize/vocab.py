"""How llama.cpp's converter is told about a tokenizer it does not recognise (used by ``llmlab.quantize.gguf``).

llama.cpp's ``convert_hf_to_gguf.py`` identifies a BPE tokenizer's pre-tokenizer by hashing the tokens
of a probe text, and some model classes read only a SentencePiece ``tokenizer.model`` (Gemma-2, and
Phi-3 unless ``tokenizer_class`` is ``GPT2Tokenizer``). A model with another tokenizer (a tiny test
model with SmolLM2's, a fine-tune with a retrained one) would be refused, although llama.cpp can run
it. ``converter_env`` works out what to tell the converter from the tokenizer transformers actually
loads for the folder (which is not always what ``tokenizer.json`` says: transformers 5 gives every
``qwen2`` model its ``Qwen2Tokenizer`` split rules), and ``WRAPPER`` runs the converter with:

- ``LLMLAB_PRE_TOKENIZER``: the llama.cpp pre-tokenizer to use when the hash lookup fails (the
  pre-tokenizer's split regex matched one llama.cpp implements, e.g. ``gpt-2``, ``qwen2``);
- ``LLMLAB_BPE_VOCAB``: when a model class wants ``tokenizer.model`` and the folder has none, write
  the ``tokenizer.json`` BPE vocabulary (llama.cpp's ``gpt2`` tokenizer model) instead.

Either way ``gguf.verify_tokenizer`` then checks that llama.cpp tokenizes sample texts exactly as
transformers does, so a wrong guess fails the conversion instead of writing a file that drifts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The converter, run as ``python -c WRAPPER <script> <args>`` (see module doc).
WRAPPER = """
import os, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
fallback = os.environ.get("LLMLAB_PRE_TOKENIZER")
if fallback:
    from conversion.base import TextModel
    original = TextModel.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            print("llmlab: unknown BPE pre-tokenizer hash; using " + repr(fallback), file=sys.stderr)
            return fallback
    TextModel.get_vocab_base_pre = get_vocab_base_pre
if os.environ.get("LLMLAB_BPE_VOCAB"):
    from conversion.base import TextModel
    prepare = TextModel.prepare_metadata
    def prepare_metadata(self, *args, **kwargs):
        own = self.set_vocab
        def set_vocab():
            try:
                return own()
            except (FileNotFoundError, ValueError) as e:
                if "tokenizer.model" not in str(e):
                    raise
                print("llmlab: no tokenizer.model; writing the tokenizer.json BPE vocabulary", file=sys.stderr)
                return self._set_vocab_gpt2()
        self.set_vocab = set_vocab
        return prepare(self, *args, **kwargs)
    TextModel.prepare_metadata = prepare_metadata
runpy.run_path(script, run_name="__main__")
"""

# A pre-tokenizer's split regex -> the llama.cpp pre-tokenizer that implements it.
SPLIT_REGEXES: dict[str, str] = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
}


def _plain_byte_level(pre: dict[str, Any]) -> bool:
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)


def pre_tokenizer_name(spec: dict[str, Any]) -> str | None:
    """The llama.cpp pre-tokenizer for a tokenizer.json-style ``spec`` of a BPE tokenizer: 'gpt-2' for
    plain ByteLevel with the GPT-2 regex, the name in ``SPLIT_REGEXES`` for a regex Split followed by
    ByteLevel without its own regex; None for anything else."""
    if (spec.get("model") or {}).get("type") != "BPE":
        return None
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(parts) == 1 and _plain_byte_level(parts[0]):
        return "gpt-2"
    if len(parts) == 2 and parts[0].get("type") == "Split" and parts[1].get("type") == "ByteLevel" \
            and not parts[1].get("use_regex", True) and parts[0].get("behavior") == "Isolated":
        return SPLIT_REGEXES.get((parts[0].get("pattern") or {}).get("Regex", ""))
    return None


def byte_level_bpe(hf_dir: Path) -> bool:
    """True when the folder's tokenizer.json is a BPE whose pre-tokenizer is plain ByteLevel with the GPT-2 regex."""
    path = hf_dir / "tokenizer.json"
    return path.is_file() and pre_tokenizer_name(json.loads(path.read_text())) == "gpt-2"


def loaded_spec(hf_dir: Path) -> dict[str, Any] | None:
    """The tokenizer.json-style spec of the tokenizer transformers loads for ``hf_dir`` (None when it is
    not a fast tokenizer or does not load)."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True, trust_remote_code=False)
        return json.loads(tok.backend_tokenizer.to_str())
    except Exception:  # noqa: BLE001 - the converter reports a tokenizer that does not load, with its reason
        return None


def converter_env(hf_dir: Path) -> dict[str, str]:
    """Environment for ``WRAPPER`` converting ``hf_dir`` (see module doc)."""
    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    spec = loaded_spec(hf_dir) or json.loads(path.read_text())
    env: dict[str, str] = {}
    if (name := pre_tokenizer_name(spec)) is not None:
        env["LLMLAB_PRE_TOKENIZER"] = name
    if (spec.get("model") or {}).get("type") == "BPE" and not (hf_dir / "tokenizer.model").is_file():
        env["LLMLAB_BPE_VOCAB"] = "1"
    return env
