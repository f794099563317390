"""How far an LLM judge can be trusted: its verdicts on a judged set of SQuAD answers (right and
wrong, labelled by exact match) as Cohen's kappa, and that result kept per judge for the app's pages.

```python
from llmlab.evaluate.agreement import judged_set, measure_judge, save_agreement, agreement_for
from llmlab.packaged import smollm2_gguf
result = measure_judge(smollm2_gguf(), n=100)       # a model path, a store artifact's name, a Model or a Judge
result["kappa"], result["n"], result["agreement"]   # kappa against exact match over n answers
save_agreement(store, result)                        # the Arena and Leaderboard pages read it back
agreement_for(store, "smollm2-tuned")                # the latest result of that judge, or None
```

``judged_set`` takes SQuAD questions (``{question, answers, gold_passage_id}``) and gives each an
answer from a fixed mix, so that exact match has both classes and kappa is defined: the gold answer
(right), another question's gold answer (wrong, never a paraphrase), and, when a ``model`` is
given, that model's own answer (mostly wrong for a small model, sometimes right). Each record
carries its exact match and token F1; ``measure_judge`` then runs ``judge.judge_set`` over them. A
kappa below ``judge.TRUST_KAPPA`` (0.4) is reported by ``judge.trust_warning`` in one sentence.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.errors import ConfigError
from llmlab.evaluate.judge import TRUST_KAPPA, Judge, ModelJudge, cohen_kappa, judge_set, trust_warning
from llmlab.events import Reporter

if TYPE_CHECKING:
    from llmlab.runtime import Model
    from llmlab.store import Store

SOURCES = ("gold", "other", "model")  # where a candidate answer comes from
AGREEMENT_FILE = ".judge/agreement.json"  # under the store: the latest result per judge
ANSWER_PROMPT = "{passage}\n\nQuestion: {question}\nAnswer in a few words."


def judged_set(questions: Sequence[Mapping[str, Any]], *, n: int = 100, passages: Mapping[str, str] | None = None,
               model: Model | None = None, max_tokens: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` judged records {question, answer, gold, passage, source, exact_match, f1} from the first
    questions: sources alternate gold / other (and model, when ``model`` answers, with the passage when
    ``passages`` has it), so both exact-match classes are present whenever ``n`` >= 2."""
    from llmlab.rag.metrics import exact_match, f1

    usable = [q for q in questions if q.get("question") and q.get("answers")]
    if len(usable) < 2:
        raise ConfigError("A judged set needs at least two questions with gold answers.",
                          "Give SQuAD-style records: {question, answers: [...]}.")
    if n < 2:
        raise ConfigError(f"A judged set of {n} answers cannot hold a right and a wrong one.", "Use n >= 2.")
    sources = SOURCES if model is not None else SOURCES[:2]
    rng = random.Random(seed)
    records = []
    for i in range(n):
        q = usable[i % len(usable)]
        passage = (passages or {}).get(str(q.get("gold_passage_id")))
        source = sources[i % len(sources)]
        if source == "gold":
            answer = str(q["answers"][0])
        elif source == "other":
            answer = _wrong_answer(q, usable, rng)
        else:
            answer = _model_answer(model, q["question"], passage, max_tokens)  # type: ignore[arg-type]
        gold = [str(a) for a in q["answers"]]
        records.append({"question": q["question"], "answer": answer, "gold": gold, "passage": passage,
                        "source": source, "exact_match": bool(exact_match(answer, gold)), "f1": f1(answer, gold)})
    return records


def _wrong_answer(q: Mapping[str, Any], pool: Sequence[Mapping[str, Any]], rng: random.Random) -> str:
    """Another question's gold answer that shares no exact match with ``q``'s gold answers."""
    from llmlab.rag.metrics import exact_match

    for _ in range(100):
        other = rng.choice(pool)
        answer = str(other["answers"][0])
        if other is not q and not exact_match(answer, q["answers"]):
            return answer
    raise ConfigError("Could not find a wrong answer among the other questions' gold answers.",
                      "Give questions with different answers.")


def _model_answer(model: Model, question: str, passage: str | None, max_tokens: int) -> str:
    from llmlab.runtime import SamplingParams

    prompt = ANSWER_PROMPT.format(passage=passage or "", question=question).strip()
    return model.chat([{"role": "user", "content": prompt}], SamplingParams.greedy(max_tokens)).strip()


def squad_set(n: int = 100, *, model: Model | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """``judged_set`` over the public SQuAD dev questions and their passages (``llmlab.data.load_public``)."""
    from llmlab.data import load_public

    passages = {str(d["_id"]): str(d["text"]) for d in load_public("squad-corpus")}
    return judged_set(load_public("squad-questions"), n=n, passages=passages, model=model, seed=seed)


def measure_judge(judge: Judge | Model | str | Path, records: Sequence[Mapping[str, Any]] | None = None, *,
                  n: int = 100, mode: str = "check", show_gold: bool = True, show_passage: bool = False,
                  constrained: bool = True, store: Store | None = None, progress: Reporter | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """The judge's agreement with exact match on ``records`` (default: ``squad_set(n)``):
    {judge, model, kappa, n, agreement, pass_rate, positives, kappa_f1, trusted, warning, mode, ...,
    verdicts}. ``judge`` is a Judge, a loaded Model or what ``llmlab.runtime.load`` takes (a model
    path, a store artifact's name: loaded, asked with ``constrained`` decoding, then closed)."""
    started = time.perf_counter()
    loaded = None
    if isinstance(judge, (str, Path)):
        from llmlab.runtime import load

        loaded = load(judge, store=store)
        judge_obj: Judge = ModelJudge(loaded, constrained=constrained)
    elif hasattr(judge, "ask"):
        judge_obj = judge  # type: ignore[assignment]
    else:
        judge_obj = ModelJudge(judge, constrained=constrained)  # type: ignore[arg-type]
    try:
        recs = list(records) if records is not None else squad_set(n, seed=seed)
        result = judge_set(judge_obj, recs, mode=mode, show_gold=show_gold, show_passage=show_passage, retries=0,
                           progress=progress)
    finally:
        if loaded is not None:
            loaded.close()
    return summarize(result, recs, judge_obj, seconds=time.perf_counter() - started,
                     show_gold=show_gold, show_passage=show_passage)


def summarize(result: Mapping[str, Any], records: Sequence[Mapping[str, Any]], judge: Judge, *, seconds: float,
              show_gold: bool, show_passage: bool) -> dict[str, Any]:
    """``judge_set``'s result as an agreement record (kappa against exact match and against F1 >= 0.5)."""
    kappa = result["kappa_vs_exact_match"]
    paired = [(v["passed"], r) for v, r in zip(result["verdicts"], records) if v["passed"] is not None]
    model = getattr(judge, "model", None)
    art = getattr(model, "artifact", None)
    return {"judge": judge.name, "model": art.name if art is not None else str(getattr(model, "path", judge.name)),
            "content_hash": getattr(art, "content_hash", None), "kappa": kappa, "n": result["n_scored"],
            "n_asked": result["n"], "agreement": result["agreement_vs_exact_match"], "pass_rate": result["pass_rate"],
            "positives": sum(bool(r.get("exact_match")) for _, r in paired),
            "kappa_f1": cohen_kappa([p for p, _ in paired], [float(r.get("f1") or 0.0) >= 0.5 for _, r in paired])
            if paired else None,
            "trusted": kappa is not None and kappa >= TRUST_KAPPA, "trust_kappa": TRUST_KAPPA,
            "warning": trust_warning(kappa, result["n_scored"]), "mode": result["mode"], "show_gold": show_gold,
            "show_passage": show_passage, "label": "exact_match", "seconds": round(seconds, 2),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "verdicts": result["verdicts"]}


# ----- kept per judge, for the pages -----
def _path(store: Store) -> Path:
    return Path(store.root) / AGREEMENT_FILE


def agreements(store: Store) -> dict[str, dict[str, Any]]:
    """Every kept agreement result by model name (an empty dict when none was measured)."""
    path = _path(store)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"Cannot read the judge agreements in {path}: {e}.", "Delete the file and measure again.")
    return data if isinstance(data, dict) else {}


def save_agreement(store: Store, result: Mapping[str, Any]) -> Path:
    """Keep ``result`` (without its verdicts) as the latest agreement of its model; the file's path."""
    from llmlab.store import write_text

    data = agreements(store)
    data[str(result["model"])] = {k: v for k, v in result.items() if k != "verdicts"}
    path = _path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=1, sort_keys=True))
    return path


def agreement_for(store: Store, model: str) -> dict[str, Any] | None:
    """The latest kept agreement of the judge model named ``model`` (a store artifact or path), or None."""
    return agreements(store).get(model)


def judge_note(store: Store, model: str) -> tuple[str, str]:
    """What a page shows beside a judge's scores: ("warning", sentence) when its kappa is too low or
    undefined, ("info", sentence) when it was never measured, ("ok", sentence) when it can be trusted."""
    found = agreement_for(store, model)
    if found is None:
        return "info", (f"The judge {model} has no measured agreement with exact match yet: its scores are "
                        f"unchecked (measure it with llmlab.evaluate.agreement.measure_judge; trusted from kappa "
                        f"{TRUST_KAPPA}).")
    warning = trust_warning(found.get("kappa"), int(found.get("n") or 0))
    if warning:
        return "warning", f"The judge {model}: {warning}."
    return "ok", f"The judge {model} agrees with exact match at kappa {found['kappa']:.2f} (n={found['n']})."
