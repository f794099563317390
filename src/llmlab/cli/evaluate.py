"""``llmlab eval WHAT``: the leaderboard, the regression gate, retrieval and answer evaluations, eval sets
from server logs. Reports go to stdout as JSON or a table; progress goes to stderr."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llmlab.cli.flags import config_from_flags, store_from
from llmlab.cli.output import CliProgress
from llmlab.errors import ConfigError


def _print_eval(args: argparse.Namespace, kind: str, evaluate: Any) -> int:
    """An `llmlab eval WHAT` command: flags validated as the ``kind`` step's config, the report printed
    as JSON on stdout (progress on stderr, so the output pipes into jq)."""
    from rich.console import Console

    from llmlab.recipes import make_step

    config = make_step(kind, config_from_flags(args), where=f"llmlab eval {kind.removeprefix('eval-')}").config
    with CliProgress(Console(stderr=True)) as progress:
        report = evaluate(config, store=store_from(args), progress=progress)
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

    cfg = config_from_flags(args, only_cached=True if args.eval_what == "leaderboard" else None)
    config = make_step("evaluate", cfg, where=f"llmlab eval {args.eval_what}").config
    with CliProgress(Console(stderr=True)) as progress:
        board = evaluate(config, store=store_from(args), progress=progress)  # type: ignore[arg-type]
    print(board.to_csv() if args.format == "csv" else board.to_markdown(), end="")
    return 0


def cmd_eval_gate(args: argparse.Namespace) -> int:
    """`llmlab eval gate`: the checks as JSON; exit status 1 when the candidate is worse beyond the margin."""
    from rich.console import Console

    from llmlab.evaluate.gate import gate, gate_config

    config = gate_config(config_from_flags(args))
    with CliProgress(Console(stderr=True)) as progress:
        result = gate(config, store=store_from(args), progress=progress)
    print(json.dumps(result, indent=2, default=str))
    return 0 if result["passed"] else 1


def cmd_eval_from_logs(args: argparse.Namespace) -> int:
    """`llmlab eval from-logs`: logged requests as an eval set; the counts as JSON."""
    from llmlab.serve.evalset import FromLogsConfig, from_logs

    from pydantic import ValidationError

    try:
        config = FromLogsConfig.model_validate(config_from_flags(args))
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"llmlab eval from-logs --{'-'.join(str(x) for x in err['loc'])}: {err['msg']}.",
                          "See llmlab eval from-logs --help.") from None
    print(json.dumps(from_logs(config), indent=2))
    return 0
