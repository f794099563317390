"""``import llmlab``: the notebook's one import line offers the common calls, and stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

import llmlab

HEAVY = ("torch", "transformers", "llama_cpp", "streamlit")


def _home(name: str):
    module, _, attr = llmlab._PUBLIC[name].partition(":")
    home = importlib.import_module(module)
    return getattr(home, attr) if attr else home


@pytest.mark.parametrize("name", llmlab.__all__)
def test_every_public_name_is_the_object_at_its_home(name):
    assert name in llmlab._PUBLIC
    assert getattr(llmlab, name) is _home(name)
    assert name in dir(llmlab)


def test_station_entry_points_are_what_recipes_run():
    """Each station's config and function are the ones its recipe step runs (``llmlab.recipes.STEPS``)."""
    from llmlab.recipes import STEPS

    pairs = {"build-demo": ("BuildDemoConfig", "build_demo"), "tune": ("TuneConfig", "tune.tune"),
             "distill": ("DistillConfig", "distill"), "merge": ("MergeConfig", "merge.merge"),
             "quantize": ("QuantizeConfig", "quantize.quantize"),
             "dequantize": ("DequantizeConfig", "dequantize.dequantize"),
             "gguf-adapter": ("GGUFAdapterConfig", "convert_adapter"),
             "index": ("IndexConfig", "build_index"),
             "agent": ("AgentConfig", "build_agent"), "evaluate": ("EvaluateConfig", None),
             "export": ("ExportConfig", "export.export")}
    for kind, (config, function) in pairs.items():
        assert getattr(llmlab, config) is STEPS[kind].load_config(), kind
        if function is not None:
            obj = llmlab
            for part in function.split("."):
                obj = getattr(obj, part)
            assert obj is STEPS[kind].load_function(), kind
    assert llmlab.evaluate.evaluate is importlib.import_module("llmlab.evaluate.leaderboard").evaluate
    assert llmlab.serve.serve is importlib.import_module("llmlab.serve.app").serve


def test_station_packages_stay_modules():
    """A station named like its entry point is its package, so ``import llmlab.tune.step`` and
    ``monkeypatch.setattr("llmlab.tune.step.x", ...)`` keep working whatever was touched first."""
    for name in ("tune", "merge", "quantize", "evaluate", "export", "serve"):
        assert isinstance(getattr(llmlab, name), types.ModuleType)
        assert getattr(llmlab, name) is sys.modules[f"llmlab.{name}"]


def test_import_llmlab_imports_nothing_heavy():
    code = ("import sys, llmlab; dir(llmlab); llmlab.__version__;"
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]; assert not bad, bad;"
            "low = {'llmlab.noise', 'llmlab.errors', 'llmlab.settings', 'llmlab.events'};"
            "loaded = sorted(m for m in sys.modules if m.startswith('llmlab.') and m not in low);"
            "assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_light_public_names_import_nothing_heavy():
    """Reaching the store, the configs and the recipe loader loads no engine either."""
    code = ("import sys, llmlab;"
            "[getattr(llmlab, n) for n in ('Store', 'SamplingParams', 'load', 'score', 'load_recipe',"
            " 'run_recipe', 'BuildDemoConfig', 'IndexConfig', 'AgentConfig', 'ServeConfig')];"
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_thing"):
        llmlab.no_such_thing  # noqa: B018
    assert not hasattr(llmlab, "Tune_Config")
    with pytest.raises(ImportError, match="no_such_thing"):
        exec("from llmlab import no_such_thing", {})
