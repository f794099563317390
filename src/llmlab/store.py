"""The model store: one folder per artifact, each with a ``manifest.json``.

```
models/
  demo/                 an artifact: its files plus manifest.json (hashed) and metrics.json (not)
  demo-q4_k_m/
  .tmp/                 artifacts being written (renamed into place when complete)
  .locks/               one lock file per artifact name being written
```

A write happens in ``.tmp/`` and is renamed into place only after every file is hashed and the
manifest written, so a killed job never leaves a folder that looks finished; the next ``Store``
removes leftovers whose writer is gone. Metrics measured later go to ``metrics.json`` beside the
manifest, outside the hashed content, so scoring an artifact never changes its identity.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmlab import settings
from llmlab.errors import ConfigError, NotFoundError, StoreError
from llmlab.formats.gguf import read_header
from llmlab.formats.hf import COPY_SUFFIXES, check_hf_folder

Kind = Literal[
    "base", "full", "adapter", "merged", "distilled", "gguf", "gguf-adapter", "imatrix",
    "rtn", "gptq", "awq", "index", "agent", "bundle",
]
KINDS: tuple[str, ...] = Kind.__args__  # type: ignore[attr-defined]
# Kind groups: the one place that says which kinds a station takes or an engine runs.
MODEL_KINDS = ("base", "full", "merged", "distilled")  # complete Hugging Face folders: tunable, quantizable
HF_KINDS = (*MODEL_KINDS, "adapter")  # loaded by transformers (an adapter merged into its base): merge inputs
GGUF_KINDS = ("gguf", "gguf-adapter")  # run by llama.cpp
QUANTIZED_KINDS = ("gptq", "awq", "rtn")  # run by GPTQModel
VARIANT_KINDS = ("gguf", *QUANTIZED_KINDS)  # what the Quantize station makes of a model
RUNNABLE_KINDS = (*HF_KINDS, *GGUF_KINDS, *QUANTIZED_KINDS)  # what llmlab.runtime.load can run and chat with

MANIFEST = "manifest.json"
METRICS = "metrics.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Libraries whose versions go into every manifest (when installed).
TRACKED_LIBRARIES = (
    "llmlab", "torch", "transformers", "tokenizers", "safetensors", "peft", "trl", "mergekit",
    "llama_cpp_python", "gguf", "gptqmodel", "chromadb", "sentence_transformers",
)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe artifact name, else raise a ConfigError."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".") or ".." in name:
        raise ConfigError(
            f"'{name}' is not a valid artifact name.",
            "Use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit, "
            "no '..' and no '/').",
        )
    return name


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str]:
    """Installed versions of the libraries that matter for reproducing an artifact."""
    from importlib import metadata

    out = {}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n.replace("_", "-"))
    return out


def sha256_file(path: Path) -> str:
    """sha256 of a file, read through mmap: no copy out of the page cache, and hashlib releases the GIL."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:  # mmap refuses empty files
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                h.update(m)
    return h.hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest and metrics, by relative path
    (several files are hashed in parallel threads)."""
    paths = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, METRICS):
            paths[rel] = p
    if len(paths) < 2:
        return {rel: sha256_file(p) for rel, p in paths.items()}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1, 8)) as pool:
        return dict(zip(paths, pool.map(sha256_file, paths.values())))


def content_hash(files: dict[str, str]) -> str:
    """One hash for an artifact's content: over the sorted (path, sha256) pairs."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]}\n".encode())
    return h.hexdigest()


class Parent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    content_hash: str
    role: str | None = None  # e.g. "base", "reference", "teacher"
    weight: float | None = None  # merge weight, when there is one


class StepRecord(BaseModel):
    """The recipe step that made an artifact, with its resolved config."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    config: dict[str, Any]
    config_hash: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = 1
    name: str
    kind: Kind
    parents: list[Parent] = Field(default_factory=list)
    step: StepRecord | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    content_hash: str = ""
    created: str = ""
    info: dict[str, Any] = Field(default_factory=dict)  # kind-specific facts: architecture, params...


class Artifact:
    """A finished artifact folder in the store."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def content_hash(self) -> str:
        return self.manifest.content_hash

    @property
    def size_bytes(self) -> int:
        return sum((self.path / rel).stat().st_size for rel in self.manifest.files)

    @property
    def metrics(self) -> dict[str, Any]:
        p = self.path / METRICS
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            return {}

    def file(self, suffix: str) -> Path:
        """The single file of this artifact whose name ends with ``suffix`` (e.g. ``.gguf``)."""
        hits = [rel for rel in self.manifest.files if rel.endswith(suffix)]
        if len(hits) != 1:
            raise StoreError(f"Artifact '{self.name}' has {len(hits)} files ending in '{suffix}', expected one.")
        return self.path / hits[0]

    def __repr__(self) -> str:
        return f"Artifact({self.name!r}, kind={self.kind!r}, path={str(self.path)!r})"


class Writer:
    """An artifact being written: put files under ``path``; the store finishes it on exit."""

    def __init__(self, path: Path, name: str, kind: str):
        self.path = path
        self.name = name
        self.kind = kind
        self.parents: list[Parent] = []
        self.step: StepRecord | None = None
        self.info: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}


def process_alive(pid: int | None, started: float | None = None) -> bool:
    """True while process ``pid`` runs: not gone, not a zombie (killed but not yet reaped by its
    parent), and, when ``started`` is given, not another process that reused the pid."""
    import psutil

    if pid is None:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(p.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False


class Store:
    """The folder of artifacts. ``Store()`` opens ``$LLMLAB_HOME`` (default ``./models``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root else settings.home()
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / ".tmp"
        self._locks = self.root / ".locks"
        self.clean_leftovers()

    # ----- reading -----
    def path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).is_file()

    def get(self, name: str) -> Artifact:
        folder = self.path(name)
        mpath = folder / MANIFEST
        if not mpath.is_file():
            known = ", ".join(a.name for a in self.list()[:20]) or "none yet"
            raise NotFoundError(
                f"No artifact named '{name}' in the store at {self.root}.",
                f"Known artifacts: {known}. List them with `llmlab models ls`.",
            )
        try:
            manifest = Manifest.model_validate_json(mpath.read_text())
        except (ValidationError, ValueError) as e:
            raise StoreError(
                f"The manifest of '{name}' ({mpath}) is corrupted: {_first_error(e)}.",
                f"Rebuild the artifact, or remove it with `llmlab models rm {name}`.",
            ) from None
        if manifest.name != name:
            raise StoreError(f"The manifest in folder '{name}' names another artifact ('{manifest.name}').")
        return Artifact(folder, manifest)

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Every readable artifact, newest first (corrupted ones are skipped; see ``problems``)."""
        out = []
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
                continue
            try:
                art = self.get(folder.name)
            except (StoreError, ConfigError):
                continue
            if kind is None or art.kind == kind:
                out.append(art)
        return sorted(out, key=lambda a: a.manifest.created, reverse=True)

    def problems(self) -> dict[str, str]:
        """Artifact folders whose manifest cannot be read, with the reason."""
        out = {}
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            try:
                self.get(folder.name)
            except (StoreError, ConfigError, NotFoundError) as e:
                out[folder.name] = e.message
        return out

    def children(self, name: str) -> list[Artifact]:
        return [a for a in self.list() if any(p.name == name for p in a.manifest.parents)]

    def lineage(self, name: str) -> dict[str, Any]:
        """The artifact and its ancestors as a nested dict, read from manifests."""
        seen: set[str] = set()

        def node(n: str, role: str | None = None, content: str | None = None) -> dict[str, Any]:
            entry: dict[str, Any] = {"name": n, "role": role}
            if n in seen:
                return {**entry, "cycle": True}
            seen.add(n)
            try:
                art = self.get(n)
            except NotFoundError:
                return {**entry, "missing": True}
            entry.update(kind=art.kind, content_hash=art.content_hash[:12])
            if content and content != art.content_hash:
                entry["changed_since"] = True  # the parent was rebuilt after this child was made
            entry["parents"] = [node(p.name, p.role, p.content_hash) for p in art.manifest.parents]
            return entry

        return node(name)

    def verify(self, name: str) -> list[str]:
        """Recompute the files' sha256s and the content hash; return one line per problem (empty when intact)."""
        art = self.get(name)
        problems = []
        actual = hash_files(art.path)
        for rel, digest in art.manifest.files.items():
            if rel not in actual:
                problems.append(f"missing file: {rel}")
            elif actual[rel] != digest:
                problems.append(f"tampered file: {rel} (sha256 differs from the manifest)")
        problems += [f"unexpected file: {rel}" for rel in actual if rel not in art.manifest.files]
        if content_hash(art.manifest.files) != art.content_hash:
            problems.append("content hash differs from the manifest's files (the manifest was edited)")
        return problems

    def verify_all(self) -> dict[str, list[str]]:
        """``verify`` for every artifact folder (hidden folders and files at the root are not artifacts):
        its problems by name, empty when intact. A folder whose manifest is missing or unreadable is
        reported too, with what is wrong."""
        out: dict[str, list[str]] = {}
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            if not (folder / MANIFEST).is_file():
                why = f"no {MANIFEST}: not an artifact, or a damaged one (remove the folder, or rebuild it)"
                out[folder.name] = [f"unreadable: {why}"]
                continue
            try:
                out[folder.name] = self.verify(folder.name)
            except (StoreError, ConfigError, NotFoundError) as e:
                out[folder.name] = [f"unreadable: {e.message}"]
        return out

    # ----- writing -----
    @contextlib.contextmanager
    def write(self, name: str, kind: str, *, overwrite: bool = False) -> Iterator[Writer]:
        """Write an artifact atomically.

        ```python
        with store.write("demo", "base") as w:
            model.save_pretrained(w.path)
            w.parents = [...]; w.step = ...; w.info["params"] = n
        ```
        Files go to a temporary folder; on a clean exit they are hashed, the manifest is
        written and the folder renamed into place. On an exception the folder is removed.
        A second writer of the same name at the same time gets a StoreError.
        """
        validate_name(name)
        if kind not in KINDS:
            raise ConfigError(f"Unknown artifact kind '{kind}'.", f"Use one of: {', '.join(KINDS)}.")
        final = self.root / name
        if final.exists() and not overwrite:
            raise StoreError(
                f"An artifact named '{name}' already exists.",
                "Choose another name, remove it with `llmlab models rm`, or pass --force / overwrite=True.",
            )
        with self._lock(name):
            self._tmp.mkdir(exist_ok=True)
            tmp = self._tmp / f"{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            writer = Writer(tmp, name, kind)
            try:
                yield writer
                self._finish(writer, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _finish(self, w: Writer, final: Path) -> None:
        # The data files go to disk (fsync: waiting on I/O) while they are hashed (CPU); both finish before
        # the manifest is written and the folder renamed into place.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            synced = pool.submit(_fsync_tree, w.path)
            files = hash_files(w.path)
            synced.result()
        if not files:
            raise StoreError(f"Nothing was written for artifact '{w.name}'; it was not created.")
        manifest = Manifest(
            name=w.name,
            kind=w.kind,  # type: ignore[arg-type]
            parents=w.parents,
            step=w.step,
            versions=library_versions(),
            files=files,
            content_hash=content_hash(files),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            info=w.info,
        )
        write_json(w.path / MANIFEST, manifest.model_dump(mode="json"))
        if w.metrics:
            write_json(w.path / METRICS, w.metrics)  # write_json fsyncs, like the manifest
        old = None
        if final.exists():  # overwrite: move the old one aside first, then swap
            old = self._tmp / f"{w.name}.old.{uuid.uuid4().hex[:8]}"
            final.rename(old)
        w.path.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self._locks.mkdir(exist_ok=True)
        path = self._locks / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = path.read_text().strip() or "unknown"
                raise StoreError(
                    f"Artifact '{name}' is being written by another job (pid {holder}).",
                    "Wait for that job to finish or cancel it (`llmlab jobs ls`).",
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def clean_leftovers(self) -> list[str]:
        """Remove temporary folders whose writer process is gone (a killed job)."""
        removed = []
        if not self._tmp.is_dir():
            return removed
        for d in self._tmp.iterdir():
            parts = d.name.split(".")
            pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
            if pid is None or not process_alive(pid) or parts[-2] == "old":
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d.name)
        return removed

    def rm(self, name: str, *, force: bool = False) -> None:
        """Remove an artifact. Refuses when others were made from it, unless ``force``."""
        folder = self.path(name)
        if not folder.exists():
            raise NotFoundError(f"No artifact named '{name}' in the store at {self.root}.")
        kids = [a.name for a in self.children(name)] if (folder / MANIFEST).exists() else []
        if kids and not force:
            raise StoreError(
                f"'{name}' is a parent of {', '.join(kids)}.",
                "Remove those first, or pass --force (their lineage will show it as missing).",
            )
        with self._lock(name):
            self._tmp.mkdir(exist_ok=True)
            trash = self._tmp / f"{name}.old.{uuid.uuid4().hex[:8]}"
            folder.rename(trash)  # atomic: the artifact disappears at once
            shutil.rmtree(trash, ignore_errors=True)

    def record_metrics(self, name: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Merge ``metrics`` into the artifact's ``metrics.json`` (atomically) and return all."""
        art = self.get(name)
        merged = {**art.metrics, **metrics}
        write_json(art.path / METRICS, merged)
        return merged

    def add(self, source: str | Path, name: str | None = None, *, kind: str | None = None) -> Artifact:
        """Import a local Hugging Face model folder (safetensors) or a ``.gguf`` file (``llmlab models add``).

        Everything is checked before anything is copied (``formats.hf.check_hf_folder``, a GGUF
        file's header and tensor table); code files and pickles never come along."""
        source = Path(source).expanduser()
        if not source.exists():
            raise NotFoundError(f"'{source}' does not exist.", "Give the path of a model folder or a .gguf file.")
        name = validate_name(name or (source.stem if source.is_file() else source.name))
        if source.is_file():
            if source.suffix != ".gguf":
                raise ConfigError(f"'{source.name}' is neither a model folder nor a .gguf file.")
            header = read_header(source)
            kind = kind or ("gguf-adapter" if header.get("type") == "adapter" else "gguf")
            with self.write(name, kind) as w:
                shutil.copy2(source, w.path / source.name)
                w.info = {"source": str(source), **{k: v for k, v in header.items() if k != "metadata"}}
            return self.get(name)

        config = check_hf_folder(source)
        with self.write(name, kind or "base") as w:
            for p in sorted(source.iterdir()):
                if p.is_file() and p.suffix in COPY_SUFFIXES:
                    shutil.copy2(p, w.path / p.name)
            w.info = {
                "source": str(source),
                "architecture": (config.get("architectures") or [config["model_type"]])[0],
                "model_type": config["model_type"],
            }
        return self.get(name)


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "file"
        return f"{where}: {err['msg']}"
    return str(e).splitlines()[0]


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (temporary file beside it, fsync, rename): a reader sees the old
    file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (``write_text``)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

