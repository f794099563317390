"""Recipes: validation errors with lines and hints, skipping by config hash, export-script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab import recipes
from llmlab.errors import ConfigError, NotFoundError

ROOT = Path(__file__).resolve().parents[1]
MICRO = "name: t\nsteps:\n  - build-demo:\n      name: m\n      size: micro\n"


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    recipe = recipes.load(path)
    assert recipe.steps and all(s.kind in recipes.STEPS for s in recipe.steps)
    assert recipes.load(recipe.resolved()).resolved() == recipe.resolved()


@pytest.mark.parametrize(
    "text, message, hint",
    [
        ("name: t\nstepz: []\n", r"\(line 2\): unknown key 'stepz'", "Did you mean 'steps'?"),
        ("name: t\nsteps: []\n", "'steps' must be a non-empty list", "Step kinds"),
        ("name: t\nsteps:\n  - build-dmo: {}\n", r"\(line 3\): unknown step kind 'build-dmo'", "build-demo"),
        ("name: t\nsteps:\n  - build-demo:\n      name: m\n      sise: micro\n",
         r"\(line 5\): unknown key 'sise' in the 'build-demo' step", "Did you mean 'size'?"),
        ("name: t\nsteps:\n  - build-demo:\n      name: m\n      size: huge\n",
         r"\(line 5\): 'size' in the 'build-demo' step: .*'huge'", None),
        ("name: t\nsteps:\n  - build-demo:\n      seed: [1]\n", r"\(line 4\): 'seed'", None),
        ("name: t\nsteps:\n  - build-demo: {name: m}\n    - oops\n", "not valid YAML at line", None),
        ("name: t\nsteps:\n  - build-demo: 3\n", r"\(line 3\): the 'build-demo' step needs a mapping", None),
        ("- just\n- a list\n", "a recipe is a mapping", None),
    ],
)
def test_bad_recipes_name_line_and_hint(text, message, hint):
    with pytest.raises(ConfigError, match=message) as err:
        recipes.loads(text)
    if hint:
        assert hint in (err.value.hint or "")


def test_missing_recipe_file_lists_shipped_ones(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist") as err:
        recipes.load(tmp_path / "nope.yaml")
    assert "quickstart" in err.value.hint


def test_config_hash_covers_config_and_inputs(store):
    a = recipes.loads(MICRO).steps[0]
    b = recipes.loads(MICRO.replace("micro", "small")).steps[0]
    assert recipes.config_hash(a, store) == recipes.config_hash(recipes.loads(MICRO).steps[0], store)
    assert recipes.config_hash(a, store) != recipes.config_hash(b, store)


def test_a_step_hash_follows_only_the_libraries_that_make_its_output(store, monkeypatch):
    # scripts/first_run.sh builds the demo model before llama-cpp-python is installed: the recipe must
    # still find it current afterwards, while a quantize step changes with llama-cpp-python's version
    installed = {"llama_cpp_python": None}

    def versions(names):
        return {n: installed.get(n, "1.0") for n in names if installed.get(n, "1.0")}

    monkeypatch.setattr(recipes, "library_versions", versions)
    build = recipes.loads(MICRO).steps[0]
    quantize = recipes.make_step("quantize", {"model": "m", "types": ["q8_0"]})
    before = recipes.config_hash(build, store), recipes.config_hash(quantize, store)
    installed["llama_cpp_python"] = "0.3.36"
    assert recipes.config_hash(build, store) == before[0]
    assert recipes.config_hash(quantize, store) != before[1]
    installed["torch"] = "2.99"
    assert recipes.config_hash(build, store) != before[0]


def test_the_first_run_builds_the_quickstart_recipes_first_step():
    # what `llmlab build-demo` makes with its defaults is what recipes/quickstart.yaml's first step
    # asks for, so the recipe skips it after scripts/first_run.sh built it
    script = (ROOT / "scripts" / "first_run.sh").read_text()
    assert re.search(r'"\$BIN/llmlab" build-demo\s*(#|$)', script, re.M)
    first = recipes.load(ROOT / "recipes" / "quickstart.yaml").steps[0]
    assert first.kind == "build-demo"
    assert first.config_dict() == recipes.make_step("build-demo", {}).config_dict()


def test_export_script_is_valid_python_calling_the_api():
    text = recipes.export_script(recipes.load(ROOT / "recipes" / "quickstart.yaml"))
    compile(text, "quickstart.py", "exec")
    assert "from llmlab.build import BuildDemoConfig, build_demo" in text
    assert "build_demo(\n    BuildDemoConfig(" in text and "size='small'" in text


@pytest.mark.slow
def test_run_skips_current_steps_and_exported_script_rebuilds_the_same(tmp_path, store):
    recipe = recipes.loads(MICRO)
    first = recipes.run(recipe, store=store, track=False)
    assert [r.status for r in first] == ["done"]
    made = store.get("m")
    assert made.manifest.step.kind == "build-demo" and made.manifest.step.config["size"] == "micro"
    assert [r.status for r in recipes.run(recipe, store=store, track=False)] == ["skipped"]
    assert [r.status for r in recipes.run(recipe, store=store, force=True, track=False)] == ["done"]

    script = tmp_path / "script.py"
    script.write_text(recipes.export_script(recipe))
    other = tmp_path / "other-store"
    env = {**os.environ, "LLMLAB_HOME": str(other)}
    subprocess.run([sys.executable, str(script)], check=True, env=env, cwd=tmp_path, timeout=600)
    from llmlab.store import Store

    rebuilt = Store(other).get("m")
    assert rebuilt.manifest.files == store.get("m").manifest.files
    assert rebuilt.content_hash == store.get("m").content_hash
