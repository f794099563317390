"""The ``export`` step: a model artifact as a ``bundle`` artifact plus ``<name>.tar.gz`` beside it.

Bundle layout (every file hashed in ``manifest.json``; ``metrics.json`` holds scores and parity):

```
bundle.json        what is in it: name, model format and files, chat template, stop strings, vllm command
model/             the model in its serving format: <name>.gguf (+ adapter.gguf, or adapters/<name>.gguf
                   for each of several adapters), or the HF folder
server.json        `llmlab serve` defaults (limits, port)
requirements.lock  only what serving needs (no torch for a GGUF bundle)
Dockerfile         non-root, with a healthcheck; serves the bundle on port 8000 with an API key
Modelfile          Ollama (GGUF bundles): FROM, ADAPTER, TEMPLATE translated from Jinja, stops
recipe.yaml        the steps that rebuild the model from its lineage, then this export
README.md          model card: lineage, scores from the artifact's metrics, parity, how to run it
index/             (agent or --index) the index artifact: chunks, vectors, BM25, Chroma collection
embedder/          (with an index) the index's embedder as ONNX + tokenizer.json, run without torch
agent.yaml         (agent) the agent spec, served as a model name beside the chat model (with several
                   adapters: the agent on the base, and on each adapter as <agent>:<adapter>)
```

Exporting an ``agent`` artifact bundles its chat model (a GGUF artifact), its index and its spec;
``index`` adds an index to a plain model bundle (``/v1/embeddings`` and search, no agent).
``adapters`` bundles several LoRA adapters with a GGUF base, chosen per request (``export.adapters``).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from llmlab.errors import ConfigError, StoreError
from llmlab.events import Reporter, emit
from llmlab.serve.bundle import BUNDLE_SPEC
from llmlab.store import GGUF_KINDS, HF_KINDS

if TYPE_CHECKING:
    from llmlab.store import Artifact, StepRecord, Store

AGENT_SPEC = "agent.yaml"


class ExportConfig(BaseModel):
    """Options of the ``export`` step (``llmlab export MODEL``, a recipe step)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="Artifact to export: a gguf or gguf-adapter artifact (served by llmlab "
                       "serve / Ollama), a Hugging Face one (base, full, merged, adapter: for vLLM), an agent artifact "
                       "(its GGUF model, index and spec), or a registered bundle version models:/NAME/VERSION "
                       "(fetched from MLflow, hash-checked).")
    name: str | None = Field(None, description="Name of the bundle artifact; default: <model>-bundle "
                             "(<NAME>-v<VERSION> for a registered version).")
    parity: bool = Field(True, description="Replay the parity prompts through the bundle's server and the "
                         "artifact in process; fail on any drift (GGUF bundles).")
    tarball: bool = Field(True, description="Also write <name>.tar.gz beside the bundle in the store.")
    max_tokens: int = Field(1024, ge=1, description="The server's limit on tokens per request.")
    max_queue: int = Field(16, ge=0, description="Requests the server queues before answering 429.")
    registry: bool = Field(False, description="Log the bundle to MLflow and register it as a new model version.")
    index: str | None = Field(None, description="An index artifact to bundle with the model (with its embedder as "
                              "ONNX); an agent artifact brings its own.")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapters to serve on the model (a GGUF "
                                "base) from one server, each asked for as model '<bundle>:<adapter>': gguf-adapter "
                                "artifacts of that base, or peft adapters of its source model (converted first).")

    @property
    def registered(self) -> tuple[str, str] | None:
        from llmlab.export.registry import URI

        m = URI.match(self.model)
        return (m.group(1), m.group(2)) if m else None

    @property
    def store_inputs(self) -> list[str]:
        """The store artifacts this step reads (none for a registered version)."""
        return [] if self.registered else [self.model] + ([self.index] if self.index else []) + self.adapters

    @property
    def output(self) -> str:
        if self.name:
            return self.name
        reg = self.registered
        return f"{reg[0]}-v{reg[1]}" if reg else f"{self.model}-bundle"


# ----- writing -----
def plan(art: Artifact, adapters: list[str] | None = None) -> list[dict[str, str]]:
    """What exporting ``art`` (with ``adapters``) would put into its bundle: one {file, what} row per entry
    (reads nothing)."""
    agent = art.kind == "agent"
    rows = plan_rows("gguf", art.name) if agent else plan_rows(art.kind, art.name)
    if adapters:
        served = "'<bundle>:<adapter>' and '<agent>:<adapter>'" if agent else "'<bundle>:<adapter>'"
        count = f"{len(adapters)} LoRA adapter" + ("s" if len(adapters) > 1 else "")
        rows.insert(1, {"file": "model/adapters/*.gguf", "what": f"{count} on the base, chosen per request as "
                        f"model {served}"})
    return rows + (AGENT_ROWS if agent else [])


AGENT_ROWS = [{"file": "index/", "what": "the index: chunks, vectors, BM25 and the Chroma collection"},
              {"file": "embedder/", "what": "the index's embedder as ONNX (onnxruntime, no torch), checked against "
                                            "the index's vectors"},
              {"file": "agent.yaml", "what": "the agent spec, served as a model name"}]


def plan_rows(kind: str, name: str | None) -> list[dict[str, str]]:
    fmt = "gguf" if kind in GGUF_KINDS else "hf" if kind in HF_KINDS else None
    if fmt is None:
        raise ConfigError(f"'{name}' is a {kind} artifact; export takes a model or an agent.",
                          "Give a gguf, gguf-adapter, base, full, merged, adapter or agent artifact.")
    rows = [{"file": "model/*.gguf" if fmt == "gguf" else "model/", "what":
             "the GGUF file llama.cpp serves" if fmt == "gguf" else "the Hugging Face folder (safetensors) for vLLM"}]
    if kind == "gguf-adapter":
        rows.append({"file": "model/adapter.gguf", "what": "the LoRA adapter, applied on top of the base GGUF"})
    if kind == "adapter":
        rows[0]["what"] += " (base and adapter merged)"
    rows += [{"file": "server.json", "what": "llmlab serve defaults: port, max_tokens, queue"},
             {"file": "requirements.lock",
              "what": "only what serving needs" + (" (no torch)" if fmt == "gguf" else "")},
             {"file": "Dockerfile", "what": "non-root image with a healthcheck, API key required"}]
    if fmt == "gguf":
        rows.append({"file": "Modelfile", "what": "Ollama: chat template translated from Jinja, stop strings"})
    rows += [{"file": "recipe.yaml", "what": "the steps that rebuild the model, then this export"},
             {"file": "README.md", "what": "model card: lineage, scores, parity report, how to run"},
             {"file": "bundle.json",
              "what": "what is in it" + ("" if fmt == "gguf" else ", with the vllm serve command")},
             {"file": "manifest.json", "what": "sha256 of every file (llmlab bundle verify)"}]
    return rows


def _model_files(art: Artifact, store: Store) -> tuple[str, Path, Path | None]:
    """(format, model file or folder, adapter file) for an artifact."""
    if art.kind == "gguf":
        return "gguf", art.file(".gguf"), None
    if art.kind == "gguf-adapter":
        from llmlab.runtime.adapters import gguf_adapter_base

        return "gguf", gguf_adapter_base(art, store), art.file(".gguf")
    if art.kind == "adapter":
        from llmlab.runtime.adapters import merged_folder

        return "hf", merged_folder(art, store), None
    if art.kind in HF_KINDS:
        return "hf", art.path, None
    raise ConfigError(f"'{art.name}' is a {art.kind} artifact; export takes a model.",
                      "Give a gguf, gguf-adapter, base, full, merged or adapter artifact.")


def rebuild_recipe(art: Artifact, store: Store, config: ExportConfig,
                   also: list[Artifact] | None = None) -> dict[str, Any]:
    """The recipe steps (from the manifests of the artifact's ancestors, and of ``also``'s) that rebuild
    it, then the export."""
    steps: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(a: Artifact) -> None:
        for p in a.manifest.parents:
            if p.name not in seen and store.exists(p.name):
                seen.add(p.name)
                visit(store.get(p.name))
        step = a.manifest.step
        if step is not None and {step.kind: step.config} not in steps:
            steps.append({step.kind: step.config})

    visit(art)
    for extra in also or []:
        visit(extra)
    steps.append({"export": config.model_dump(mode="json", exclude_defaults=True)})
    return {"name": f"rebuild-{config.output}", "description": f"Rebuild '{art.name}' and export it.",
            "steps": steps}


def dockerfile(model_format: str) -> str:
    build = ("# llama-cpp-python compiles llama.cpp when no wheel fits the platform\n"
             "RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \\\n"
             "    && rm -rf /var/lib/apt/lists/*\n") if model_format == "gguf" else ""
    return f"""# Serves this bundle with `llmlab serve` on port 8000 (API key from $LLMLAB_API_KEY).
# docker build -t my-model . && docker run -p 8000:8000 -e LLMLAB_API_KEY=... my-model
# Offline builds: put the wheels (llmlab's included) in ./wheels and pass
#   --build-arg PIP_OPTIONS="--no-index --find-links /bundle/wheels"
FROM python:3.11-slim
{build}ARG PIP_OPTIONS=""
RUN useradd --create-home --uid 10001 llmlab
WORKDIR /bundle
COPY --chown=llmlab:llmlab . /bundle
RUN pip install --no-cache-dir $PIP_OPTIONS -r requirements.lock \\
    && pip install --no-cache-dir --no-deps $PIP_OPTIONS llmlab
USER llmlab
ENV LLMLAB_HOME=/home/llmlab/.llmlab LLMLAB_TRACKING_URI=off
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \\
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["llmlab", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8000", "--api-key-env", "LLMLAB_API_KEY"]
"""


def _scores(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = []
    for k, v in sorted(metrics.items()):
        if isinstance(v, dict):
            rows += [(f"{k}.{kk}", vv) for kk, vv in _scores(v)]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            rows.append((k, round(v, 4) if isinstance(v, float) else v))
    return rows


def model_card(spec: dict[str, Any], art: Artifact, store: Store, parity: dict[str, Any] | None) -> str:
    lineage, a = [], art
    while a is not None:
        lineage.append(f"{a.name} ({a.kind}, {a.content_hash[:12]})")
        first = next((p for p in a.manifest.parents if store.exists(p.name)), None)
        a = store.get(first.name) if first else None
    rows = _scores(art.metrics)
    table = "\n".join(f"| {k} | {v} |" for k, v in rows) or "| (no scores recorded) | |"
    parity_text = "not run" if parity is None else json.dumps(parity, indent=2)
    name = spec["name"]
    adapters = spec["model"].get("adapters") or {}
    adapter_text = ("\nAdapters on the base, each asked for by its model name: " + ", ".join(
        f"`{name}:{a}` ({e['artifact']}, {e['artifact_hash'][:12]})" for a, e in adapters.items()) + ".\n"
        if adapters else "")
    run = (f"llmlab serve . --port 8000\nollama create {name} -f Modelfile"
           if spec["model"]["format"] == "gguf" else spec.get("vllm", ""))
    return f"""# {name}

Exported by llmlab from `{art.name}` ({art.kind}). Lineage: {' <- '.join(lineage)}.
{adapter_text}

## Scores (from `{art.name}`'s metrics)

| metric | value |
| --- | --- |
{table}

## Parity (bundle server vs the evaluated artifact)

```
{parity_text}
```

## Run it

```
llmlab bundle verify .
{run}
docker build -t {name} . && docker run -p 8000:8000 -e LLMLAB_API_KEY=secret {name}
```
"""


def export(config: ExportConfig, *, store: Store | None = None, progress: Reporter | None = None,
           overwrite: bool = False, step: StepRecord | None = None) -> Artifact:
    """Write the bundle ``config.output`` (see module doc) and its tarball; returns the bundle artifact."""
    from llmlab.export.lockfile import lock_text
    from llmlab.store import Parent, Store

    store = store or Store()
    if config.registered:
        return _from_registry(config, store, overwrite=overwrite, step=step, progress=progress)
    top = store.get(config.model)
    art, index, agent_spec = _resolve(top, config, store)
    fmt, source, adapter = _model_files(art, store)
    if store.exists(config.output) and not overwrite:  # before converting adapters into the store
        raise StoreError(f"An artifact named '{config.output}' already exists.",
                         "Choose another name, remove it, or pass --force / overwrite=True.")
    adapters: list[Any] = []  # export.adapters.BundledAdapter
    if config.adapters:
        from llmlab.export.adapters import resolve_adapters

        adapters = resolve_adapters(art, config.adapters, store, step=step, progress=progress)
    if index is not None and fmt != "gguf":
        raise ConfigError(f"An index or agent is bundled only with a GGUF model; '{art.name}' is a {art.kind} "
                          "artifact.", "Quantize or convert the model to GGUF first (`llmlab quantize`).")
    spec: dict[str, Any] = {"name": config.output, "source": top.name, "source_hash": top.content_hash,
                            "model": {"format": fmt}}
    parity = None
    emit(progress, "log", message=f"exporting {art.name} ({fmt})")
    with store.write(config.output, "bundle", overwrite=overwrite) as w:
        mdir = w.path / "model"
        mdir.mkdir()
        if fmt == "gguf":
            shutil.copyfile(source, mdir / source.name)
            spec["model"]["file"] = f"model/{source.name}"
            if adapter is not None:
                shutil.copyfile(adapter, mdir / "adapter.gguf")
                spec["model"]["adapter"] = "model/adapter.gguf"
            if adapters:
                from llmlab.export.adapters import write_adapters

                spec["model"].update(write_adapters(w.path, art, adapters))
            text, reason = gguf_modelfile(mdir / source.name, adapter)  # Ollama: the base (one ADAPTER per model)
            (w.path / "Modelfile").write_text(text)
            spec["ollama"] = {"modelfile": "Modelfile", "template_translated": reason is None, "reason": reason}
        else:
            shutil.copytree(source, mdir, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("manifest.json", "metrics.json", "training_log.jsonl"))
            spec["model"]["folder"] = "model"
            spec["vllm"] = (f"vllm serve ./model --served-model-name {config.output} --host 127.0.0.1 --port 8000 "
                            "--api-key $LLMLAB_API_KEY")
        (w.path / "server.json").write_text(json.dumps(
            {"port": 8000, "max_tokens": config.max_tokens, "max_queue": config.max_queue}, indent=2) + "\n")
        if index is not None:
            from llmlab.export.agent import add_index

            spec.update(add_index(w.path, index, store, progress))
        if agent_spec is not None:
            (w.path / AGENT_SPEC).write_text(yaml.safe_dump(agent_spec, sort_keys=False))
            spec["agent"] = {"name": top.name, "spec": AGENT_SPEC}
        (w.path / "requirements.lock").write_text(lock_text(fmt, rag=index is not None, agent=agent_spec is not None))
        (w.path / "Dockerfile").write_text(dockerfile(fmt))
        (w.path / "recipe.yaml").write_text(yaml.safe_dump(
            rebuild_recipe(top, store, config, [a.artifact for a in adapters]), sort_keys=False))
        (w.path / BUNDLE_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
        if config.parity and fmt == "gguf":
            from llmlab.export.parity import check

            emit(progress, "log", message="parity check: bundle server vs artifact")
            parity = check(w.path, art, store=store, progress=progress, verify=False,  # hashed right after
                           adapters={a.name: a.artifact for a in adapters})
        (w.path / "README.md").write_text(model_card(spec, art, store, parity))
        w.parents = [Parent(name=art.name, content_hash=art.content_hash, role="model")]
        if index is not None:
            w.parents.append(Parent(name=index.name, content_hash=index.content_hash, role="index"))
        if agent_spec is not None:
            w.parents.append(Parent(name=top.name, content_hash=top.content_hash, role="agent"))
        w.parents += [Parent(name=a.artifact.name, content_hash=a.artifact.content_hash, role="adapter")
                      for a in adapters]
        w.step = step
        w.info = {"format": fmt, "source": top.name, "model": spec["model"],
                  **{k: spec[k] for k in ("index", "embedder", "agent") if k in spec}}
        w.metrics = {**({"parity": parity} if parity else {}), **{"source": art.metrics}}
    return _finish(store.get(config.output), config, store, progress)


def _resolve(top: Artifact, config: ExportConfig, store: Store) -> tuple[Artifact, Artifact | None,
                                                                       dict[str, Any] | None]:
    """(model artifact, index artifact or None, agent spec or None) of what ``config.model`` names."""
    if top.kind != "agent":
        return top, (_index(config.index, store) if config.index else None), None
    from llmlab.agents.spec import load_spec

    spec = load_spec(top.name, store=store)
    if spec.model.endpoint or not spec.model.artifact or not store.exists(spec.model.artifact):
        raise ConfigError(f"The agent '{top.name}' uses {spec.model.label}, not a model artifact in the store; "
                          "a bundle needs the model itself.",
                          "Make the agent with a GGUF model from the store (`llmlab agent --model NAME-q4_k_m`).")
    if config.index and config.index != spec.retriever.index:
        raise ConfigError(f"The agent '{top.name}' searches '{spec.retriever.index}', not '{config.index}'.",
                          "Leave out --index when exporting an agent, or make an agent with that index.")
    if not spec.retriever.index:
        raise ConfigError(f"The agent '{top.name}' names no index.", "Make it with `llmlab agent --index NAME`.")
    return store.get(spec.model.artifact), _index(spec.retriever.index, store), spec.model_dump(mode="json")


def _index(name: str, store: Store) -> Artifact:
    from llmlab.rag.index import index_artifact

    art = index_artifact(store, name)
    if art.manifest.info.get("chroma", {}).get("mode") == "server":
        raise ConfigError(f"The index '{name}' lives on a Chroma server, so it cannot travel in a bundle.",
                          "Build it on disk (without --chroma-url) and export again.")
    return art


def _finish(bundle: Artifact, config: ExportConfig, store: Store, progress: Reporter | None) -> Artifact:
    if config.tarball:
        tarball(bundle.path, store.root / f"{config.output}.tar.gz")
    if config.registry:
        from llmlab.export.registry import register

        version = register(bundle, store)
        store.record_metrics(bundle.name, {"registered": {k: version[k] for k in ("uri", "run_id")}})
        emit(progress, "log", message=f"registered {version['uri']}")
    emit(progress, "log", message=f"wrote bundle {config.output}")
    return store.get(bundle.name)


def _from_registry(config: ExportConfig, store: Store, *, overwrite: bool, step: StepRecord | None,
                   progress: Reporter | None) -> Artifact:
    """A registered bundle version, fetched and hash-checked, as a bundle artifact in the store."""
    import tempfile

    from llmlab.export.registry import fetch
    from llmlab.store import MANIFEST, METRICS, Manifest

    if store.exists(config.output) and not overwrite:
        raise StoreError(f"An artifact named '{config.output}' already exists.",
                         "Choose another name, remove it, or pass --force / overwrite=True.")
    with tempfile.TemporaryDirectory(prefix="llmlab-registry-") as tmp:
        folder = fetch(config.model, Path(tmp) / "bundle", store)
        registered = Manifest.model_validate_json((folder / MANIFEST).read_text())
        with store.write(config.output, "bundle", overwrite=overwrite) as w:
            for rel in registered.files:
                (w.path / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / rel, w.path / rel)
            w.parents = registered.parents
            w.step = step
            w.info = {**registered.info, "registered": config.model, "registered_hash": registered.content_hash}
            if (folder / METRICS).is_file():
                w.metrics = json.loads((folder / METRICS).read_text())
    return _finish(store.get(config.output), config.model_copy(update={"registry": False}), store, progress)


def gguf_modelfile(gguf_file: Path, adapter: Path | None = None) -> tuple[str, str | None]:
    """(Ollama Modelfile text for a GGUF, None) or (one without TEMPLATE, why it was not translated)."""
    from llmlab.export.ollama import modelfile
    from llmlab.runtime import load

    with load(gguf_file) as m:
        # only a BOS that llama.cpp adds itself is left out of the template (SmolLM2's BOS is
        # <|im_start|>, which its template writes and llama.cpp does not add)
        bos = m.token_text(m.bos_id) if m.bos_id is not None and m.adds_bos else ""
        eos = m.token_text(m.eos_id) if m.eos_id is not None else None
        render = None
        if m.chat_template:
            def render(msgs: Any, gen: bool) -> str:
                return m.apply_chat_template(msgs, add_generation_prompt=gen)
        return modelfile(f"model/{gguf_file.name}", render, bos or "",
                         adapter="model/adapter.gguf" if adapter else None, eos=eos)


def tarball(folder: Path, out: Path) -> Path:
    """``folder`` as ``out`` (.tar.gz, top directory = the folder's name), written atomically."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
