"""The store: atomic writes, manifests, hashes, lineage, names, verify, rm, leftovers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmlab.errors import ConfigError, NotFoundError, StoreError
from llmlab.store import Parent, Store, validate_name


def _write(store: Store, name: str, kind: str = "base", parents: list[Parent] | None = None, text: str = "w"):
    with store.write(name, kind) as w:
        (w.path / "weights.txt").write_text(text)
        (w.path / "sub").mkdir()
        (w.path / "sub" / "config.json").write_text("{}")
        w.parents = parents or []
        w.info["note"] = "test"
    return store.get(name)


def test_write_creates_manifest_with_hashes(tmp_path):
    store = Store(tmp_path)
    art = _write(store, "a")
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["kind"] == "base" and m["name"] == "a"
    assert set(m["files"]) == {"weights.txt", "sub/config.json"}
    assert len(m["content_hash"]) == 64 and m["created"]
    assert "pydantic" not in m["versions"] and "llmlab" in m["versions"]
    assert store.verify("a") == []
    assert not any((tmp_path / ".tmp").iterdir())


def test_same_content_same_hash_metrics_do_not_change_identity(tmp_path):
    store = Store(tmp_path)
    a, b = _write(store, "a"), _write(store, "b")
    assert a.content_hash == b.content_hash
    store.record_metrics("a", {"ppl": 12.5})
    store.record_metrics("a", {"accuracy": 0.5})
    assert store.get("a").metrics == {"ppl": 12.5, "accuracy": 0.5}
    assert store.get("a").content_hash == b.content_hash and store.verify("a") == []


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(RuntimeError):
        with store.write("broken", "base") as w:
            (w.path / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("boom")
    assert not store.exists("broken") and not (tmp_path / "broken").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_empty_write_is_refused(tmp_path):
    with pytest.raises(StoreError, match="Nothing was written"):
        with Store(tmp_path).write("empty", "base"):
            pass


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "", "a" * 200, "x..y", "name."])
def test_bad_names_are_refused(tmp_path, bad):
    with pytest.raises(ConfigError, match="not a valid artifact name"):
        Store(tmp_path).get(bad)
    with pytest.raises(ConfigError):
        validate_name(bad)
    assert not (tmp_path.parent / "x").exists()


def test_unknown_kind_and_existing_name(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ConfigError, match="Unknown artifact kind"):
        with store.write("a", "weird"):
            pass
    _write(store, "a")
    with pytest.raises(StoreError, match="already exists"):
        with store.write("a", "base"):
            pass
    with store.write("a", "full", overwrite=True) as w:
        (w.path / "new.txt").write_text("2")
    assert store.get("a").kind == "full" and list(store.get("a").manifest.files) == ["new.txt"]


def test_missing_and_corrupted_manifest(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(NotFoundError, match="No artifact named 'nope'"):
        store.get("nope")
    art = _write(store, "a")
    (art.path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest of 'a'.*corrupted"):
        store.get("a")
    assert store.list() == [] and "a" in store.problems()
    (art.path / "manifest.json").write_text(json.dumps({"name": "a", "kind": "base", "bogus": 1}))
    with pytest.raises(StoreError, match="bogus"):
        store.get("a")


def test_verify_names_tampered_missing_and_extra_files(tmp_path):
    store = Store(tmp_path)
    art = _write(store, "a")
    (art.path / "weights.txt").write_text("changed")
    (art.path / "sub" / "config.json").unlink()
    (art.path / "extra.bin").write_bytes(b"1")
    problems = store.verify("a")
    assert "tampered file: weights.txt (sha256 differs from the manifest)" in problems
    assert "missing file: sub/config.json" in problems and "unexpected file: extra.bin" in problems


def test_verify_recomputes_the_content_hash(tmp_path):
    from llmlab.store import sha256_file

    store = Store(tmp_path)
    art = _write(store, "a")
    (art.path / "weights.txt").write_text("changed")
    m = json.loads((art.path / "manifest.json").read_text())
    m["files"]["weights.txt"] = sha256_file(art.path / "weights.txt")  # the sha256 edited to match
    (art.path / "manifest.json").write_text(json.dumps(m))
    assert store.verify("a") == ["content hash differs from the manifest's files (the manifest was edited)"]


def test_verify_all_reports_unreadable_folders_and_skips_hidden_ones(tmp_path):
    store = Store(tmp_path)
    _write(store, "a")
    _write(store, "b")
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    for hidden in (".jobs", ".cache", ".mlflow", ".serve"):
        (tmp_path / hidden).mkdir(exist_ok=True)
    (tmp_path / "leaderboard.md").write_text("x")
    found = store.verify_all()
    assert list(found) == ["a", "b", "empty"] and found["a"] == []
    assert found["b"][0].startswith("unreadable: The manifest of 'b'") and "corrupted" in found["b"][0]
    assert found["empty"][0].startswith("unreadable: no manifest.json")


def test_lineage_and_rm_protects_parents(tmp_path):
    store = Store(tmp_path)
    base = _write(store, "base")
    child = _write(store, "child", "adapter", [Parent(name="base", content_hash=base.content_hash, role="base")])
    _write(store, "grandchild", "merged", [Parent(name="child", content_hash=child.content_hash, weight=0.5)])
    tree = store.lineage("grandchild")
    assert tree["parents"][0]["name"] == "child"
    assert tree["parents"][0]["parents"][0] == {
        "name": "base", "role": "base", "kind": "base", "content_hash": base.content_hash[:12], "parents": []}
    with pytest.raises(StoreError, match="parent of child"):
        store.rm("base")
    store.rm("base", force=True)
    assert store.lineage("grandchild")["parents"][0]["parents"][0]["missing"] is True
    assert [a.name for a in store.children("child")] == ["grandchild"]


def test_rebuilt_parent_is_flagged_in_lineage(tmp_path):
    store = Store(tmp_path)
    base = _write(store, "base")
    _write(store, "child", "adapter", [Parent(name="base", content_hash=base.content_hash)])
    with store.write("base", "base", overwrite=True) as w:
        (w.path / "weights.txt").write_text("retrained")
    assert store.lineage("child")["parents"][0]["changed_since"] is True


def test_concurrent_writer_of_same_name_is_refused(tmp_path):
    store = Store(tmp_path)
    with store.write("a", "base") as w:
        (w.path / "f").write_text("1")
        with pytest.raises(StoreError, match=f"being written by another job \\(pid {os.getpid()}\\)"):
            with Store(tmp_path).write("a", "base", overwrite=True):
                pass
    assert store.verify("a") == []


def test_leftovers_of_dead_writers_are_cleaned(tmp_path):
    store = Store(tmp_path)
    dead = tmp_path / ".tmp" / "x.999999999.abcd1234"
    dead.mkdir(parents=True)
    (dead / "half").write_text("1")
    alive = tmp_path / ".tmp" / f"y.{os.getpid()}.abcd1234"
    alive.mkdir()
    assert Store(tmp_path).clean_leftovers() == [] and not dead.exists() and alive.exists()
    assert store.list() == []


def test_leftover_of_a_killed_but_unreaped_writer_is_cleaned(tmp_path):
    """A writer killed by SIGKILL stays a zombie until its parent reaps it: that counts as gone."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.2)  # dead, not reaped: os.kill(pid, 0) would still succeed
        left = tmp_path / ".tmp" / f"x.{proc.pid}.abcd1234"
        left.mkdir(parents=True)
        Store(tmp_path)
        assert not left.exists()
    finally:
        proc.wait()


def test_store_hashes_match_hashlib_in_parallel_and_for_empty_files(tmp_path: Path) -> None:
    """The store's finish (hashing in threads through mmap, beside fsync) gives the plain sha256 of each file."""
    import hashlib

    from llmlab.store import hash_files

    blobs = {"empty.txt": b"", "small.json": b"{}", "sub/big.bin": os.urandom(3 * 2**20 + 7)}
    store = Store(tmp_path / "s")
    with store.write("hashed", "full") as w:
        for rel, data in blobs.items():
            (w.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (w.path / rel).write_bytes(data)
    art = store.get("hashed")
    assert art.manifest.files == {rel: hashlib.sha256(d).hexdigest() for rel, d in blobs.items()}
    assert hash_files(art.path) == art.manifest.files and store.verify("hashed") == []
    (art.path / "sub" / "big.bin").write_bytes(b"changed")
    assert store.verify("hashed") == ["tampered file: sub/big.bin (sha256 differs from the manifest)"]
