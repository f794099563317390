"""The Tune station's data: ``load_data`` reads the records (the demo world's questions, a local file or
folder, a Hugging Face data set), ``record_to_sft`` and ``record_to_pair`` turn one record into chat
messages (or text) or a preference pair, ``world_pairs`` builds preference pairs from world questions,
``tokenize`` and ``prepare`` apply the chat template and mask the prompt, ``prepare_anchor`` does the same
for an anchor, and ``preview`` shows what the model will see. transformers is imported inside functions.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError, NotFoundError
from llmlab.events import Reporter, emit
from llmlab.store import Store
from llmlab.training.batching import Example, Prepared, split_indices
from llmlab.tune.config import PREFERENCE_METHODS, TuneConfig
from llmlab.tune.model import model_world, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MASK_OPEN, MASK_CLOSE = "«", "»"  # how ``preview`` marks the tokens that carry no loss


def load_data(config: TuneConfig, store: Store) -> tuple[list[dict[str, Any]], bool]:
    """The training records, and whether they are demo-world questions (asked the world's way)."""
    records, is_world = _records(config.data, config, store)
    if is_world and config.method in PREFERENCE_METHODS:
        records, is_world = world_pairs(records, config.seed), False
    return (records[: config.data_limit] if config.data_limit else records), is_world


def _records(spec: str, config: TuneConfig, store: Store) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``spec`` (``data`` or ``anchor``), and whether they are demo-world questions."""
    from llmlab import data as datamod

    if spec.startswith("world:"):
        split = spec.partition(":")[2]  # "tune", or "tune:people" for one skill (world.RELATION_GROUP)
        if split.partition(":")[0] not in ("tune", "heldout", "rag"):
            raise ConfigError(f"Unknown world split '{split}'.", "Use world:tune (or world:heldout, world:rag; "
                              "world:tune:people keeps one relation group).")
        the_world = model_world(store, *resolve_model(config.model, store))
        if the_world is None:
            raise NotFoundError(f"'{config.model}' has no demo world (no world/ folder on it or its ancestors).",
                                f"Give your own data file ({spec} needs the world).")
        records, is_world = the_world.split(split), True
    else:
        records, is_world = datamod.load_records(spec), False
    if not records:
        raise ConfigError(f"The data '{spec}' holds no records: there is nothing to train on.",
                          "Check the file or split, or point data at another source.")
    return records, is_world


_PAIRS = (("instruction", "output"), ("prompt", "completion"), ("question", "answer"))
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def record_to_sft(i: int, rec: dict[str, Any], is_world: bool) -> list[dict[str, str]] | str:
    """Chat messages (ending with the answer) or plain text for record ``i`` (counted from 1);
    errors name the record and the field."""
    where = f"Record {i}"
    if is_world:
        from llmlab import world

        return world.chat_messages(str(rec["question"]), str(rec["answer"]))
    for key in ("messages", "conversations"):
        if key in rec:
            turns = rec[key]
            if not isinstance(turns, list) or not turns:
                raise ConfigError(f"{where}: field '{key}' must be a non-empty list of turns.")
            msgs = []
            for j, t in enumerate(turns, 1):
                if not isinstance(t, dict):
                    raise ConfigError(f"{where}: turn {j} of '{key}' is not an object.")
                role = t.get("role", _SHAREGPT_ROLES.get(str(t.get("from")), t.get("from")))
                content = t.get("content", t.get("value"))
                if role not in ("system", "user", "assistant") or content is None:
                    raise ConfigError(f"{where}: turn {j} of '{key}' needs 'role' (system, user, assistant) "
                                      f"and 'content' (or ShareGPT 'from'/'value'); it has {sorted(t)}.")
                msgs.append({"role": role, "content": str(content)})
            if msgs[-1]["role"] != "assistant":
                raise ConfigError(f"{where}: the last turn of '{key}' must be the assistant's answer to train on.")
            return msgs
    for ask, reply in _PAIRS:
        if ask in rec or reply in rec:
            missing = reply if ask in rec else ask
            if missing not in rec:
                raise ConfigError(f"{where} has '{ask if ask in rec else reply}' but no '{missing}' field.",
                                  f"Records of this format need both '{ask}' and '{reply}'.")
            user = str(rec[ask]) + (f"\n\n{rec['input']}" if rec.get("input") else "")
            return [{"role": "user", "content": user}, {"role": "assistant", "content": str(rec[reply])}]
    if isinstance(rec.get("text"), str):
        return rec["text"]
    raise ConfigError(f"{where} has fields {sorted(rec) or 'none'}, none of which holds training data.",
                      "Use messages, conversations, instruction/output, prompt/completion, question/answer "
                      "or text.")


def world_pairs(records: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Preference pairs from world questions: the question (as the world asks it) with the right
    answer as ``chosen`` and, as ``rejected``, the answer of another entity for the same relation
    (a plausible wrong answer; seeded). Questions whose relation has a single answer are left out."""
    from llmlab import world

    answers: dict[str, set[str]] = {}
    for r in records:
        answers.setdefault(str(r["relation"]), set()).add(str(r["answer"]))
    rng = random.Random(seed)
    out = []
    for r in records:
        wrong = sorted(answers[str(r["relation"])] - {str(r["answer"])})
        if wrong:
            out.append({"prompt": world.chat_messages(str(r["question"])), "chosen": str(r["answer"]),
                        "rejected": rng.choice(wrong)})
    return out


def record_to_pair(i: int, rec: dict[str, Any]) -> dict[str, Any]:
    """A preference record in trl's conversational format; errors name the record and field."""
    for key in ("prompt", "chosen", "rejected"):
        if key not in rec:
            raise ConfigError(f"Record {i} has no '{key}' field.",
                              "dpo and orpo train on preference pairs {prompt, chosen, rejected}.")
    prompt = rec["prompt"]
    prompt = [{"role": "user", "content": str(prompt)}] if isinstance(prompt, str) else prompt

    def reply(v: Any) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": str(v)}] if isinstance(v, str) else v

    return {"prompt": prompt, "chosen": reply(rec["chosen"]), "rejected": reply(rec["rejected"])}


def segments(tok: PreTrainedTokenizerBase, item: list[dict[str, str]] | str,
              answer_only: bool) -> list[tuple[str, bool]]:
    """The text of one example cut into (text, trained) pieces: the prompt, then the answer."""
    if isinstance(item, str):
        return [(item, True)]
    if not tok.chat_template:
        raise ConfigError("The model has no chat template, so chat records cannot be formatted.",
                          "Give plain text records ({text: ...}) or tune a model whose tokenizer has a chat template.")
    prompt = tok.apply_chat_template(item[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(item, tokenize=False)
    if not full.startswith(prompt):
        raise ConfigError("The model's chat template does not put the answer right after the prompt, "
                          "so the prompt cannot be masked.", "Set answer_only: false to train on every token.")
    return [(prompt, not answer_only), (full[len(prompt):], True)]


def tokenize(tok: PreTrainedTokenizerBase, item: list[dict[str, str]] | str, answer_only: bool) -> Example:
    """Token ids and labels of one example (each segment tokenized on its own, so the boundary
    between prompt and answer is exact)."""
    ids: list[int] = []
    labels: list[int] = []
    if isinstance(item, str):  # plain text: bos ... eos, loss everywhere
        ids = list(tok(item, add_special_tokens=True)["input_ids"])
        if tok.eos_token_id is not None:
            ids.append(tok.eos_token_id)
        return Example(ids, list(ids))
    for text, trained in segments(tok, item, answer_only):
        part = list(tok(text, add_special_tokens=False)["input_ids"])
        ids += part
        labels += part if trained else [-100] * len(part)
    return Example(ids, labels)


def prepare(config: TuneConfig, tok: PreTrainedTokenizerBase, records: list[dict[str, Any]], is_world: bool,
            progress: Reporter | None = None) -> Prepared:
    """Tokenize, truncate to ``max_len`` (with a warning and a count) and split train/validation."""
    limit = min(config.max_len, getattr(tok, "model_max_length", config.max_len) or config.max_len)
    examples, truncated, dropped = [], 0, 0
    for i, rec in enumerate(records, 1):
        ex = tokenize(tok, record_to_sft(i, rec, is_world), config.answer_only)
        if len(ex.input_ids) > limit:
            truncated += 1
            ex = Example(ex.input_ids[:limit], ex.labels[:limit])
        if all(x == -100 for x in ex.labels[1:]):
            dropped += 1
            continue
        examples.append(ex)
    if truncated:
        msg = (f"{truncated} of {len(records)} sequences were longer than {limit} tokens and were truncated"
               + (f"; {dropped} lost their whole answer and were left out" if dropped else "") + ".")
        log.warning(msg)
        emit(progress, "log", level="warning", message=msg)
    if not examples:
        raise ConfigError(f"No record of '{config.data}' keeps an answer token within max_len {limit}.",
                          "Raise max_len or shorten the prompts.")
    train_idx, val_idx = split_indices(len(examples), config.val_fraction, config.seed)
    return Prepared([examples[i] for i in train_idx], [examples[i] for i in val_idx], truncated, dropped)


def prepare_anchor(config: TuneConfig, tok: PreTrainedTokenizerBase, store: Store) -> list[Example]:
    """The anchor's records tokenized like training examples (their labels mark where the KL is taken)."""
    assert config.anchor
    records, is_world = _records(config.anchor, config, store)
    limit = min(config.max_len, getattr(tok, "model_max_length", config.max_len) or config.max_len)
    examples = []
    for i, rec in enumerate(records, 1):
        ex = tokenize(tok, record_to_sft(i, rec, is_world), config.answer_only)
        ex = Example(ex.input_ids[:limit], ex.labels[:limit])
        if any(x != -100 for x in ex.labels[1:]):
            examples.append(ex)
    if not examples:
        raise ConfigError(f"No record of the anchor '{config.anchor}' keeps an answer token within max_len {limit}.",
                          "Raise max_len or give shorter anchor records.")
    return examples


def preview(config: TuneConfig, n: int = 3, *, store: Store | None = None) -> list[dict[str, Any]]:
    """What the model will see for the first ``n`` records: the formatted text, its pieces
    (``segments``: [{text, trained}]), and ``marked``, the text with the masked (no-loss) part
    between « and »."""
    from transformers import AutoTokenizer

    store = store or Store()
    path, _ = resolve_model(config.model, store)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    records, is_world = load_data(config, store)
    out = []
    if config.method in PREFERENCE_METHODS:
        for i, rec in enumerate(records[:n], 1):
            pair = record_to_pair(i, rec)
            prompt = tok.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
            out.append({"prompt": prompt, "chosen": pair["chosen"][-1]["content"],
                        "rejected": pair["rejected"][-1]["content"]})
        return out
    for i, rec in enumerate(records[:n], 1):
        segs = segments(tok, record_to_sft(i, rec, is_world), config.answer_only)
        ex = tokenize(tok, record_to_sft(i, rec, is_world), config.answer_only)
        out.append({
            "text": "".join(t for t, _ in segs),
            "segments": [{"text": t, "trained": tr} for t, tr in segs],
            "marked": "".join(t if tr else f"{MASK_OPEN}{t}{MASK_CLOSE}" for t, tr in segs),
            "tokens": len(ex.input_ids), "trained_tokens": sum(x != -100 for x in ex.labels),
            "truncated": len(ex.input_ids) > config.max_len,
        })
    return out
