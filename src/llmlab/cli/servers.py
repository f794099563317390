"""``llmlab serve`` (the OpenAI-compatible server in the foreground), ``llmlab servers`` (the background
ones: ls, stop) and ``llmlab bundle verify`` (an exported bundle's sha256s)."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmlab.cli.flags import config_from_flags, store_from
from llmlab.errors import ConfigError, LlmlabError


def cmd_servers(args: argparse.Namespace) -> int:
    """`llmlab servers [ls | stop NAME | stop --all]`: the background servers started from this store
    (a copy of the store folder has none of the original's)."""
    from llmlab.serve import process

    store = store_from(args)
    if args.action == "ls":
        running = process.running_servers(store)
        for s in running:
            print(f"{s['name']}  {s['url']}  pid {s['pid']}")
        if not running:
            print(f"No server is running for the store at {store.root} (start one: llmlab serve BUNDLE, "
                  "or the Export page).")
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
    if not names:
        print(f"No server is running for the store at {store.root}; nothing stopped.")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`llmlab serve SOURCE`: the OpenAI-compatible server (llmlab.serve) in the foreground."""
    from llmlab.serve import ServeConfig, serve

    fields = {k: v for k, v in config_from_flags(args).items() if k in ServeConfig.model_fields}
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
