"""A torch-free embedder for bundles: the index's sentence-transformers model exported to ONNX.

At export time (torch present) ``export_onnx`` writes ``model.onnx`` (the transformer + mean pooling
+ L2 normalisation), ``tokenizer.json`` and ``embedder.json`` into a folder; ``llmlab.export.agent``
then checks it against the index's stored vectors (cosine >= ``MIN_COSINE`` for every chunk, else
``EmbedderParityError`` and no bundle). In the bundle, ``OnnxEmbedder`` runs it with onnxruntime +
tokenizers only.

```python
from llmlab.rag.onnx_embedder import export_onnx, load_onnx_embedder
info = export_onnx(load_embedder(None), out_dir)      # torch needed here
emb = load_onnx_embedder(out_dir)                     # no torch
emb.encode(["Where does Bodo live?"])          # float32, L2-normalised rows
```

Identity: ``OnnxEmbedder.sha256`` is the sha256 of the sentence-transformers folder it was exported
from (what an index records), so an index built with that model accepts it and an index built with
any other embedder is still refused. ``embedder.json`` also records the ONNX file's own sha256,
checked when the embedder is loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from llmlab import settings
from llmlab.errors import ConfigError, MissingExtraError, StoreError
from llmlab.store import sha256_file

if TYPE_CHECKING:
    import numpy as np

    from llmlab.rag.embedder import Embedder

MIN_COSINE = 0.999
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "embedder.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EmbedderParityError(ConfigError):
    """The ONNX embeddings do not match the sentence-transformers model they were exported from."""


def _torch_export(module: Any, path: Path) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (needs no onnxscript)."""
    import torch
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    ids = torch.ones(2, 8, dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {n: {0: "batch", 1: "tokens"} for n in INPUTS} | {"embedding": {0: "batch"}}
    # The exporter always re-reads its output with the `onnx` package only to insert onnxscript custom
    # functions; this graph has none, so without that package the bytes are written as they are.
    patch = (mock.patch.object(onnx_proto_utils, "_add_onnxscript_fn", lambda proto, opsets: proto)
             if importlib.util.find_spec("onnx") is None else contextlib.nullcontext())
    with patch, torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=list(INPUTS), output_names=["embedding"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def export_onnx(embedder: Embedder, out: Path) -> dict[str, Any]:
    """Write the ONNX embedder of ``embedder`` into ``out``; returns what ``embedder.json`` records."""
    import warnings

    try:
        import torch
        from transformers import AutoModel
    except ImportError:
        raise MissingExtraError("Exporting the embedder to ONNX", "agents", "torch") from None

    st = embedder.model  # the sentence-transformers model, loaded from the index's embedder folder
    modules = list(st)
    pooling = modules[1] if len(modules) > 1 else None
    mean = getattr(pooling, "pooling_mode", None) == "mean" or getattr(pooling, "pooling_mode_mean_tokens", False)
    if not mean or not (embedder.path / TOKENIZER_FILE).is_file():
        raise ConfigError(f"The embedder {embedder.describe()} is not a mean-pooled model with a tokenizer.json, "
                          "which the ONNX export supports.", "Build the index with all-MiniLM-L6-v2 (the default).")

    class Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            h = self.model(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    out.mkdir(parents=True, exist_ok=True)
    transformer = AutoModel.from_pretrained(str(embedder.path), local_files_only=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in the attention code
        _torch_export(Pooled(transformer), out / ONNX_FILE)
    (out / TOKENIZER_FILE).write_bytes((embedder.path / TOKENIZER_FILE).read_bytes())
    info = {"name": embedder.name, "sha256": embedder.sha256, "onnx_sha256": sha256_file(out / ONNX_FILE),
            "max_seq_length": int(st.max_seq_length), "dim": embedder.dim, "min_cosine": MIN_COSINE,
            "exported_from": "sentence-transformers"}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


@dataclass
class OnnxEmbedder:
    """An exported embedder run with onnxruntime + tokenizers (``OnnxEmbedder.open(folder)``)."""

    name: str
    path: Path
    sha256: str  # the sentence-transformers folder's sha256: the identity an index records
    dim: int
    max_seq_length: int
    _session: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> OnnxEmbedder:
        folder = Path(folder)
        try:
            info = json.loads((folder / INFO_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"The embedder folder {folder} has no readable {INFO_FILE} ({e}).",
                             "Export the bundle again.") from None
        if not (folder / ONNX_FILE).is_file() or sha256_file(folder / ONNX_FILE) != info.get("onnx_sha256"):
            raise StoreError(f"{folder / ONNX_FILE} is missing or differs from the one {INFO_FILE} records.",
                             "Export the bundle again, or copy it intact.")
        return cls(info["name"], folder, info["sha256"], int(info["dim"]), int(info["max_seq_length"]))

    def _load(self) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingExtraError("The bundle's embedder", "serve", "onnxruntime") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.threads()
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path / ONNX_FILE), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        tok.enable_truncation(self.max_seq_length)
        tok.enable_padding(pad_id=tok.padding["pad_id"] if tok.padding else 0,
                           pad_token=tok.padding["pad_token"] if tok.padding else "[PAD]")
        self._tokenizer = tok

    def encode(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text (as sentence-transformers gives them)."""
        import numpy as np

        if self._session is None:
            self._load()
        rows = []
        for start in range(0, len(texts), batch_size):
            enc = self._tokenizer.encode_batch(list(texts[start:start + batch_size]))
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
            rows.append(self._session.run(None, feed)[0])
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "path": str(self.path), "packaged": False,
                "runtime": "onnxruntime"}

    def describe(self) -> str:
        return f"'{self.name}' (sha256 {self.sha256[:12]}, ONNX)"


def load_onnx_embedder(folder: str | Path) -> OnnxEmbedder:
    return OnnxEmbedder.open(folder)
