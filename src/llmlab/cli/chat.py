"""``llmlab chat NAME``: talk to a model in the terminal (or ask one ``--prompt`` and exit)."""

from __future__ import annotations

import argparse
import sys

from llmlab.cli.flags import config_from_flags, store_from


def cmd_chat(args: argparse.Namespace) -> int:
    from llmlab.runtime import SamplingParams, load

    params = SamplingParams.model_validate(config_from_flags(args))
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    store = store_from(args)
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
