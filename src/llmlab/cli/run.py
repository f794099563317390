"""``llmlab run``, ``llmlab export-script`` and the station commands (``llmlab tune`` ...): recipes run
as recorded jobs, with progress bars (or JSON events) and a summary of what they made."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from llmlab.cli.flags import config_from_flags, store_from
from llmlab.cli.output import CliProgress, new_console
from llmlab.errors import LlmlabError


def _summary_table(results, store) -> Any:
    """One row per artifact the run made or scored: what it is and how it scores."""
    from rich.table import Table

    table = Table(title="Summary")
    for col in ("artifact", "kind", "size MB", "ppl", "KLD", "accuracy", "gen tok/s", "steps (s)"):
        table.add_column(col, justify="left" if col in ("artifact", "kind") else "right")
    rows: dict[str, list[str]] = {}
    for r in results:
        for name in r.subjects:
            if store.exists(name):
                skipped = " (skipped)" if r.status == "skipped" else ""
                rows.setdefault(name, []).append(f"{r.kind} {r.seconds:.0f}{skipped}")
    for name, steps in rows.items():
        art = store.get(name)
        m = art.metrics

        def fmt(key: str, spec: str) -> str:
            return format(m[key], spec) if isinstance(m.get(key), (int, float)) else "-"

        fallback = art.manifest.info.get("fallback") or {}  # GGUF tensors llama.cpp stored in another type
        kind = art.kind + (f" ({', '.join(f'{n} {t}' for t, n in fallback.items())} fallback)" if fallback else "")
        table.add_row(name, kind, f"{art.size_bytes / 1e6:.1f}", fmt("ppl", ".2f"), fmt("kld_mean", ".4f"),
                      fmt("accuracy", ".1%"), fmt("gen_tok_s", ".0f"), ", ".join(steps))
    return table


def _served_text(m: dict[str, Any]) -> str:
    """What a serve step did: where the server is and what it answered."""
    state = "running at" if m.get("running") else "answered at (now stopped)"
    text = f"Server {state} {m['url']}/v1  (OpenAI-compatible; stop it: llmlab servers stop --all)\n"
    if m.get("right") is not None:
        text += f"  asked over HTTP: {m['asked']} held-out questions, {m['right']} answered right\n"
    for e in m.get("examples") or [m]:
        check = {True: "  (right)", False: f"  (expected: {e.get('expected')})", None: ""}[e.get("correct")]
        text += f"  Q: {e['question']}\n  A: {str(e['answer']).strip()}{check}\n"
    return text.rstrip("\n")


def _next_text(store) -> str:
    return ("URLs:\n"
            "  app     http://127.0.0.1:8501  start it: llmlab app\n"
            "  MLflow  http://127.0.0.1:5000  start it: llmlab mlflow\n"
            "Next:\n"
            "  marimo edit notebooks/00_tour.py  the tour notebook\n"
            "  llmlab chat demo-lora-gguf        talk to the tuned 4-bit model in the terminal\n"
            "  llmlab eval leaderboard           every variant on one table (also in "
            f"{store.root / 'leaderboard.md'})\n"
            "  llmlab servers ls                 the servers left running")


def cmd_run(args: argparse.Namespace) -> int:
    from llmlab import recipes

    return _run_recipe(recipes.load(args.recipe), args)


def _run_recipe(recipe, args: argparse.Namespace) -> int:
    """Run a recipe as a recorded job, with progress bars or JSON events."""
    from llmlab import recipes
    from llmlab.events import json_lines, tee
    from llmlab.jobs import Cancelled, JobQueue, RunningJob

    store = store_from(args)
    if args.job:  # started by the job queue: events go to stdout, which is the job's events.jsonl
        job = RunningJob(args.job)
    else:  # typed at a terminal: record the job too, but start at once
        info = JobQueue(store).create(recipe, queued=False)
        job = RunningJob(info.dir)
    events_file = open(Path(job.folder) / "events.jsonl", "a") if not args.job else None
    try:
        job.start()
        if args.events or args.job:
            progress = json_lines() if args.job else tee(json_lines(), json_lines(events_file))
            results = recipes.run(recipe, store=store, force=args.force, progress=progress, track=not args.no_track)
        else:
            console = new_console()
            with CliProgress(console) as bars:
                results = recipes.run(recipe, store=store, force=args.force,
                                      progress=tee(bars, json_lines(events_file)), track=not args.no_track)
            console.print(_summary_table(results, store))
            console.print(f"Artifacts are in {store.root}  (list them: llmlab models ls)")
            for r in results:
                if r.kind == "serve" and r.metrics.get("url"):
                    console.print(_served_text(r.metrics))
            if recipe.name == "quickstart":
                console.print(_next_text(store))
    except Cancelled:
        job.finish("cancelled", "cancelled by request")
        return 130
    except KeyboardInterrupt:
        job.finish("cancelled", "interrupted")
        raise
    except LlmlabError as e:
        job.finish("failed", str(e))
        raise
    except Exception as e:
        job.finish("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if events_file:
            events_file.close()
    job.finish("done")
    return 0


def _run_one_step(args: argparse.Namespace, kind: str, config: dict[str, Any]) -> int:
    from llmlab import recipes

    step = recipes.make_step(kind, config, where=f"llmlab {kind}")
    return _run_recipe(recipes.Recipe(name=kind, steps=[step]), args)


def cmd_step(args: argparse.Namespace) -> int:
    """A station command: the step of the same name, configured from flags."""
    fixed = {args.positional: getattr(args, args.positional)} if args.positional else {}
    return _run_one_step(args, args.step_kind, config_from_flags(args, **fixed))


def cmd_export_script(args: argparse.Namespace) -> int:
    from llmlab import recipes

    text = recipes.export_script(recipes.load(args.recipe))
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
