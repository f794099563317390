"""The Merge station (llmlab.merge.step) on micro models.

One module-scoped store holds the micro model (with its micro world) as ``micro``, two copies
with perturbed weights (``micro-a``, ``micro-b``: fine-tunes of one base), two LoRA adapters on
``micro`` with random non-zero updates, one adapter on ``micro-a`` (another base), and folders
that differ from ``micro`` in architecture or tokenizer. Merges are real mergekit and peft runs;
most skip scoring (evaluate=False) except the lineage-and-scores test.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("mergekit")
import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from llmlab.errors import ConfigError, NotFoundError  # noqa: E402
from llmlab.merge.step import (MergeConfig, check_compatibility, mergekit_methods, merge,  # noqa: E402
                          methods)
from llmlab.recipes import load as load_recipe  # noqa: E402
from llmlab.store import Parent, StepRecord, Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "model.safetensors"


def _copy_model(store: Store, src: Path, name: str, kind: str, *, noise: float = 0.0, seed: int = 0,
                parent: str | None = None) -> None:
    with store.write(name, kind) as w:
        shutil.copytree(src, w.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json",
                                                                                         "metrics.json"))
        if noise:
            g = torch.Generator().manual_seed(seed)
            sd = {k: (v + noise * torch.randn(v.shape, generator=g)).contiguous()
                  for k, v in load_file(w.path / WEIGHTS).items()}
            save_file(sd, w.path / WEIGHTS, metadata={"format": "pt"})
        if parent:
            w.parents = [Parent(name=parent, content_hash=store.get(parent).content_hash, role="base")]


def lora_adapter(store: Store, base: str, name: str, seed: int, skill: str) -> None:
    """A real peft LoRA adapter on ``base`` with random (non-zero) A and B, as the Tune station writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    art = store.get(base)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(art.path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    with store.write(name, "adapter") as w:
        peft_model.save_pretrained(w.path, safe_serialization=True, save_embedding_layers=False)
        (w.path / "README.md").unlink(missing_ok=True)
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (art.path / f).is_file():
                shutil.copy2(art.path / f, w.path / f)
        w.parents = [Parent(name=base, content_hash=art.content_hash, role="base")]
        w.step = StepRecord(kind="tune", config={"data": f"world:tune:{skill}"}, config_hash="test")


@pytest.fixture(scope="module")
def mstore(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("merge") / "models")
    _copy_model(store, micro_model_dir, "micro", "base")
    _copy_model(store, micro_model_dir, "micro-a", "full", noise=0.02, seed=1, parent="micro")
    _copy_model(store, micro_model_dir, "micro-b", "full", noise=0.02, seed=2, parent="micro")
    lora_adapter(store, "micro", "lora-people", 1, "people")
    lora_adapter(store, "micro", "lora-places", 2, "places")
    lora_adapter(store, "micro-a", "lora-on-a", 3, "people")
    return store


def _weights(store: Store, name: str) -> dict[str, torch.Tensor]:
    return load_file(store.get(name).path / WEIGHTS)


def _no_leftovers(store: Store, name: str) -> None:
    assert not store.exists(name) and not (store.root / name).exists()
    assert not any((store.root / ".tmp").glob(f"{name}.*"))


def test_methods_come_from_mergekits_registry() -> None:
    from mergekit.merge_methods import registered_methods

    names = {m.spec.name for m in registered_methods()}
    assert set(mergekit_methods()) == names and len(names) >= 20
    assert {"ties", "slerp", "model_stock", "unload", "peft_cat", "peft_dare_ties", "peft_svd"} <= set(methods())
    assert mergekit_methods()["ties"].base == "required" and "density" in mergekit_methods()["ties"].per_model
    assert mergekit_methods()["slerp"].shared == {"t": None}


# method -> extra config; every one of these runs on micro-a and micro-b (and base micro where needed)
METHOD_CASES = {
    "linear": {"weights": [0.5, 0.5]},
    "slerp": {"base": "micro", "models": ["micro-a"], "parameters": {"t": 0.3}},
    "nuslerp": {"weights": [0.5, 0.5]},
    "multislerp": {"weights": [0.5, 0.5]},
    "task_arithmetic": {"base": "micro", "weights": [0.5, 0.5]},
    "ties": {"base": "micro", "densities": [0.5, 0.5]},
    "dare_ties": {"base": "micro", "densities": [0.5, 0.5]},
    "dare_linear": {"base": "micro", "densities": [0.7, 0.7]},
    "della": {"base": "micro", "densities": [0.5, 0.5]},
    "breadcrumbs": {"base": "micro", "densities": [0.9, 0.9]},
    "model_stock": {"base": "micro"},
    "karcher": {},
    "sce": {"base": "micro"},
    "nearswap": {"base": "micro", "models": ["micro-a"], "parameters": {"t": 0.001}},
    "passthrough": {"models": ["micro-a"]},
}


@pytest.mark.parametrize("method", list(METHOD_CASES))
def test_every_listed_method_merges_micro_models(mstore: Store, method: str) -> None:
    extra = dict(METHOD_CASES[method])
    models = extra.pop("models", ["micro-a", "micro-b"])
    art = merge(MergeConfig(name=f"m-{method}", method=method, models=models, evaluate=False, **extra), store=mstore)
    assert art.kind == "merged" and art.manifest.info["method"] == method
    roles = {p.name: p.role for p in art.manifest.parents}
    assert {m: "model" for m in models}.items() <= roles.items()
    if "base" in extra:
        assert roles["micro"] == "base"
    out = _weights(mstore, art.name)
    a = _weights(mstore, "micro-a")
    assert out.keys() == a.keys() and all(torch.isfinite(t).all() for t in out.values())
    exported = yaml.safe_load((art.path / "mergekit.yml").read_text())
    assert exported["merge_method"] == method
    if method == "passthrough":
        assert all(torch.equal(out[k], a[k]) for k in a)
    elif method == "linear":
        b = _weights(mstore, "micro-b")
        assert all(torch.allclose(out[k], (a[k] + b[k]) / 2, atol=1e-6) for k in a)
        assert [p.weight for p in art.manifest.parents] == [0.5, 0.5]
    else:
        assert any(not torch.equal(out[k], a[k]) for k in a)


def test_per_layer_gradient_and_exported_yaml_runs_as_is(mstore: Store) -> None:
    art = merge(MergeConfig(name="grad", method="linear", models=["micro-a", "micro-b"],
                            weights=[[1.0, 0.0], [0.0, 1.0]], evaluate=False), store=mstore)
    out, a, b = _weights(mstore, "grad"), _weights(mstore, "micro-a"), _weights(mstore, "micro-b")
    last = max(int(k.split(".")[2]) for k in a if k.startswith("model.layers."))
    # mergekit reads a gradient at t=0 for the embeddings and t=1 for the last layer
    assert torch.allclose(out["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    key = f"model.layers.{last}.self_attn.q_proj.weight"
    assert torch.allclose(out[key], b[key])
    assert art.manifest.parents[0].weight is None  # a gradient is not one weight
    # The exported YAML, fed back as a user's mergekit YAML, gives the same weights.
    again = merge(MergeConfig(name="grad-again", mergekit_yaml=str(art.path / "mergekit.yml"), evaluate=False),
                  store=mstore)
    assert all(torch.equal(_weights(mstore, "grad-again")[k], out[k]) for k in out)
    assert {p.name for p in again.manifest.parents} == {"micro-a", "micro-b"}


def test_users_mergekit_yaml_with_store_names(mstore: Store, tmp_path: Path) -> None:
    cfg = {"merge_method": "ties", "base_model": "micro", "dtype": "float32",
           "models": [{"model": "micro-a", "parameters": {"weight": 0.6, "density": 0.5}},
                      {"model": "micro-b", "parameters": {"weight": 0.4, "density": 0.5}}]}
    path = tmp_path / "ties.yml"
    path.write_text(yaml.safe_dump(cfg))
    art = merge(MergeConfig(name="from-yaml", mergekit_yaml=str(path), evaluate=False), store=mstore)
    parents = {p.name: (p.role, p.weight) for p in art.manifest.parents}
    assert parents == {"micro": ("base", None), "micro-a": ("model", 0.6), "micro-b": ("model", 0.4)}


def test_adapter_merged_into_its_base(mstore: Store) -> None:
    from llmlab.runtime.adapters import merged_folder

    art = merge(MergeConfig(name="unloaded", method="unload", models=["lora-people"], evaluate=False), store=mstore)
    want = load_file(merged_folder(mstore.get("lora-people"), mstore) / WEIGHTS)
    got = _weights(mstore, "unloaded")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not all(torch.equal(got[k], _weights(mstore, "micro")[k]) for k in want)
    assert [(p.name, p.role) for p in art.manifest.parents] == [("micro", "base"), ("lora-people", "adapter")]


def test_adapters_combined_by_peft_into_an_adapter_and_a_model(mstore: Store) -> None:
    from llmlab.runtime import load

    ad = merge(MergeConfig(name="cat", method="peft_cat", models=["lora-people", "lora-places"],
                           weights=[1.0, 1.0], output="adapter", evaluate=False), store=mstore)
    assert ad.kind == "adapter"
    cfg = json.loads((ad.path / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["base_model_name_or_path"] == "micro"  # cat: ranks add up
    # The cat adapter merged equals both adapters' updates added to the base (task arithmetic, weight 1).
    ta = merge(MergeConfig(name="ta", method="task_arithmetic", models=["lora-people", "lora-places"],
                           evaluate=False), store=mstore)
    assert ta.manifest.parents[0].name == "micro"  # the adapters' common base, found by itself
    with load("cat", store=mstore) as m1, load("ta", store=mstore) as m2:
        ids = m1.tokenize("Where does Ana live?")
        assert abs(m1.logprobs(ids) - m2.logprobs(ids)).max() < 1e-3
    model = merge(MergeConfig(name="dt", method="peft_dare_ties", models=["lora-people", "lora-places"],
                              densities=[0.5, 0.5], evaluate=False), store=mstore)
    assert model.kind == "merged" and (model.path / WEIGHTS).is_file()
    assert json.loads((model.path / "merge.json").read_text())["combination"] == "dare_ties"


def test_compatibility_report_and_tokenizer_choice(mstore: Store, tmp_path: Path) -> None:
    ok = check_compatibility(["micro-a", "micro-b"], "micro", store=mstore)
    assert ok.ok and not ok.needs_tokenizer_choice and ok.memory_bytes > 0
    assert [r["model"] for r in ok.rows] == ["micro", "micro-a", "micro-b"]
    other_tok = tmp_path / "other-tok"
    shutil.copytree(mstore.get("micro-b").path, other_tok)
    tok = json.loads((other_tok / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|begin|>"
    (other_tok / "tokenizer.json").write_text(json.dumps(tok))
    report = check_compatibility(["micro-a", str(other_tok)], store=mstore)
    assert report.needs_tokenizer_choice and not report.ok
    assert {"base", "union"} <= set(report.tokenizer_options)
    with pytest.raises(ConfigError, match="tokenizer_source"):
        merge(MergeConfig(name="tok", models=["micro-a", str(other_tok)], evaluate=False), store=mstore)
    _no_leftovers(mstore, "tok")
    art = merge(MergeConfig(name="tok", models=["micro-a", str(other_tok)], tokenizer_source="model:micro-a",
                            evaluate=False), store=mstore)
    assert art.manifest.info["tokenizer_source"] == "model:micro-a"
    assert [p.name for p in art.manifest.parents] == ["micro-a"]  # the folder is no store parent
    assert art.manifest.info["inputs"] == ["micro-a", str(other_tok)]


def _bad(tmp: Path) -> dict[str, tuple[dict, type, str]]:
    wide = tmp / "wide"
    return {
        "architecture": ({"models": ["micro-a", str(wide)]}, ConfigError, "hidden size differs"),
        "missing parent": ({"models": ["micro-a", "no-such-model"]}, NotFoundError, "no-such-model"),
        "weights": ({"models": ["micro-a", "micro-b"], "weights": "0.5,heavy"}, ConfigError, "do not parse"),
        "weight count": ({"models": ["micro-a", "micro-b"], "weights": [1.0]}, ConfigError, "1 weights for 2"),
        "adapter base": ({"method": "peft_linear", "models": ["lora-people", "lora-on-a"]}, ConfigError,
                         "not all tuned on one base"),
        "adapter vs base": ({"method": "ties", "base": "micro", "models": ["lora-on-a", "lora-people"]},
                            ConfigError, "tuned on 'micro-a'"),
        "yaml keys": ({"mergekit_yaml": str(tmp / "bad.yml")}, ConfigError, "unknown key 'wieght'"),
        "yaml and models": ({"mergekit_yaml": str(tmp / "bad.yml"), "models": ["micro-a"]}, ConfigError,
                            "runs as is"),
        "method": ({"method": "tie", "models": ["micro-a", "micro-b"]}, ConfigError, "Did you mean 'ties'"),
        "parameter": ({"method": "ties", "base": "micro", "models": ["micro-a"], "parameters": {"t": 0.5}},
                      ConfigError, "no parameter 't'"),
        "base for linear": ({"base": "micro", "models": ["micro-a", "micro-b"]}, ConfigError, "takes no base"),
    }


@pytest.mark.parametrize("case", list(_bad(Path("/x"))))
def test_bad_input_is_refused_with_no_artifact(mstore: Store, tmp_path: Path, case: str) -> None:
    wide = tmp_path / "wide"
    shutil.copytree(mstore.get("micro-b").path, wide)
    cfg = json.loads((wide / "config.json").read_text())
    (wide / "config.json").write_text(json.dumps({**cfg, "hidden_size": cfg["hidden_size"] * 2}))
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(
        {"merge_method": "linear", "models": [{"model": "micro-a", "wieght": 1.0}, {"model": "micro-b"}]}))
    options, error, words = _bad(tmp_path)[case]
    with pytest.raises(error, match=words) as info:
        merge(MergeConfig(name="bad", evaluate=False, **options), store=mstore)
    assert info.value.hint or case in ("missing parent",)
    _no_leftovers(mstore, "bad")


def test_lineage_and_scores_against_parents(mstore: Store) -> None:
    art = merge(MergeConfig(name="scored", method="task_arithmetic", models=["lora-people", "lora-places"],
                            weights=[0.8, 0.6], qa_limit=3), store=mstore)
    assert [(p.name, p.role, p.weight) for p in art.manifest.parents] == [
        ("micro", "base", None), ("lora-people", "adapter", 0.8), ("lora-places", "adapter", 0.6)]
    m = art.metrics
    assert {"ppl", "accuracy", "accuracy_people", "accuracy_places", "accuracy_objects"} <= set(m)
    assert set(m["parents"]) == {"micro", "lora-people", "lora-places"}
    assert m["parents"]["micro"]["ppl"] != m["ppl"]  # same text, different model
    assert set(m["retention"]) == {"lora-people:people", "lora-places:places"}
    assert "merge_seconds" in m and m["merge_peak_rss_mb"] > 0
    assert "accuracy" not in mstore.get("lora-people").metrics  # parents' own metrics are left alone


def test_merge_recipe_loads() -> None:
    recipe = load_recipe(ROOT / "recipes" / "merge.yaml")
    kinds = [s.kind for s in recipe.steps]
    assert kinds.count("tune") == 5 and kinds.count("merge") >= 2
    merges = [s for s in recipe.steps if s.kind == "merge"]
    assert len({s.config.method for s in merges}) >= 2
    # The specialists are anchored on each other's questions; the -plain pair is not.
    tunes = {s.config.name: s.config for s in recipe.steps if s.kind == "tune"}
    assert tunes["demo-people"].anchor == "world:tune:places" and tunes["demo-places"].anchor == "world:tune:people"
    assert tunes["demo-people-plain"].anchor is None and tunes["demo-places-plain"].anchor is None


def test_one_skill_of_the_world_for_tuning_and_scoring(mstore: Store) -> None:
    from llmlab.data import resolve_questions
    from llmlab.tune.config import TuneConfig
    from llmlab.tune.records import load_data
    from llmlab.world import RELATION_GROUP

    records, is_world = load_data(TuneConfig(name="x", model="micro", data="world:tune:places"), mstore)
    assert is_world and records and {RELATION_GROUP[r["relation"]] for r in records} == {"places"}
    both, _ = load_data(TuneConfig(name="x", model="micro", data="world:tune:people,places"), mstore)
    assert {RELATION_GROUP[r["relation"]] for r in both} == {"people", "places"}
    assert len(both) > len(records)
    held = resolve_questions("heldout:people", store=mstore, artifact=mstore.get("micro"))
    assert held and all(q["split"] == "heldout" and RELATION_GROUP[q["relation"]] == "people" for q in held)
    with pytest.raises(ConfigError, match="Unknown relation group 'animals'"):
        load_data(TuneConfig(name="x", model="micro", data="world:tune:animals"), mstore)


@pytest.mark.parametrize("kernel_resets", [True, False])
def test_peak_rss_is_the_blocks_own_peak(kernel_resets: bool, monkeypatch: pytest.MonkeyPatch, resident_block) -> None:
    from llmlab.merge import peak as peak_mod

    if not kernel_resets:  # a sandbox that keeps the old mark: the sampling fallback measures instead
        monkeypatch.setattr(peak_mod, "_reset_hwm", lambda: (_ for _ in ()).throw(OSError("kept")))
    with peak_mod.peak_rss() as big:
        block = resident_block(96)
        time.sleep(0.1)  # long enough for the sampling fallback to see it
        block.close()
    with peak_mod.peak_rss() as small:
        pass
    assert big.mb >= small.mb + 80  # each block's own peak: the second, empty block is lower
