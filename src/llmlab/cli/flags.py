"""Reading the command line: the store ``--home`` names, and one ``--flag`` per field of a station's
pydantic config, whose values are parsed as YAML scalars (as in recipes) and validated by the model."""

from __future__ import annotations

import argparse
from typing import Any


def store_from(args: argparse.Namespace):
    from llmlab.store import Store

    return Store(args.home) if getattr(args, "home", None) else Store()


def parse_value(text: str) -> Any:
    """A flag's text as YAML scalar/list (so 3, 0.5, true, [a, b] work as in recipes)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def add_config_flags(parser: argparse.ArgumentParser, model: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of a pydantic config; values are validated by the model. A field's
    former names (its ``validation_alias`` choices, e.g. ``--data`` for ``--texts``) work as flags too."""
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        default = "none" if f.default is None else f.default
        help_text = (f.description or "") + (" (required)" if f.is_required() else f" (default: {default})")
        aliases = [a for a in getattr(f.validation_alias, "choices", []) if isinstance(a, str) and a != name]
        flags = [f"--{n.replace('_', '-')}" for n in (name, *aliases)]
        parser.add_argument(*flags, dest=f"cfg_{name}", metavar="VALUE", help=help_text, default=argparse.SUPPRESS)


def config_from_flags(args: argparse.Namespace, **fixed: Any) -> dict[str, Any]:
    cfg = {k[4:]: parse_value(v) for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg.update({k: v for k, v in fixed.items() if v is not None})
    return cfg
