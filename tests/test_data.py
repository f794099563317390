"""Data loaders on small local files: formats, folders, and the errors a user sees."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llmlab import data, settings
from llmlab.errors import ConfigError, NotFoundError


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_txt_gives_one_record_per_paragraph(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("First line.\nsame paragraph.\n\n\nSecond one.\n")
    assert data.load_records(f) == [{"text": "First line.\nsame paragraph."}, {"text": "Second one."}]


def test_jsonl_and_gzip(tmp_path: Path) -> None:
    rows = [{"text": "a"}, {"text": "b"}]
    assert data.load_records(_jsonl(tmp_path / "r.jsonl", rows)) == rows
    gz = tmp_path / "r.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    assert data.load_texts(gz) == ["a", "b"]


def test_malformed_jsonl_line_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(ConfigError, match="line 3"):
        data.load_records(f)


def test_json_list_and_wrapped_list(tmp_path: Path) -> None:
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}]
    (tmp_path / "l.json").write_text(json.dumps(rows))
    (tmp_path / "w.json").write_text(json.dumps({"version": 1, "data": rows}))
    assert data.load_records(tmp_path / "l.json") == rows == data.load_records(tmp_path / "w.json")
    assert data.record_messages(rows[0]) == [{"role": "user", "content": "Say hi"},
                                             {"role": "assistant", "content": "hi"}]
    assert data.load_texts(tmp_path / "l.json") == ["Say hi\n\nhi"]


def test_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is not installed")
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    f = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["x", "y"], "n": [1, 2]}).to_parquet(f)
    assert data.load_records(f) == [{"text": "x", "n": 1}, {"text": "y", "n": 2}]


def test_folder_reads_supported_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("from b")
    _jsonl(tmp_path / "a.jsonl", [{"content": "from a"}])
    (tmp_path / "notes.md").write_text("ignored")
    assert data.load_texts(tmp_path) == ["from a", "from b"]
    assert data.load_texts(tmp_path, limit=1) == ["from a"]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(NotFoundError, match="nope.jsonl"):
        data.load_records(missing)


def test_empty_folder_and_unknown_fields(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        data.load_records(tmp_path)
    with pytest.raises(ConfigError, match="fields: a, b"):
        data.record_text({"a": 1, "b": 2})
    with pytest.raises(ConfigError, match="no field 'x'"):
        data.record_text({"a": 1}, "x")


def test_record_messages_formats() -> None:
    assert data.record_messages({"question": "Q", "answer": ["A", "B"]})[1]["content"] == "A"
    msgs = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert data.record_messages({"messages": msgs}) == msgs


def test_public_sets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMLAB_DATA", str(tmp_path))
    (tmp_path / "squad").mkdir()
    _jsonl(tmp_path / "squad" / "corpus.jsonl", [{"_id": "1", "title": "T", "text": "P"}])
    assert data.load_public("squad-corpus")[0]["text"] == "P"
    with pytest.raises(NotFoundError, match="LLMLAB_DATA"):
        data.load_public("tinystories")
    with pytest.raises(ConfigError):
        data.public_path("no-such-set")


@pytest.mark.skipif(settings.data_dir() is None, reason="../shared/data (LLMLAB_DATA) is not beside this checkout")
def test_real_public_sets_load() -> None:
    """The shared public data sets read through LLMLAB_DATA: the real files, as benchmarks use them."""
    assert len(data.load_public("scifact-corpus")) == 5183  # gzipped JSONL
    alpaca = data.load_public("alpaca")
    assert len(alpaca) == 999 and data.record_messages(alpaca[0])[-1]["role"] == "assistant"
    squad = data.load_public("squad-questions", limit=5)
    assert len(squad) == 5 and {"question", "answers", "gold_passage_id"} <= set(squad[0])
    stories = data.load_texts(data.public_path("tinystories-valid"), limit=10)
    assert len(stories) == 10 and all(s.strip() for s in stories)
