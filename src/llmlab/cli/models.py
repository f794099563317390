"""``llmlab models ACTION``: the store's artifacts listed, shown, traced, verified, removed and added."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmlab.cli.flags import store_from
from llmlab.cli.output import new_console
from llmlab.errors import ConfigError


def cmd_models(args: argparse.Namespace) -> int:
    store = store_from(args)
    console = new_console()
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
        found = {args.name: store.verify(args.name)} if args.name else store.verify_all()
        for n, problems in found.items():
            print(f"{n}: " + ("ok" if not problems else "; ".join(problems)))
        if not found:
            print(f"No artifacts in the store at {store.root}.")
        return 4 if any(found.values()) else 0
    if action == "rm":
        store.rm(args.name, force=args.force)
        print(f"removed {args.name}")
        return 0
    if action == "add":
        if getattr(args, "dequantize", False):
            return _add_dequantized(args, store, console)
        art = store.add(args.path, args.name, kind=args.kind)
        print(f"added {art.name} ({art.kind}, {art.size_bytes / 1e6:.1f} MB) at {art.path}")
        return 0
    raise ConfigError(f"Unknown models action '{action}'.")


def _add_dequantized(args: argparse.Namespace, store, console) -> int:
    """``models add FILE.gguf --dequantize``: the GGUF imported, then dequantized into a base model."""
    from llmlab.cli.output import CliProgress
    from llmlab.dequantize import DequantizeConfig, dequantize, summary

    if args.kind:
        raise ConfigError("--kind does not go with --dequantize: the GGUF is imported as gguf and the result is a "
                          "base model.", "Leave out --kind.")
    if not str(args.path).endswith(".gguf"):
        raise ConfigError(f"--dequantize takes a .gguf file, not '{args.path}'.",
                          "Give the path of a GGUF model file (from Ollama, LM Studio or a hub).")
    if args.compare_tokens < 0:
        raise ConfigError(f"--compare-tokens must be 0 or more, got {args.compare_tokens}.")
    config = DequantizeConfig(model=str(Path(args.path).expanduser().resolve()), name=args.name,
                              compare_tokens=args.compare_tokens)
    with CliProgress(console) as bars:
        art = dequantize(config, store=store, progress=bars)
    for line in summary(art):
        console.print(line)
    console.print(f"added {art.name} ({art.kind}, {art.size_bytes / 1e6:.1f} MB) at {art.path}, made from "
                  f"{art.manifest.parents[0].name} (gguf)")
    return 0
