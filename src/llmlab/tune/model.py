"""The model the Tune station trains: ``resolve_model`` finds it (an artifact in the store or a local
Hugging Face folder), ``model_world`` finds the demo world it was trained on, and ``load_model`` loads it
for training (peft-wrapped for LoRA, DoRA and QLoRA, through unsloth when that backend runs, plain for full
tuning). torch, transformers, peft and unsloth are imported inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError, NotFoundError
from llmlab.noise import quiet_peft
from llmlab.store import MODEL_KINDS, Artifact, Store
from llmlab.tune.config import Plan, TuneConfig

if TYPE_CHECKING:
    from llmlab.world import World

# The output layer never gets an adapter ("all-linear" means the blocks' linear layers, as in peft).
OUTPUT_LAYERS = ("lm_head", "embed_out", "output")


def linear_module_names(model: Any) -> list[str]:
    """The names (last part) of every linear layer in ``model`` except the output layer, sorted: what
    "all-linear" means for any architecture (Llama's q_proj...down_proj, Phi-3's fused qkv_proj and
    gate_up_proj, ...). unsloth takes explicit names; peft resolves "all-linear" itself the same way."""
    import torch

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear4bit", "Linear8bitLt")}
    return sorted(names - set(OUTPUT_LAYERS))


# A model folder's tokenizer files, as the Hugging Face hub and transformers name them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def save_tokenizer(base: Path, out: Path, tokenizer: Any) -> None:
    """Write the tokenizer of a model tuned from ``base`` into ``out``: the base's own tokenizer files,
    byte for byte, so the result has exactly its base's tokenizer (a re-save through transformers can
    change them: transformers 5 loads every qwen2 model with ``Qwen2Tokenizer``'s split rules and
    normalizer, whatever its tokenizer.json says, and would write those). ``tokenizer.save_pretrained``
    only when the base has no tokenizer file."""
    import shutil

    files = [base / f for f in TOKENIZER_FILES if (base / f).is_file()]
    if not files:
        tokenizer.save_pretrained(out)
    for f in files:
        shutil.copyfile(f, out / f.name)


def resolve_model(model: str, store: Store) -> tuple[Path, Artifact | None]:
    """The folder of the model to tune and its artifact (None for a local folder)."""
    looks_like_path = "/" in model or model.startswith(("~", "."))
    if not looks_like_path and store.exists(model):
        art = store.get(model)
        if art.kind not in MODEL_KINDS:
            raise ConfigError(f"'{model}' is a {art.kind} artifact; the Tune station tunes full models "
                              f"({', '.join(MODEL_KINDS)}).",
                              "Merge an adapter into its base first (the Merge station), then tune the result.")
        return art.path, art
    path = Path(model).expanduser()
    if not path.is_dir():
        raise NotFoundError(f"No artifact named '{model}' in the store at {store.root}, and no folder of that name.",
                            "List the artifacts with `llmlab models ls`, or give a Hugging Face model folder.")
    from llmlab.formats.hf import check_hf_folder

    check_hf_folder(path)
    return path, None


def model_world(store: Store, path: Path, artifact: Artifact | None) -> World | None:
    """The demo world the model was trained on (beside it or an ancestor), if any."""
    from llmlab.world import World, find_world

    if artifact is not None:
        return find_world(store, artifact)
    return World.load(path / "world") if (path / "world" / "meta.json").is_file() else None


def load_model(base: Path, config: TuneConfig, plan: Plan) -> tuple[Any, Any]:
    """The model to train (peft-wrapped unless full tuning) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    targets = config.target_modules
    if plan.backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(str(base), max_seq_length=config.max_len,
                                                       load_in_4bit=plan.method == "qlora", dtype=None)
        model = FastLanguageModel.get_peft_model(
            model, r=config.rank, lora_alpha=config.lora_alpha(), lora_dropout=config.dropout,
            target_modules=linear_module_names(model) if targets == "all-linear" else targets,
            use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
            random_state=config.seed)
        return model, tok
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False, "local_files_only": True}
    if plan.device == "cuda":
        kwargs["dtype"] = torch.bfloat16 if plan.method == "qlora" else torch.float32
    if plan.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    if plan.method != "qlora":
        model = model.to(plan.device)
    if plan.method == "full":
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model, tok
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quiet_peft()  # peft imports GPTQModel when wrapping layers: keep its banner out of our output
    if plan.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # frozen embeddings: let checkpointed blocks see a grad path
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha(), lora_dropout=config.dropout,
                      target_modules=targets, use_dora=plan.method == "dora", task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tok

