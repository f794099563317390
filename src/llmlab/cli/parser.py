"""The ``llmlab`` parser. Only the invoked sub-command gets its flags (the others only their help line),
so starting a command imports no other station's config module; flags come from the pydantic configs."""

from __future__ import annotations

import argparse
from typing import Any

from llmlab.cli.chat import cmd_chat
from llmlab.cli.evaluate import (
    cmd_eval_answers,
    cmd_eval_board,
    cmd_eval_from_logs,
    cmd_eval_gate,
    cmd_eval_retrieval,
)
from llmlab.cli.flags import add_config_flags
from llmlab.cli.jobs import cmd_jobs
from llmlab.cli.models import cmd_models
from llmlab.cli.run import cmd_export_script, cmd_run, cmd_step
from llmlab.cli.servers import cmd_bundle, cmd_serve, cmd_servers
from llmlab.cli.tools import cmd_app, cmd_mlflow, cmd_setup


def command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is not an option or --home's value)."""
    words = iter(argv)
    for word in words:
        if word == "--home":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser. With ``command``, only that sub-command gets its flags (the others only their
    help line), so a command does not import every station's config module to start."""
    from llmlab import __version__

    p = argparse.ArgumentParser(prog="llmlab", description="A workbench for open LLMs.")
    p.add_argument("--version", action="version", version=f"llmlab {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--home", help="the store folder (default: $LLMLAB_HOME or ./models)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def run_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--force", action="store_true", help="redo steps even if their output is current")
        sp.add_argument("--events", action="store_true", help="print progress as JSON lines")
        sp.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        sp.add_argument("--job", help=argparse.SUPPRESS)

    sp = sub.add_parser("run", help="run a recipe (YAML pipeline)")
    sp.add_argument("recipe", help="path of a recipe YAML file, e.g. recipes/quickstart.yaml")
    run_flags(sp)
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("export-script", help="write a recipe as a standalone Python script")
    sp.add_argument("recipe")
    sp.add_argument("-o", "--output", help="file to write (default: stdout)")
    sp.set_defaults(fn=cmd_export_script)

    # One command per recipe step kind (build-demo, score, tune, quantize, ...), flags from its config.
    from llmlab.recipes import STEPS

    for kind, spec in STEPS.items():
        if not spec.command:
            continue  # run by another command: `llmlab eval <what>`, the foreground `llmlab serve`
        if command not in (None, kind):
            sub.add_parser(kind, help=spec.summary)
            continue
        config = spec.load_config()
        model_field = config.model_fields.get("model")
        positional = "model" if model_field is not None and model_field.is_required() else None
        sp = sub.add_parser(kind, help=spec.summary, description=spec.summary)
        if positional:
            sp.add_argument(positional, help="artifact name in the store (or a local model folder where supported)")
        add_config_flags(sp, config, skip=(positional,) if positional else ())
        run_flags(sp)
        sp.set_defaults(fn=cmd_step, step_kind=kind, positional=positional)

    # `llmlab eval WHAT`: measurements printed as JSON (answers: llmlab.agents.evaluate).
    eval_help = "evaluate: leaderboard, regression gate, retrieval, answers, eval sets from logs"
    if command not in (None, "eval"):
        sub.add_parser("eval", help=eval_help)
    else:
        _eval_parsers(sub.add_parser("eval", help=eval_help))
    _other_parsers(sub)
    return p


# `llmlab eval WHAT` commands whose flags are one config's fields: (what, help, "module:Config", command).
_EVAL_COMMANDS = (
    ("answers", "exact match and F1 of an agent's answers, with vs without retrieval",
     "llmlab.agents.evaluate:EvalAnswersConfig", cmd_eval_answers),
    ("retrieval", "nDCG@10, recall@k and MRR of search modes on a BEIR-layout set",
     "llmlab.rag.beir:RetrievalEvalConfig", cmd_eval_retrieval),
    ("gate", "exit 1 when a candidate is worse than a baseline beyond a margin (for CI)",
     "llmlab.evaluate.gate:GateConfig", cmd_eval_gate),
    ("from-logs", "sample a server's request log into an eval set (JSONL), PII scrubbed",
     "llmlab.serve.evalset:FromLogsConfig", cmd_eval_from_logs),
)


def _eval_parsers(sp: argparse.ArgumentParser) -> None:
    import importlib

    esub = sp.add_subparsers(dest="eval_what", required=True, metavar="WHAT")
    for what, helptext, config, fn in _EVAL_COMMANDS:
        module, _, name = config.partition(":")
        e = esub.add_parser(what, help=helptext)
        add_config_flags(e, getattr(importlib.import_module(module), name))
        e.set_defaults(fn=fn)
    from llmlab.evaluate.leaderboard import EvaluateConfig

    for what, helptext in (("run", "score variants on a suite (cached quality; speed on request); prints the table"),
                           ("leaderboard", "the leaderboard from cached results only (loads no model)")):
        e = esub.add_parser(what, help=helptext)
        add_config_flags(e, EvaluateConfig, skip=("only_cached",))
        e.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="table format")
        e.set_defaults(fn=cmd_eval_board)


def _other_parsers(sub: Any) -> None:
    from llmlab.runtime import SamplingParams

    sp = sub.add_parser("chat", help="chat with a model in the terminal")
    sp.add_argument("name", help="artifact name, model folder or .gguf file")
    sp.add_argument("--prompt", help="ask one question and exit")
    sp.add_argument("--system", help="system prompt")
    sp.add_argument("--engine", help="force an engine (transformers, llama.cpp)")
    add_config_flags(sp, SamplingParams)
    sp.set_defaults(fn=cmd_chat)

    sp = sub.add_parser("models", help="the model store: ls, show, lineage, verify, rm, add")
    msub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = msub.add_parser("ls", help="list artifacts")
    m.add_argument("--kind", help="only this kind")
    m.add_argument("--json", action="store_true", help="print JSON")
    for action, helptext in (("show", "print manifest and metrics"), ("lineage", "show parents as a tree")):
        m = msub.add_parser(action, help=helptext)
        m.add_argument("name")
    m = msub.add_parser("verify", help="recompute hashes and name tampered files")
    m.add_argument("name", nargs="?", help="one artifact (default: all)")
    m = msub.add_parser("rm", help="remove an artifact")
    m.add_argument("name")
    m.add_argument("--force", action="store_true", help="remove even if other artifacts were made from it")
    m = msub.add_parser("add", help="import a local HF model folder (safetensors) or a .gguf file (--dequantize: "
                          "as a trainable model)")
    m.add_argument("path")
    m.add_argument("--name", help="artifact name (default: the folder or file name)")
    m.add_argument("--kind", help="artifact kind (default: base, or gguf for a .gguf file)")
    m.add_argument("--dequantize", action="store_true",
                   help="for a .gguf file: also dequantize it into a trainable base model named --name (default "
                   "<file>-hf), checking tokenizer parity, the chat template and top-1/KLD against the GGUF")
    m.add_argument("--compare-tokens", type=int, default=1024, metavar="N",
                   help="with --dequantize: tokens of held-out prose to compare on (0: skip)")
    sp.set_defaults(fn=cmd_models)

    sp = sub.add_parser("jobs", help="jobs: ls, show, log, cancel, export (as a recipe, a script and a notebook)")
    sp.add_argument("action", choices=("ls", "show", "log", "cancel", "export"))
    sp.add_argument("id", nargs="*", help="a job id (export: any number, default the latest app session's jobs)")
    sp.add_argument("--session", help="export: the app session whose jobs to export")
    sp.add_argument("--out", help="export: folder for the files (default $LLMLAB_HOME/.sessions/<session>/)")
    sp.add_argument("--status", action="append", choices=("done", "failed", "cancelled", "died"),
                    help="export: job statuses to include (repeatable; default done)")
    sp.add_argument("--no-lineage", action="store_true",
                    help="export: do not prepend the steps that made the artifacts the jobs read")
    sp.set_defaults(fn=cmd_jobs)

    for name, fn, port, helptext in (("mlflow", cmd_mlflow, 5000, "open the MLflow UI on the tracking store"),
                                     ("app", cmd_app, 8501, "open the Streamlit app")):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
        sp.add_argument("--port", type=int, default=port)
        sp.add_argument("--expose", action="store_true",
                        help="allow a --host beyond this machine (the UI has no login: anyone who can reach it can use it)")
        sp.set_defaults(fn=fn)

    from llmlab.serve import ServeConfig

    sp = sub.add_parser("serve", help="serve a bundle or model over an OpenAI-compatible HTTP API")
    sp.add_argument("source", help="bundle folder, artifact name, model folder or .gguf file")
    add_config_flags(sp, ServeConfig, skip=("source",))
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("servers", help="background servers (the quickstart's, the Export page's): ls, stop")
    sp.add_argument("action", nargs="?", choices=("ls", "stop"), default="ls")
    sp.add_argument("name", nargs="?", help="the served bundle's name")
    sp.add_argument("--all", action="store_true", help="stop every server started from this store")
    sp.set_defaults(fn=cmd_servers)

    sp = sub.add_parser("bundle", help="exported bundles: verify")
    sp.add_argument("action", choices=("verify",))
    sp.add_argument("path", help="the bundle folder")
    sp.set_defaults(fn=cmd_bundle)

    sp = sub.add_parser("setup", help="fetch the pinned llama.cpp GGUF converter (needs PyPI once)")
    sp.set_defaults(fn=cmd_setup)
