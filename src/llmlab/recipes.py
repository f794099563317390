"""Recipes: YAML pipelines of typed steps, run with ``llmlab run`` or exported as a script.

```yaml
name: quickstart
steps:
  - build-demo: {name: demo, size: small}
  - score: {model: demo}
```

Each step is a mapping with one key, the step kind, whose value is that station's pydantic
config (unknown keys and wrong types are errors that name the line). ``STEPS`` below is the one
table of step kinds: where its config and its function live (imported only when used), which
config fields name input artifacts and which names the output.

A step is skipped when its output already exists with the same *config hash*: the hash covers
the step's resolved config, the content hashes of its input artifacts, and library versions. A
step whose config has ``redo`` (quantize) also reuses, output by output, what was made alike under
another config; ``force`` sets its ``redo`` so that everything is made again.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from llmlab.errors import ConfigError, NotFoundError, StoreError
from llmlab.events import Reporter, emit
from llmlab.store import TRACKED_LIBRARIES, Store, StepRecord, library_versions


@dataclass(frozen=True)
class StepSpec:
    """Where a step kind's config and function live, and how it connects to the store."""

    config: str  # "module:Class"
    function: str  # "module:function" called as fn(config, store=, progress=, overwrite=, step=)
    summary: str
    inputs: tuple[str, ...] = ()  # config fields that name input artifacts (str or list of str)
    output: str | None = "name"  # config field (or property) naming what it writes: one name or a list
    cached: bool = True  # a step without outputs is skipped when its config and inputs are unchanged
    command: bool = True  # also a CLI command `llmlab <kind>` (False where another command runs it)
    libraries: tuple[str, ...] = TRACKED_LIBRARIES  # whose versions decide its output (in its config hash)

    def load_config(self) -> type[BaseModel]:
        return _import(self.config)

    def load_function(self) -> Callable[..., Any]:
        return _import(self.function)


STEPS: dict[str, StepSpec] = {
    "build-demo": StepSpec(
        "llmlab.build:BuildDemoConfig", "llmlab.build:build_demo",
        "Train the demo tokenizer and model from scratch on the synthetic world.",
        # torch alone: a first run builds the demo model before llama-cpp-python is installed (scripts/first_run.sh)
        libraries=("llmlab", "torch", "transformers", "tokenizers", "safetensors"),
    ),
    "score": StepSpec(
        "llmlab.scoring:ScoreConfig", "llmlab.scoring:score_step",
        "Score a model: perplexity, world-question accuracy, speed, size, memory.",
        inputs=("model", "reference"), output=None,
    ),
    "tune": StepSpec(
        "llmlab.tune.config:TuneConfig", "llmlab.tune.step:tune",
        "Tune a model (LoRA, DoRA, QLoRA, full, DPO, ORPO, GRPO) and score base vs tuned.",
        inputs=("model",),
    ),
    "distill": StepSpec(
        "llmlab.tune.distill:DistillConfig", "llmlab.tune.distill:distill",
        "Distil a teacher into a smaller student (KL on its softened logits) and score both side by side.",
        inputs=("teacher", "student"),
    ),
    "quantize": StepSpec(
        "llmlab.quantize.step:QuantizeConfig", "llmlab.quantize.step:quantize",
        "Quantize a model to GGUF types (optionally with an importance matrix) and/or GPTQ, AWQ, RTN, "
        "and score every variant.",
        inputs=("model",), output="outputs",
    ),
    "gguf-adapter": StepSpec(
        "llmlab.quantize.adapter:GGUFAdapterConfig", "llmlab.quantize.adapter:convert_adapter",
        "Convert a LoRA adapter to a GGUF adapter that llama.cpp applies to a base GGUF without merging.",
        inputs=("adapter", "base"), output="output",
    ),
    "dequantize": StepSpec(
        "llmlab.dequantize:DequantizeConfig", "llmlab.dequantize:dequantize",
        "Dequantize a GGUF model (an artifact or a .gguf file) into a trainable Hugging Face base model, "
        "checking tokenizer parity, the chat template and top-1/KLD against the GGUF.",
        inputs=("store_inputs",), output="output",
    ),
    "merge": StepSpec(
        "llmlab.merge.step:MergeConfig", "llmlab.merge.step:merge",
        "Merge models or adapters (every mergekit method, peft adapter combinations) and score against the parents.",
        inputs=("input_names",),
    ),
    "index": StepSpec(
        "llmlab.rag.index:IndexConfig", "llmlab.rag.index:build_index",
        "Index documents (the demo world, a folder, a JSONL corpus) for search: Chroma embeddings + BM25.",
        inputs=("world_of",),
    ),
    "agent": StepSpec(
        "llmlab.agents.step:AgentConfig", "llmlab.agents.step:build_agent",
        "Write an agent artifact: a resolved agent spec with its index and chat model as parents.",
        inputs=("index", "model"),
    ),
    "eval-answers": StepSpec(
        "llmlab.agents.evaluate:EvalAnswersConfig", "llmlab.agents.evaluate:eval_answers_step",
        "Score an agent's answers (exact match, F1) with vs without retrieval; LLM judge without gold.",
        inputs=("agent", "index", "model"), output=None, command=False,  # `llmlab eval answers`
    ),
    "eval-retrieval": StepSpec(
        "llmlab.rag.beir:RetrievalEvalConfig", "llmlab.rag.beir:eval_retrieval_step",
        "Measure retrieval (nDCG@10, recall@k, MRR) on a BEIR-layout set for each search mode.",
        inputs=("index",), output=None, command=False,  # `llmlab eval retrieval`
    ),
    "evaluate": StepSpec(
        "llmlab.evaluate.leaderboard:EvaluateConfig", "llmlab.evaluate.leaderboard:evaluate_step",
        "Score variants on one suite (perplexity, KLD/top-1, task sets; speed on request) into a cached leaderboard.",
        inputs=("models",), output=None,
    ),
    "export": StepSpec(
        "llmlab.export:ExportConfig", "llmlab.export:export",
        "Export a model as a hash-verified bundle (server, Dockerfile, Modelfile, lock) with a parity check.",
        inputs=("store_inputs",), output="output",
    ),
    "serve": StepSpec(
        "llmlab.serve.step:ServeStepConfig", "llmlab.serve.step:serve_step",
        "Start a bundle's OpenAI-compatible server in the background and ask it one question over HTTP.",
        inputs=("bundle",), output=None, cached=False, command=False,
    ),
}


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class Step(BaseModel):
    """One resolved step: its kind and validated config."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    kind: str
    config: BaseModel
    line: int | None = None

    @property
    def spec(self) -> StepSpec:
        return STEPS[self.kind]

    def config_dict(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    def input_names(self) -> list[str]:
        names: list[str] = []
        for f in self.spec.inputs:
            value = getattr(self.config, f, None)
            names += [value] if isinstance(value, str) else list(value or [])
        return names

    def output_names(self) -> list[str]:
        value = getattr(self.config, self.spec.output) if self.spec.output else None
        return [value] if isinstance(value, str) else list(value or [])


class Recipe(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    description: str = ""
    steps: list[Step]
    source: str | None = None

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in: what a job records and replays."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["steps"] = [{s.kind: s.config_dict()} for s in self.steps]
        return out


# ----- loading and validation -----
RECIPE_KEYS = {"name", "description", "steps"}


def load(source: str | Path | dict[str, Any]) -> Recipe:
    """Load and validate a recipe from a YAML file path or a dict."""
    if isinstance(source, dict):
        return _parse(source, None, None)
    path = Path(source)
    if not path.is_file():
        shipped = sorted(p.stem for p in recipes_dir().glob("*.yaml")) if recipes_dir() else []
        raise NotFoundError(
            f"Recipe file '{path}' does not exist.",
            f"Shipped recipes: {', '.join(shipped)}." if shipped else None,
        )
    return loads(path.read_text(), source=str(path))


def loads(text: str, *, source: str | None = None) -> Recipe:
    """Load and validate a recipe from YAML text (errors name ``source`` and the line)."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{source or 'The recipe'} is not valid YAML{where}: {getattr(e, 'problem', e)}.") from None
    return _parse(data, node, source)


def recipes_dir() -> Path | None:
    """The repository's recipes/ folder when running from a checkout."""
    here = Path(__file__).resolve().parents[2] / "recipes"
    return here if here.is_dir() else None


def _parse(data: Any, node: yaml.Node | None, source: str | None) -> Recipe:
    where = source or "recipe"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe is a mapping with 'name' and 'steps'.")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{where}{_line(node, [key])}: unknown key '{key}'.",
                          _did_you_mean(key, RECIPE_KEYS))
    steps_data = data.get("steps")
    if not isinstance(steps_data, list) or not steps_data:
        raise ConfigError(f"{where}: 'steps' must be a non-empty list of steps.",
                          f"Step kinds: {', '.join(STEPS)}.")
    steps = []
    for i, raw in enumerate(steps_data):
        line_of = lambda path, i=i: _line(node, ["steps", i, *path])  # noqa: E731
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ConfigError(f"{where}{line_of([])}: step {i + 1} must be a mapping with one key, the step kind "
                              "(e.g. '- build-demo: {name: demo}').")
        kind, cfg = next(iter(raw.items()))
        if kind not in STEPS:
            raise ConfigError(f"{where}{line_of([])}: unknown step kind '{kind}'.",
                              _did_you_mean(kind, STEPS) or f"Step kinds: {', '.join(STEPS)}.")
        steps.append(make_step(kind, cfg or {}, where=where, line_of=lambda p, k=kind: line_of([k, *p])))
    name = data.get("name") or (Path(source).stem if source else "recipe")
    return Recipe(name=str(name), description=str(data.get("description") or ""), steps=steps, source=source)


def make_step(kind: str, config: dict[str, Any] | BaseModel, *, where: str = "step",
              line_of: Callable[[list], str] = lambda p: "") -> Step:
    """Validate one step's config; errors name the field, the line and a hint."""
    if kind not in STEPS:
        raise ConfigError(f"Unknown step kind '{kind}'.", f"Step kinds: {', '.join(STEPS)}.")
    model = STEPS[kind].load_config()
    if isinstance(config, BaseModel):
        return Step(kind=kind, config=config)
    if not isinstance(config, dict):
        raise ConfigError(f"{where}{line_of([])}: the '{kind}' step needs a mapping of options.")
    try:
        return Step(kind=kind, config=model.model_validate(config))
    except ValidationError as e:
        err = e.errors()[0]
        loc = [x for x in err["loc"]]
        field = ".".join(str(x) for x in loc)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{field}' in the '{kind}' step"
            hint = _did_you_mean(str(loc[-1]), model.model_fields) or f"Its keys: {', '.join(model.model_fields)}."
        elif not loc:  # a check across fields (a model validator): no one field to name
            msg, hint = f"the '{kind}' step: {err['msg'].removeprefix('Value error, ')}", None
        else:
            msg = f"'{field}' in the '{kind}' step: {err['msg']} (got {err.get('input')!r})"
            hint = _field_help(model, str(loc[0]))
        raise ConfigError(f"{where}{line_of(loc)}: {msg}.", hint) from None


def _field_help(model: type[BaseModel], name: str) -> str | None:
    f = model.model_fields.get(name)
    return f"{name}: {f.description}" if f is not None and f.description else None


def _did_you_mean(word: str, choices: Any) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"Did you mean '{close[0]}'?" if close else None


def _line(node: yaml.Node | None, path: list) -> str:
    """' (line N)' for the YAML node at ``path``, or the nearest existing ancestor."""
    found = node
    for key in path:
        child = None
        if isinstance(found, yaml.MappingNode):
            child = next((v for k, v in found.value if k.value == key), None)
            if child is None:
                child = next((k for k, v in found.value if k.value == key), None)
        elif isinstance(found, yaml.SequenceNode) and isinstance(key, int) and key < len(found.value):
            child = found.value[key]
        if child is None:
            break
        found = child
    return f" (line {found.start_mark.line + 1})" if found is not None else ""


# ----- running -----
def config_hash(step: Step, store: Store) -> str:
    """Hash of what determines a step's output: config, inputs' content, library versions."""
    inputs = {}
    for n in step.input_names():
        inputs[n] = store.get(n).content_hash if store.exists(n) else "missing"
    blob = json.dumps({"kind": step.kind, "config": step.config_dict(), "inputs": inputs,
                       "versions": library_versions(step.spec.libraries)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class StepResult:
    kind: str
    outputs: list[str]
    status: str  # "done" | "skipped"
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)

    @property
    def subjects(self) -> list[str]:
        """The artifacts this step is about: what it wrote, else its first input."""
        return self.outputs or self.inputs[:1]


def run(recipe: Recipe, *, store: Store | None = None, force: bool = False,
        progress: Reporter | None = None, track: bool = True) -> list[StepResult]:
    """Run every step in order; skip those whose output is current (unless ``force``)."""
    from llmlab import tracking

    store = store or Store()
    results: list[StepResult] = []
    with tracking.recipe_run(recipe.name, recipe.resolved(), store=store, enabled=track) as tracker:
        for i, step in enumerate(recipe.steps):
            emit(progress, "step", index=i, total=len(recipe.steps), kind=step.kind, status="start",
                 outputs=step.output_names())
            t0 = time.perf_counter()
            result = run_step(step, store=store, force=force, progress=progress)
            result.inputs = step.input_names()
            result.seconds = round(time.perf_counter() - t0, 2)
            results.append(result)
            tracker.log_step(i, step.kind, step.config_dict(), result.metrics, result.seconds, result.outputs)
            emit(progress, "step", index=i, total=len(recipe.steps), kind=step.kind, status=result.status,
                 outputs=result.outputs, seconds=result.seconds, metrics=result.metrics)
    return results


def run_step(step: Step, *, store: Store, force: bool = False, progress: Reporter | None = None) -> StepResult:
    for n in step.input_names():
        store.get(n)  # a missing input fails here, naming it, before any work starts
    digest = config_hash(step, store)
    record = StepRecord(kind=step.kind, config=step.config_dict(), config_hash=digest)
    outs = step.output_names()
    cache = store.root / ".cache" / "steps" / f"{digest}.json"
    if not force:
        if outs and all(store.exists(o) for o in outs):
            made_by = [store.get(o).manifest.step for o in outs]
            if any(m is None for m in made_by):
                raise StoreError(f"'{outs[made_by.index(None)]}' already exists and was not made by a recipe step "
                                 "(imported?).", "Choose another output name, or pass --force to replace it.")
            if all(m.config_hash == digest for m in made_by):
                return StepResult(step.kind, outs, "skipped", 0.0, store.get(outs[-1]).metrics)
        if not outs and step.spec.cached and cache.is_file():
            return StepResult(step.kind, [], "skipped", 0.0, json.loads(cache.read_text()))
    fn = step.spec.load_function()
    config = step.config
    if force and "redo" in type(config).model_fields:  # past its own per-output reuse too
        config = config.model_copy(update={"redo": True})
    value = fn(config, store=store, progress=progress, overwrite=True, step=record)
    if outs:
        return StepResult(step.kind, outs, "done", 0.0, store.get(outs[-1]).metrics)
    metrics = value if isinstance(value, dict) else {}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(metrics, default=str))
    return StepResult(step.kind, [], "done", 0.0, metrics)


# ----- export as a script -----
def step_call(step: Step) -> tuple[dict[str, set[str]], str]:
    """The Python call that runs ``step`` (its station function on its typed config, with ``store`` and
    ``progress`` variables), and what it imports: ``{module: {names}}``."""
    cmod, ccls = step.spec.config.split(":")
    fmod, fn = step.spec.function.split(":")
    imports: dict[str, set[str]] = {}
    imports.setdefault(cmod, set()).add(ccls)
    imports.setdefault(fmod, set()).add(fn)
    args = ",\n".join(f"        {k}={v!r}" for k, v in step.config_dict().items())
    return imports, f"{fn}(\n    {ccls}(\n{args},\n    ),\n    store=store, progress=progress, overwrite=True,\n)"


def step_calls(recipe: Recipe) -> tuple[dict[str, set[str]], list[str]]:
    """Every step's call (``step_call``), and what they import together: ``{module: {names}}``."""
    imports: dict[str, set[str]] = {}
    calls = []
    for step in recipe.steps:
        needs, call = step_call(step)
        for module, names in needs.items():
            imports.setdefault(module, set()).update(names)
        calls.append(call)
    return imports, calls


def import_lines(imports: dict[str, set[str]]) -> list[str]:
    """``from module import a, b`` lines, sorted, for ``{module: {names}}``."""
    return [f"from {m} import {', '.join(sorted(names))}" for m, names in sorted(imports.items())]


def export_script(recipe: Recipe) -> str:
    """A standalone Python script that makes the same public API calls as ``run``."""
    imports, calls = step_calls(recipe)
    body: list[str] = []
    for i, (step, call) in enumerate(zip(recipe.steps, calls), 1):
        body.append(f"\n# Step {i}: {step.kind}. {step.spec.summary}")
        body.append(f"result = {call}\nprint('{step.kind}:', result)")
    head = [
        f'"""Recipe \'{recipe.name}\' as plain Python, written by `llmlab export-script`.',
        "",
        "Run it with `python this_file.py`. It writes to the store at $LLMLAB_HOME (default ./models)",
        'and makes the same calls as `llmlab run`; edit it freely."""',
        "",
    ]
    head += import_lines(imports)
    head += ["from llmlab.store import Store", "", "store = Store()",
             "progress = None  # or llmlab.events.json_lines() to print progress events"]
    return "\n".join(head + body) + "\n"
