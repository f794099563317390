"""What a merge form offers for a method, and the ``merge`` step config it stands for.

A method's ``MethodInfo`` (``llmlab.merge.methods``) says which options it takes: a base model
(mergekit methods that do not ignore it), one weight and/or density per model, method-wide
parameters such as slerp's ``t``, and for peft's combinations whether to write a model or an
adapter. The app's Merge page asks these functions what to show; ``config_from_form`` turns the
answers into the config ``MergeConfig`` validates (only what differs from its defaults).
"""

from __future__ import annotations

from typing import Any

from llmlab.merge.methods import MethodInfo

DEFAULT_DENSITY = 0.7


def takes_base(info: MethodInfo) -> bool:
    """Whether a base model can be picked for the method (mergekit methods that use one)."""
    return info.base != "ignored" and info.source == "mergekit"


def takes_weights(info: MethodInfo) -> bool:
    return "weight" in info.per_model


def takes_densities(info: MethodInfo) -> bool:
    return "density" in info.per_model


def takes_t(info: MethodInfo) -> bool:
    """Whether the method interpolates by ``t`` (0: the base, 1: the other model), as slerp does."""
    return "t" in info.shared


def method_parameters(info: MethodInfo) -> dict[str, Any]:
    """The method-wide parameters a form offers besides ``t``, with mergekit's defaults: numbers and
    switches such as ``lambda``, ``normalize``, ramplus_tl's ``r`` and ``alpha``, sce's ``select_topk``,
    karcher's ``max_iter`` (per-model ones like breadcrumbs' ``gamma`` go in a model's ``parameters``)."""
    return {k: v for k, v in info.shared.items() if k != "t" and isinstance(v, (bool, int, float))}


def writes_adapter_or_model(info: MethodInfo) -> bool:
    """Whether the method can write either an adapter or a model (peft's combinations)."""
    return info.source == "peft"


def default_weight(method: str, n_models: int) -> float:
    """A model's starting weight: an even share for ``linear`` (an average), else 1.0 (full task vectors)."""
    return round(1.0 / n_models, 2) if method == "linear" and n_models else 1.0


def default_name(models: list[str], method: str) -> str:
    """The merge's default name: the first two inputs and the method (``a-b-ties``), a valid artifact name."""
    return f"{'-'.join(models[:2]) or 'merge'}-{method}".replace("_", "-")[:100]


def config_from_form(name: str, method: str, models: list[str], base: str | None, weights: list[float] | None,
                     densities: list[float] | None, parameters: dict[str, Any], tokenizer_source: str | None,
                     output: str) -> dict[str, Any]:
    """The ``merge`` step config the form stands for (only what differs from the defaults)."""
    config: dict[str, Any] = {"name": name, "method": method, "models": models}
    for key, value in (("base", base), ("weights", weights), ("densities", densities),
                       ("tokenizer_source", tokenizer_source)):
        if value is not None:
            config[key] = value
    if parameters:
        config["parameters"] = parameters
    if method.startswith("peft_"):
        config["output"] = output
    return config
