"""Reading the command line: the store ``--home`` names, and one ``--flag`` per field of a station's
pydantic config. A string field's flag keeps its text as typed; other fields' values are parsed as YAML
(as in recipes: 3, 0.5, true, [a, b]) and validated by the model."""

from __future__ import annotations

import argparse
import types
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin


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


def is_text(annotation: Any) -> bool:
    """True for a field that holds a plain string (``str``, ``str | None``, a path, a Literal of strings):
    its flag's text is kept as typed, so ``::``, ``yes``, ``007`` or ``null`` stay strings."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return is_text(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(is_text(a) for a in args)
    if origin is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, (str, PurePath))


def default_text(field: Any) -> str:
    """A field's default for --help: ``(required)``, ``(default: none)``, ``(default: empty)`` or the value
    (a ``default_factory`` is called)."""
    if field.is_required():
        return "(required)"
    if getattr(field, "default_factory_takes_validated_data", False):  # made from the other fields' values
        return "(default: computed)"
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "(default: none)"
    if isinstance(default, (str, list, tuple, dict, set, frozenset)) and not default:
        return "(default: empty)"
    return f"(default: {default})"


def add_config_flags(parser: argparse.ArgumentParser, model: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of a pydantic config; values are validated by the model. A field's
    former names (its ``validation_alias`` choices, e.g. ``--data`` for ``--texts``) work as flags too."""
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        help_text = ((f.description or "") + " " + default_text(f)).strip().replace("%", "%%")
        aliases = [a for a in getattr(f.validation_alias, "choices", []) if isinstance(a, str) and a != name]
        flags = [f"--{n.replace('_', '-')}" for n in (name, *aliases)]
        parser.add_argument(*flags, dest=f"cfg_{name}", metavar="VALUE", help=help_text, default=argparse.SUPPRESS,
                            type=str if is_text(f.annotation) else parse_value)


def config_from_flags(args: argparse.Namespace, **fixed: Any) -> dict[str, Any]:
    """The config fields given as flags (already typed by ``add_config_flags``), plus ``fixed`` ones."""
    cfg = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg.update({k: v for k, v in fixed.items() if v is not None})
    return cfg
