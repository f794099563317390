"""Ingest and index: formats, skipped files, chunking, manifests, incremental and atomic rebuilds,
a missing embedder, the `index` step, and Chroma's client/server mode with a real `chroma run`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmlab.errors import ConfigError, NotFoundError, StoreError
from llmlab.rag import ingest
from llmlab.rag.index import IndexConfig, build_index
from llmlab.serve.process import free_port
from llmlab.store import Store

DOCS = {
    "bodo.txt": "Bodo lives in Kelmar. Bodo works as a baker and keeps three goats.",
    "notes/rivers.md": "# Rivers of Tavia\n\nThe river Ostra flows through Kelmar and Dunmere.",
    "page.html": "<html><head><title>Cheese guide</title><script>var x = 'drop me';</script></head>"
                 "<body><h1>Cheese</h1><p>Dunmere is famous for blue cheese.</p></body></html>",
    "records.jsonl": json.dumps({"_id": "r1", "title": "Mount Vel", "text": "Mount Vel is the highest peak.",
                                 "year": 2021}) + "\n",
}


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` in Helvetica (hand-written objects, no PDF library needed)."""
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, o in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)


def make_folder(root: Path) -> Path:
    for rel, text in DOCS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "report.pdf").write_bytes(tiny_pdf("The Kelmar mill grinds barley every Tuesday."))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "binary.txt").write_bytes(b"text\x00with NUL bytes")
    (root / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("docs"))


def test_read_folder_reads_every_format_and_reports_skipped_files(folder: Path) -> None:
    docs, skipped = ingest.read_folder(folder)
    by_source = {d.source: d for d in docs}
    assert set(by_source) == {"bodo.txt", "notes/rivers.md", "page.html", "records.jsonl", "report.pdf"}
    assert by_source["notes/rivers.md"].title == "Rivers of Tavia"
    assert by_source["page.html"].title == "Cheese guide"
    assert "drop me" not in by_source["page.html"].text and "blue cheese" in by_source["page.html"].text
    assert "barley" in by_source["report.pdf"].text
    rec = by_source["records.jsonl"]
    assert (rec.doc_id, rec.title, rec.metadata["year"]) == ("r1", "Mount Vel", 2021)
    reasons = {s["file"]: s["reason"] for s in skipped}
    assert set(reasons) == {"broken.pdf", "image.png", "binary.txt", "latin1.md"}
    assert "unsupported" in reasons["image.png"] and "binary" in reasons["binary.txt"]
    assert "UTF-8" in reasons["latin1.md"] and "PDF" in reasons["broken.pdf"]


def test_empty_missing_and_unreadable_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="is empty"):
        ingest.read_folder(tmp_path)
    with pytest.raises(NotFoundError, match="does not exist"):
        ingest.read_folder(tmp_path / "nope")
    (tmp_path / "a.bin").write_bytes(b"\x00\x01")
    with pytest.raises(NotFoundError, match="No readable document.*1 files skipped"):
        ingest.read_folder(tmp_path)


def test_chunking_windows_overlap_titles_and_dedup() -> None:
    words = " ".join(f"w{i}" for i in range(25))
    assert ingest.chunk_text(words, 10, 3) == [" ".join(f"w{i}" for i in range(a, min(a + 10, 25)))
                                               for a in (0, 7, 14)] + [" ".join(f"w{i}" for i in range(21, 25))]
    assert ingest.chunk_text(words, 0, 0) == [words]
    docs = [ingest.Document("a", "T", "same text here", "a.txt"), ingest.Document("b", "T", "same text here", "b.txt"),
            ingest.Document("c", "U", "same text here", "c.txt")]
    chunks = ingest.chunk_documents(docs, size=10, overlap=2)
    assert [c.doc_id for c in chunks] == ["a", "c"]  # b is a duplicate of a; c differs by its title
    assert chunks[0].indexed_text == "T\nsame text here"
    with pytest.raises(ConfigError, match="overlap"):
        ingest.chunk_documents(docs, size=5, overlap=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("home"))
    build_index(IndexConfig(name="docs", source=str(folder), chunk_size=8, chunk_overlap=2), store=store)
    return store


def test_index_manifest_records_settings_embedder_and_corpus(built: Store, folder: Path) -> None:
    art = built.get("docs")
    info = art.manifest.info
    assert art.kind == "index"
    assert info["embedder"]["name"] == "all-MiniLM-L6-v2" and len(info["embedder"]["sha256"]) == 64
    assert info["settings"]["chunking"] == [8, 2] and info["settings"]["chunk_unit"] == "words"
    assert set(info["corpus"]["files"]) == {"bodo.txt", "notes/rivers.md", "page.html", "records.jsonl", "report.pdf"}
    assert info["corpus"]["files"]["bodo.txt"] == ingest.sha256_bytes((folder / "bodo.txt").read_bytes())
    assert len(info["skipped"]) == 4 and art.metrics["skipped_files"] == 4
    assert {"chunks.jsonl", "vectors.npy"} <= set(art.manifest.files)
    assert any(f.startswith("chroma/") for f in art.manifest.files)
    assert any(f.startswith("bm25/") for f in art.manifest.files)
    assert art.metrics["chunks"] > art.metrics["documents"] == 5  # chunk_size 8 splits the longer documents


def test_incremental_rebuild_embeds_only_changed_files_and_is_atomic(tmp_path: Path, monkeypatch) -> None:
    from llmlab.rag import index as index_mod
    from llmlab.rag.search import Searcher

    src = make_folder(tmp_path / "docs")
    store = Store(tmp_path / "home")
    cfg = IndexConfig(name="docs", source=str(src), chunk_size=8, chunk_overlap=2)
    first = build_index(cfg, store=store)
    with pytest.raises(StoreError, match="already exists"):
        build_index(cfg, store=store)
    (src / "bodo.txt").write_text("Bodo moved to Dunmere last spring.")  # changed: 1 chunk
    (src / "new.txt").write_text("Kira sells lanterns.")  # added: 1 chunk
    (src / "page.html").unlink()  # removed
    before = store.get("docs").content_hash
    seen: list[str] = []
    real_read = ingest.read_file
    monkeypatch.setattr(index_mod.ingest, "read_file", lambda p, rel: seen.append(rel) or real_read(p, rel))
    second = build_index(cfg, store=store, overwrite=True)
    unchanged_skips = ["binary.txt", "broken.pdf", "image.png", "latin1.md"]  # skipped files are read again
    assert sorted(seen) == sorted(["bodo.txt", "new.txt", *unchanged_skips])
    assert second["embedded"] == 2 and second["reused"] == first["chunks"] - 2 - 1
    s = Searcher.open("docs", store=store)
    top = s.search("Where did Bodo move?", k=1, mode="bm25")[0]
    assert "Dunmere last spring" in top.text
    assert not any(h.doc_id == "page.html" for h in s.search("blue cheese", k=20, mode="dense"))
    s.close()
    assert store.get("docs").content_hash != before and store.verify("docs") == []  # searching changed nothing

    # A failure in the middle of an update leaves the previous index whole, and no leftovers.
    after = store.get("docs").content_hash
    (src / "bodo.txt").write_text("Bodo moved again.")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(index_mod, "fill_collection", boom)
    with pytest.raises(RuntimeError):
        build_index(cfg, store=store, overwrite=True)
    assert store.get("docs").content_hash == after and store.verify("docs") == []
    assert not any((store.root / ".tmp").iterdir())


def test_missing_embedder_and_bad_source_fail_before_writing(tmp_path: Path, folder: Path) -> None:
    store = Store(tmp_path / "home")
    with pytest.raises(NotFoundError, match="embedding model '/no/such/model' is not there"):
        build_index(IndexConfig(name="x", source=str(folder), embedder="/no/such/model"), store=store)
    with pytest.raises(NotFoundError, match="neither 'world', a folder nor a file"):
        build_index(IndexConfig(name="x", source=str(tmp_path / "missing")), store=store)
    with pytest.raises(NotFoundError, match="No artifact in the store has a demo world"):
        build_index(IndexConfig(name="x", source="world"), store=store)
    assert not store.exists("x")


def test_index_step_on_the_demo_world_via_a_recipe(tmp_path: Path) -> None:
    from llmlab import recipes, world

    store = Store(tmp_path / "home")
    w = world.generate(0, "small")
    with store.write("base", "base") as wr:
        w.save(wr.path / "world")
    recipe = recipes.loads("name: r\nsteps:\n  - index: {name: world-index, source: world}\n")
    [result] = recipes.run(recipe, store=store, track=False)
    art = store.get("world-index")
    assert result.status == "done" and art.metrics["documents"] == len(w.documents)
    assert [p.name for p in art.manifest.parents] == ["base"]
    assert recipes.run(recipe, store=store, track=False)[0].status == "skipped"


def test_client_server_mode_with_a_real_chroma_server(tmp_path: Path, folder: Path) -> None:
    from llmlab.rag.index import chroma_client
    from llmlab.rag.search import Searcher

    chroma = Path(sys.executable).with_name("chroma")
    if not chroma.exists():
        pytest.skip("the chroma CLI is not installed")
    port = free_port()
    server = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                client = chroma_client(url)
                break
            except NotFoundError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        store = Store(tmp_path / "home")
        cfg = IndexConfig(name="remote", source=str(folder), chroma_url=url)
        build_index(cfg, store=store)
        art = store.get("remote")
        first = art.manifest.info["chroma"]["collection"]
        assert art.manifest.info["chroma"]["mode"] == "server"
        assert not any(f.startswith("chroma/") for f in art.manifest.files)
        hits = Searcher.open("remote", store=store).search("Who keeps goats?", k=1, mode="dense")
        assert hits[0].doc_id == "bodo.txt"
        build_index(cfg, store=store, overwrite=True)  # a new collection; the old one is dropped afterwards
        names = [c.name if hasattr(c, "name") else c for c in client.list_collections()]
        assert store.get("remote").manifest.info["chroma"]["collection"] in names and first not in names
    finally:
        server.terminate()
        server.wait(timeout=30)
    with pytest.raises(NotFoundError, match="Cannot reach the Chroma server"):
        build_index(IndexConfig(name="r2", source=str(folder), chroma_url=url), store=Store(tmp_path / "h2"))
    shutil.rmtree(tmp_path / "server", ignore_errors=True)
