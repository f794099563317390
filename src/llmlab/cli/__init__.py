"""The ``llmlab`` command: thin sub-commands over the library.

Each sub-command parses its arguments, calls one API function and prints the result. Every
recipe step kind is also a command (``build-demo``, ``score``, ``tune``, ``quantize``...) that runs
as a one-step recipe, so it is recorded as a job and tracked like ``llmlab run``; its flags are
generated from the station's pydantic config, the same model that validates recipe YAML and app
forms.

Exit codes: 0 success; 1 a user-facing error; 2 invalid configuration; 3 not found; 4 store
problem; 5 missing optional dependency; 6 not enough memory/disk; 130 interrupted; 141 stdout's
reader closed the pipe (`| head`; nothing is printed); 70 an internal error (a bug: rerun with
--debug and report it).

Modules: ``parser`` (the parser, built for the invoked command only), ``run`` (``run``,
``export-script`` and the station commands), ``chat``, ``models``, ``jobs``, ``evaluate``
(``eval WHAT``), ``servers`` (``serve``, ``servers``, ``bundle``), ``tools`` (``mlflow``, ``app``,
``setup``); ``flags`` (flags from pydantic configs, ``--home``) and ``output`` (console, progress bars)
are shared by the commands. Every module imports its heavy dependencies inside the command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llmlab.cli.parser import build_parser, command_of
from llmlab.errors import LlmlabError

__all__ = ["INTERNAL_ERROR", "build_parser", "main"]

INTERNAL_ERROR = 70
CLOSED_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader went away


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _main(sys.argv[1:] if argv is None else argv)
        finally:
            sys.stdout.flush()  # a reader that went away (`| head`) shows here, not at interpreter exit
    except BrokenPipeError:
        return _closed_pipe()


def _main(argv: list[str]) -> int:
    args = build_parser(command_of(argv)).parse_args(argv)
    if args.home:
        os.environ["LLMLAB_HOME"] = str(Path(args.home).resolve())
    try:
        return int(args.fn(args) or 0)
    except BrokenPipeError:
        raise
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


def _closed_pipe() -> int:
    """stdout's reader closed the pipe: end quietly, as a Unix tool killed by SIGPIPE would (exit 141).
    stdout is pointed at /dev/null so the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured in tests)
        pass
    return CLOSED_PIPE
