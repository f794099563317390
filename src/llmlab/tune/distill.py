"""Distillation: train a smaller student from a teacher's logits and store it as ``distilled``.

``distill(DistillConfig(name="demo-student", teacher="demo"))`` starts a fresh student of the
``micro`` demo shape (one layer; ``llmlab.build``'s presets) on the teacher's own tokenizer, or
continues from a given ``student`` model (which must share the teacher's tokenizer), and trains it
on the teacher's world texts and stories (or a data file) to match the teacher's temperature-softened
next-token distribution::

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy(labels)

The training loop is the Tune station's (``llmlab.training.loop.train_loop``: length-grouped batches,
warm-up and decay, validation loss, checkpoints and resume, progress events, torchrun), with this
loss plugged in. The artifact has parents ``teacher`` (and ``student`` when one was given); its
metrics put the student beside the teacher: parameters and size, generation speed, perplexity,
KL divergence and top-1 agreement against the teacher (``llmlab.scoring.compare``) and held-out
world-question accuracy. torch and transformers are imported inside functions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from llmlab import settings
from llmlab.errors import ConfigError, ResourceError, StoreError
from llmlab.events import Reporter, emit
from llmlab.formats import safetensors
from llmlab.noise import no_progress_bars
from llmlab.scoring import EvalOptions
from llmlab.store import Artifact, Parent, StepRecord, Store
from llmlab.training.batching import Prepared
from llmlab.training.checkpoints import Checkpoints
from llmlab.training.distributed import distributed, wait_for_main
from llmlab.training.loop import LoopOptions, train_loop
from llmlab.training.losses import LossFn
from llmlab.tune.model import resolve_model
from llmlab.tune.records import prepare

log = logging.getLogger(__name__)


class DistillConfig(LoopOptions, EvalOptions):
    """Options of the Distill station (``llmlab distill`` and a recipe's ``distill`` step)."""

    name: str = Field(..., description="Name of the distilled student artifact to write.")
    teacher: str = Field(..., description="Teacher: a model in the store (base, full, merged, distilled or an "
                         "adapter, used merged) or a local Hugging Face folder.")
    student: str | None = Field(None, description="Model to start the student from (it must use the teacher's "
                                "tokenizer); None builds a fresh demo model of student_size.")
    student_size: Literal["micro", "small", "large"] = Field(
        "micro", description="Shape of a fresh student (llmlab.build presets): micro has 1 layer, small 4.")
    data: str = Field("world", description="'world' (the teacher's world texts and stories) or a local data "
                      "file / Hugging Face data set (text, messages, question/answer... records, as for tune).")
    data_limit: int | None = Field(None, ge=1, description="Most records read from data (None: all).")
    temperature: float = Field(2.0, gt=0, description="Softens both distributions before the KL term "
                               "(higher shows the student more of the teacher's second choices).")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the KL term; 1 - alpha goes to the plain "
                         "next-token loss on the data.")
    learning_rate: float | None = Field(None, description="Peak learning rate; None means 3e-3 for a fresh "
                                        "student, 5e-4 for a given one.")
    epochs: float = Field(6.0, gt=0, description="Passes over the training data (ignored when steps is set).")
    max_len: int = Field(256, ge=8, description="Longest sequence in tokens (at most the student's context).")
    answer_only: bool = Field(False, description="For chat records: distil on the answer tokens only.")
    evaluate: bool = Field(True, description="Afterwards, score student and teacher side by side on the same "
                           "held-out texts and questions (texts, qa; by default the teacher's demo world's, else "
                           "the validation records).")

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 3e-3 if self.student is None else 5e-4


def kd_loss(teacher: Any, temperature: float, alpha: float) -> LossFn:
    """The distillation loss as a ``train_loop`` hook: soft KL to the teacher plus hard labels."""
    import torch
    import torch.nn.functional as F

    def loss(model: Any, ids: Any, mask: Any, labels: Any, n_items: int) -> Any:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        keep = target != -100
        s, t = logits[keep], t_logits[keep]
        total = torch.zeros((), device=logits.device)
        if alpha > 0:
            kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                          log_target=True, reduction="sum")
            total = total + alpha * temperature ** 2 * kl
        if alpha < 1:
            total = total + (1 - alpha) * F.cross_entropy(s, target[keep], reduction="sum")
        return total / n_items

    return loss


def _model_folder(name: str, store: Store) -> tuple[Path, Artifact | None]:
    """A Hugging Face folder for ``name``; an adapter artifact is merged into its base first."""
    if "/" not in name and not name.startswith(("~", ".")) and store.exists(name) \
            and store.get(name).kind == "adapter":
        from llmlab.runtime.adapters import merged_folder

        art = store.get(name)
        return merged_folder(art, store), art
    return resolve_model(name, store)


def check_tokenizers(teacher_tok: Any, student_tok: Any, teacher: str, student: str) -> None:
    """Refuse a student whose tokenizer differs from the teacher's (the logits would not line up)."""
    if len(teacher_tok) != len(student_tok) or teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(f"The student '{student}' has a vocabulary of {len(student_tok)} tokens and the teacher "
                          f"'{teacher}' {len(teacher_tok)}, or their tokens differ: distillation matches logits "
                          "token by token, so both must use the same tokenizer.",
                          "Leave student out to build a fresh student on the teacher's tokenizer.")


def _records(config: DistillConfig, world: Any) -> list[dict[str, Any]]:
    from llmlab import data as datamod

    if config.data == "world":
        if world is None:
            raise ConfigError(f"The teacher '{config.teacher}' has no demo world to take texts from.",
                              "Give a data file with data: PATH.")
        records = [{"text": t} for t in world.texts + world.stories]  # what the teacher read
    else:
        records = datamod.load_records(config.data)
    records = records[: config.data_limit] if config.data_limit else records
    if not records:
        raise ConfigError(f"The data '{config.data}' holds no records: there is nothing to distil on.",
                          "Check the file, or use data: world.")
    return records


def _student(config: DistillConfig, store: Store, tok: Any, device: str) -> tuple[Any, Artifact | None]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.student is None:
        from llmlab.build import BuildDemoConfig, new_model

        model, _ = new_model(BuildDemoConfig(name=config.name, size=config.student_size, seed=config.seed,
                                             device=device), tok)  # type: ignore[arg-type]
        return model, None
    path, art = _model_folder(config.student, store)
    check_tokenizers(tok, AutoTokenizer.from_pretrained(path, local_files_only=True), config.teacher,
                     config.student)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, local_files_only=True)
    return model.to(device), art


def distill(config: DistillConfig, *, store: Store | None = None, progress: Reporter | None = None,
            overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Train the student on the teacher's logits and write it as a ``distilled`` artifact."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.world import World, find_world

    no_progress_bars()
    store = store or Store()
    if store.exists(config.name) and not overwrite:
        raise StoreError(f"An artifact named '{config.name}' already exists.",
                         "Choose another name, or pass --force / overwrite=True.")
    t_path, t_art = _model_folder(config.teacher, store)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA GPU.", "Use device: auto or cpu.")
    device = "cuda" if torch.cuda.is_available() and config.device != "cpu" else "cpu"
    dist = distributed(device)
    progress = progress if dist.main else None
    if device == "cpu":
        torch.set_num_threads(settings.threads())
    world = find_world(store, t_art) if t_art else (
        World.load(t_path / "world") if (t_path / "world" / "meta.json").is_file() else None)
    tok = AutoTokenizer.from_pretrained(t_path, local_files_only=True)
    records = _records(config, world)
    emit(progress, "log", message=f"distilling '{config.teacher}' into a "
         f"{config.student or config.student_size + ' demo model'} on {len(records)} records ({device})")
    teacher = AutoModelForCausalLM.from_pretrained(t_path, use_safetensors=True, local_files_only=True).to(device)
    teacher.eval().requires_grad_(False)
    student, s_art = _student(config, store, tok, device)
    context = min(student.config.max_position_embeddings, teacher.config.max_position_embeddings)
    run_config = config.model_copy(update={"max_len": min(config.max_len, context)})
    data: Prepared = prepare(run_config, tok, records, False, progress)  # type: ignore[arg-type]
    ckpt = Checkpoints(store, config.name, config.fingerprint())
    try:
        train_log, facts = train_loop(student, tok, data, run_config, device, ckpt, progress,
                                      loss_fn=kd_loss(teacher, config.temperature, config.alpha), dist=dist,
                                      task="distill")
    except torch.OutOfMemoryError:
        raise ResourceError("Distillation ran out of GPU memory.",
                            "Use a smaller batch_size (with grad_accum) or a shorter max_len.") from None
    del teacher
    info: dict[str, Any] = {"teacher": config.teacher, "student_init": config.student or config.student_size,
                            "temperature": config.temperature, "alpha": config.alpha, "device": device,
                            "threads": settings.threads(), "records": len(records),
                            "train_examples": len(data.train), "val_examples": min(len(data.val), config.val_limit),
                            "truncated": data.truncated, "n_params": sum(p.numel() for p in student.parameters()),
                            **facts}
    if not dist.main:
        return wait_for_main(config.name, store)
    with store.write(config.name, "distilled", overwrite=overwrite) as w:
        student.save_pretrained(w.path, safe_serialization=True)
        tok.save_pretrained(w.path)
        with open(w.path / "training_log.jsonl", "w") as f:
            f.writelines(json.dumps({k: r[k] for k in ("step", "loss", "val_loss")}) + "\n" for r in train_log)
        parents = []
        if t_art is not None:
            parents.append(Parent(name=t_art.name, content_hash=t_art.content_hash, role="teacher"))
        else:
            info["teacher_path"] = str(t_path)
        if s_art is not None:
            parents.append(Parent(name=s_art.name, content_hash=s_art.content_hash, role="student"))
        w.parents = parents
        w.info = info
        w.step = step
        w.metrics = {k: facts[k] for k in ("val_loss_before", "val_loss_after") if facts.get(k) is not None}
        if config.evaluate:
            del student
            texts, qa = config.eval_inputs(store=store, artifact=t_art, world=world, progress=progress)
            held = texts or ["\n".join(tok.decode(e.input_ids, skip_special_tokens=True) for e in data.val[:50])]
            w.metrics.update(compare_with_teacher(w.path, t_path, held, qa or [], progress))
    ckpt.clear()
    return wait_for_main(config.name, store)


def compare_with_teacher(student: Path, teacher: Path, texts: list[str], qa: list[dict[str, Any]],
                         progress: Reporter | None = None) -> dict[str, Any]:
    """Student beside teacher, through the scoring core: parameters, generation speed, perplexity on
    ``texts``, KL divergence and top-1 agreement against the teacher, and accuracy on ``qa`` (when given)."""
    from llmlab.runtime import load
    from llmlab.scoring import score

    out: dict[str, Any] = {}
    with load(teacher) as t, load(student) as s:
        for suffix, m, reference in (("", s, t), ("_teacher", t, None)):
            emit(progress, "log", message=f"scoring the {'student' if not suffix else 'teacher'}")
            r = score(m, data=texts, qa=qa or None, reference=reference, repeats=2, progress=progress)
            out["ppl" + suffix] = r["ppl"]
            out["gen_tok_s" + suffix] = round(r["gen_tok_s"], 1)
            if qa:
                out["accuracy" + suffix] = r["accuracy"]
            if reference is not None:
                out["kld_mean"], out["top1"] = r["kld_mean"], r["top1"]
    out["params"] = safetensors.params(student)
    out["params_teacher"] = safetensors.params(teacher)
    out["size_ratio"] = round(out["params"] / out["params_teacher"], 4)
    out["speedup"] = round(out["gen_tok_s"] / max(out["gen_tok_s_teacher"], 1e-9), 2)
    return out
