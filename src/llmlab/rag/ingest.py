"""Reading documents for an index, and cutting them into chunks.

```python
from llmlab.rag.ingest import read_folder, chunk_documents
docs, skipped = read_folder("my-docs/")          # .txt .md .html .pdf .jsonl(.gz) under a folder
chunks = chunk_documents(docs, size=160, overlap=32)
```

Formats: ``.txt`` (title: the file name), ``.md`` (title: the first ``#`` heading), ``.html`` /
``.htm`` (beautifulsoup4: ``<title>`` or the first ``<h1>``; scripts and styles dropped), ``.pdf``
(pypdf: the text of every page; title from the PDF's metadata or the file name), ``.jsonl`` (plain
or ``.gz``, one document per line with ``text`` and optional ``_id``/``id`` and ``title``; other
scalar fields become metadata you can filter on: the BEIR ``corpus.jsonl`` layout is such a file).
Files that cannot be read (binary, not UTF-8, a broken PDF, an unknown type) are skipped and
reported with a reason; a folder with no readable document is an error.

Chunks are counted in **words** (whitespace-separated), not tokens: word counts do not depend on
the embedder, so the same settings give the same chunks for BM25 and for any embedding model.
all-MiniLM-L6-v2 reads at most 256 word pieces (about 180 English words), so the default chunk of
160 words with 32 words of overlap fits it. Every chunk carries its document's title, and the
text that is embedded and BM25-indexed is ``title + "\\n" + chunk``. A chunk's id is a hash of that
text, so identical chunks (the same paragraph in two files) are stored once: deduplication.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import ConfigError, NotFoundError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl")
TEXT_KEYS = ("text", "content", "body", "passage", "document")
ID_KEYS = ("_id", "id", "doc_id")
MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass
class Document:
    doc_id: str
    title: str
    text: str
    source: str  # the file it came from, relative to the folder ("world" for the demo world)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    chunk_id: str
    doc_id: str
    title: str
    text: str
    source: str
    position: int  # index of the chunk within its document
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def indexed_text(self) -> str:
        """What is embedded and BM25-indexed: the title, then the chunk."""
        return f"{self.title}\n{self.text}" if self.title else self.text

    def to_json(self) -> dict[str, Any]:
        return {"chunk_id": self.chunk_id, "doc_id": self.doc_id, "title": self.title, "text": self.text,
                "source": self.source, "position": self.position, "metadata": self.metadata}


def file_kind(path: Path) -> str:
    """The lower-case suffix that decides how a file is read (``.gz`` looks through)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (hidden files and folders left out), sorted."""
    if not folder.is_dir():
        raise NotFoundError(f"The folder {folder} does not exist.", "Give a folder of documents or 'world'.")
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not files:
        raise NotFoundError(f"The folder {folder} is empty.",
                            f"Put documents in it ({', '.join(SUFFIXES)}, .jsonl.gz) and index again.")
    return files


def read_file(path: Path, rel: str) -> list[Document]:
    """The documents of one file; raises ValueError with the reason when it cannot be read."""
    kind = file_kind(path)
    if kind not in SUFFIXES:
        raise ValueError(f"unsupported file type '{kind or path.name}'")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"not a valid gzip file ({e})") from None
    if kind == ".pdf":
        return [_read_pdf(raw, path, rel)]
    text = _decode(raw)
    if kind == ".jsonl":
        return _read_jsonl(text, rel)
    stem = Path(rel).name.split(".")[0]
    if kind in (".html", ".htm"):
        title, body = _read_html(text)
        return [Document(rel, title or stem, body, rel, {"type": "html"})]
    if kind in (".md", ".markdown"):
        heading = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)
        return [Document(rel, heading.group(1) if heading else stem, text, rel, {"type": "md"})]
    return [Document(rel, stem, text, rel, {"type": "txt"})]


def _decode(raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise ValueError("binary content (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None


def _read_html(text: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and soup.find("h1"):
        title = soup.find("h1").get_text(" ", strip=True)
    if soup.title:
        soup.title.decompose()
    return title, soup.get_text("\n", strip=True)


def _read_pdf(raw: bytes, path: Path, rel: str) -> Document:
    import io

    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            raise ValueError("an encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = (reader.metadata.title if reader.metadata and reader.metadata.title else "") or path.stem
    except PdfReadError as e:
        raise ValueError(f"not a readable PDF ({e})") from None
    text = "\n".join(pages).strip()
    return Document(rel, str(title), text, rel, {"type": "pdf", "pages": len(pages)})


def _read_jsonl(text: str, rel: str) -> list[Document]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n} is not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"line {n} is not a JSON object")
        body = next((rec[k] for k in TEXT_KEYS if isinstance(rec.get(k), str)), None)
        if body is None:
            raise ValueError(f"line {n} has no text field ({'/'.join(TEXT_KEYS)})")
        doc_id = str(next((rec[k] for k in ID_KEYS if rec.get(k) is not None), f"{rel}#{n}"))
        meta = {k: v for k, v in rec.items() if k not in (*TEXT_KEYS, *ID_KEYS, "title")
                and isinstance(v, (str, int, float, bool))}
        docs.append(Document(doc_id, str(rec.get("title") or ""), body, rel, {"type": "jsonl", **meta}))
    return docs


def read_folder(folder: str | Path) -> tuple[list[Document], list[dict[str, str]]]:
    """Every readable document under ``folder``, and the skipped files with their reasons."""
    root = Path(folder).expanduser()
    docs: list[Document] = []
    skipped: list[dict[str, str]] = []
    for p in list_files(root):
        rel = p.relative_to(root).as_posix()
        try:
            found = read_file(p, rel)
        except (ValueError, OSError) as e:
            skipped.append({"file": rel, "reason": str(e)})
            continue
        found = [d for d in found if d.text.strip()]
        if not found:
            skipped.append({"file": rel, "reason": "no text"})
        docs += found
    if not docs:
        raise NotFoundError(f"No readable document in {root} ({len(skipped)} files skipped: "
                            f"{'; '.join(s['file'] + ': ' + s['reason'] for s in skipped[:3])}).",
                            f"Supported: {', '.join(SUFFIXES)} (and .jsonl.gz).")
    return docs, skipped


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Windows of ``size`` words that overlap by ``overlap`` words (size 0: the whole text)."""
    words = text.split()
    if size <= 0 or len(words) <= size:
        return [" ".join(words)] if words else []
    step = size - overlap
    out = []
    for start in range(0, len(words), step):
        out.append(" ".join(words[start:start + size]))
        if start + size >= len(words):
            break
    return out


def check_chunking(size: int, overlap: int) -> None:
    if size < 0 or overlap < 0 or (size and overlap >= size):
        raise ConfigError(f"Chunk overlap {overlap} must be smaller than the chunk size {size} (both >= 0).",
                          "For example chunk_size=160, chunk_overlap=32 (words); chunk_size=0 keeps documents whole.")


def chunk_documents(docs: list[Document], *, size: int, overlap: int) -> list[Chunk]:
    """The chunks of every document, titles kept, duplicates (same title and text) kept once."""
    check_chunking(size, overlap)
    seen: set[str] = set()
    out = []
    for d in docs:
        for i, piece in enumerate(chunk_text(d.text, size, overlap)):
            chunk_id = sha256_bytes(f"{d.title}\n{piece}".encode())[:24]
            if chunk_id in seen:
                continue
            seen.add(chunk_id)
            meta = {**d.metadata, "doc_id": d.doc_id, "title": d.title, "source": d.source, "position": i}
            out.append(Chunk(chunk_id, d.doc_id, d.title, piece, d.source, i, meta))
    return out
