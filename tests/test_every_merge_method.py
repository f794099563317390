"""Every merge method mergekit's registry lists, and every peft adapter combination, runs once.

Each mergekit method merges micro models of one shape (fine-tunes of the micro model: ``micro-a``
and ``micro-b`` perturb every weight, ``micro-a2`` is a second copy of ``micro-a``, ``micro-s``
perturbs half of the weights) and the result is checked against the method's defining property:
linear is the weighted mean, passthrough a copy, slerp at t=0 the base, task arithmetic and the
TIES/DARE/DELLA/breadcrumbs family with weight 1 and density 1 give back the one fine-tune,
model_stock and karcher of two identical models that model, RAM averages where task vectors
overlap and keeps them whole where one model alone moves a weight, and so on. Every method's own
parameters (t, epsilon, gamma, r, alpha, select_topk...) are passed through llmlab's config.

Every peft ``add_weighted_adapter`` combination type (``peft_<type>``) combines two LoRA adapters
of the micro model once, and with one adapter at weight 1 (density 1, full SVD rank) gives back
that adapter merged into its base.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("mergekit")
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from llmlab.merge.methods import PEFT_COMBINATIONS, mergekit_methods  # noqa: E402
from llmlab.merge.step import MergeConfig, ModelSpec, merge  # noqa: E402
from llmlab.store import Parent, Store  # noqa: E402
from test_merge import lora_adapter  # noqa: E402  (a random peft LoRA adapter, as the Tune station writes it)

WEIGHTS = "model.safetensors"
Sd = dict[str, torch.Tensor]


def copy_model(store: Store, src: Path, name: str, *, noise: float = 0.0, seed: int = 0, share: float = 1.0) -> None:
    """``src`` as ``name``; with ``noise``, a share of its weights moved by Gaussian noise (a fine-tune of it)."""
    with store.write(name, "full" if noise else "base") as w:
        shutil.copytree(src, w.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("manifest.json",
                                                                                         "metrics.json", "world"))
        if noise:
            g = torch.Generator().manual_seed(seed)
            sd = {}
            for k, v in load_file(w.path / WEIGHTS).items():
                step = noise * torch.randn(v.shape, generator=g)
                if share < 1:
                    step = step * (torch.rand(v.shape, generator=g) < share)
                sd[k] = (v + step).contiguous()
            save_file(sd, w.path / WEIGHTS, metadata={"format": "pt"})
            w.parents = [Parent(name="micro", content_hash=store.get("micro").content_hash, role="base")]


@pytest.fixture(scope="module")
def mstore(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("every-merge") / "models")
    copy_model(store, micro_model_dir, "micro")
    copy_model(store, micro_model_dir, "micro-a", noise=0.02, seed=1)
    copy_model(store, micro_model_dir, "micro-a2", noise=0.02, seed=1)  # the same fine-tune twice
    copy_model(store, micro_model_dir, "micro-b", noise=0.02, seed=2)
    copy_model(store, micro_model_dir, "micro-s", noise=0.02, seed=3, share=0.5)  # half the weights move
    lora_adapter(store, "micro", "lora-people", 1, "people")
    lora_adapter(store, "micro", "lora-places", 2, "places")
    return store


def weights(store: Store, name: str) -> Sd:
    return load_file(store.get(name).path / WEIGHTS)


def close(x: Sd, y: Sd, atol: float = 1e-6) -> bool:
    return x.keys() == y.keys() and all(torch.allclose(x[k], y[k], atol=atol) for k in x)


def each(fn: Callable[..., torch.Tensor], *models: Sd) -> Sd:
    """``fn`` applied tensor by tensor to ``models``."""
    return {k: fn(*(m[k] for m in models)) for k in models[0]}


# ----- the defining property of each mergekit method: (merged, {name: weights}) -> bool -----
def ties_two(out: Sd, w: dict[str, Sd]) -> bool:
    """TIES at density 1: per weight, the elected sign is that of the summed task vectors, and the
    task vectors that agree with it are averaged (the disjoint mean)."""
    def one(m: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        tv = torch.stack([a - m, b - m])
        agree = (tv.sign() == tv.sum(0).sign()).float()
        return m + (tv * agree).sum(0) / agree.sum(0).clamp(min=1)
    return close(out, each(one, w["micro"], w["micro-a"], w["micro-b"]), atol=1e-5)


def ram_two(out: Sd, w: dict[str, Sd], *, r: float = 0.0, alpha: float = 0.0, eps: float = 1e-5) -> bool:
    """RAM: where both task vectors move a weight they are averaged, where only one does it is kept
    whole (RAM+ scales those by 1 + r * min(shared/unique count ratio, alpha) per model)."""
    def one(m: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        tv = torch.stack([a - m, s - m]).view(2, -1)
        moved = tv.abs() > eps
        count = moved.sum(0, keepdim=True)
        lam = 1 + r * ((moved & (count > 1)).sum(1) / (moved & (count == 1)).sum(1).clamp(min=eps)).clamp(0, alpha)
        tv = tv * moved
        merged = (tv * (count == 1) * lam.unsqueeze(-1) + tv * (count > 1) / count.clamp(min=1)).sum(0)
        return m + merged.view_as(m)
    # micro-s moves about half of the weights: both kinds of entries occur
    a, s, m = w["micro-a"]["lm_head.weight"], w["micro-s"]["lm_head.weight"], w["micro"]["lm_head.weight"]
    assert 0.3 < ((s - m).abs() > eps).float().mean() < 0.7 and ((a - m).abs() > eps).float().mean() > 0.9
    return close(out, each(one, w["micro"], w["micro-a"], w["micro-s"]), atol=1e-6)


def sce_two(out: Sd, w: dict[str, Sd]) -> bool:
    """SCE at select_topk 1: task vectors weighted by their mean square, minority signs erased."""
    def one(m: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        tv = torch.stack([a - m, b - m])
        energy = tv.square().view(2, -1).mean(1)
        weight = (energy / energy.sum()).view(2, *([1] * m.dim()))
        agree = (tv.sign() == tv.sum(0).sign()).float() * weight
        return m + (tv * agree).sum(0) / agree.sum(0).clamp(min=1e-6)
    return close(out, each(one, w["micro"], w["micro-a"], w["micro-b"]), atol=1e-5)


def arcee_fusion_one(out: Sd, w: dict[str, Sd]) -> bool:
    """Arcee fusion: each weight is the base's or the fine-tune's, and the fine-tune's are taken
    where the importance (|difference| x the row's KL divergence) is an outlier above the rest."""
    import torch.nn.functional as F

    m_all, a_all = w["micro"], w["micro-a"]
    for k in out:
        m, a, o = m_all[k], a_all[k], out[k]
        took = torch.isclose(o, a, atol=0, rtol=0) & (a != m)
        if not (took | torch.isclose(o, m, atol=0, rtol=0)).all():
            return False
        p, q = F.softmax(a, dim=-1) + 1e-8, F.softmax(m, dim=-1) + 1e-8
        importance = (a - m).abs() * (p * (p / q).log()).sum(-1, keepdim=True)
        if took.any() and (~took).any() and importance[took].min() < importance[~took].max():
            return False
        if took.float().mean() > 0.5:  # outliers only
            return False
    return any(not torch.equal(out[k], m_all[k]) for k in out)


def nearswap(out: Sd, w: dict[str, Sd], t: float) -> bool:
    """nearswap: each weight moves from the base toward the other model by min(1, t / |difference|)."""
    def one(m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        lam = (t / (m - a).abs().clamp(min=1e-6)).clamp(0, 1)
        return lam * a + (1 - lam) * m
    return close(out, each(one, w["micro"], w["micro-a"]), atol=1e-6)


def is_model(name: str) -> Callable[[Sd, dict[str, Sd]], bool]:
    return lambda out, w: close(out, w[name], atol=1e-5)


AB = ["micro-a", "micro-b"]
ONE = {"models": [ModelSpec(model="micro-a", weight=1.0, density=1.0)], "base": "micro"}
# method -> (config, property). Only one model at weight 1 and density 1 makes every task-vector
# method give back that model: nothing is pruned, no sign is outvoted, nothing is rescaled.
CASES: dict[str, tuple[dict, Callable[[Sd, dict[str, Sd]], bool]]] = {
    "linear": ({"models": AB, "weights": [0.25, 0.75]},
               lambda out, w: close(out, each(lambda a, b: 0.25 * a + 0.75 * b, w["micro-a"], w["micro-b"]))),
    "passthrough": ({"models": ["micro-a"]}, is_model("micro-a")),
    "slerp": ({"models": ["micro-a"], "base": "micro", "parameters": {"t": 0.0}}, is_model("micro")),
    "nuslerp": ({"models": AB, "weights": [1.0, 0.0]}, is_model("micro-a")),
    "multislerp": ({"models": ["micro-a", "micro-a2"], "weights": [0.3, 0.7]}, is_model("micro-a")),
    "nearswap": ({"models": ["micro-a"], "base": "micro", "parameters": {"t": 0.01}},
                 lambda out, w: nearswap(out, w, 0.01)),
    "karcher": ({"models": ["micro-a", "micro-a2"], "parameters": {"max_iter": 5}}, is_model("micro-a")),
    "model_stock": ({"models": ["micro-a", "micro-a2"], "base": "micro"}, is_model("micro-a")),
    "task_arithmetic": (ONE, is_model("micro-a")),
    "ties": ({"models": AB, "base": "micro", "weights": [1.0, 1.0], "densities": [1.0, 1.0]}, ties_two),
    "dare_ties": (ONE, is_model("micro-a")),
    "dare_linear": (ONE, is_model("micro-a")),
    "breadcrumbs": ({**ONE, "models": [ModelSpec(model="micro-a", weight=1.0, density=1.0,
                                                 parameters={"gamma": 0.01})]}, is_model("micro-a")),
    "breadcrumbs_ties": ({**ONE, "models": [ModelSpec(model="micro-a", weight=1.0, density=1.0,
                                                      parameters={"gamma": 0.01})]}, is_model("micro-a")),
    "della": ({**ONE, "models": [ModelSpec(model="micro-a", weight=1.0, density=1.0,
                                           parameters={"epsilon": 0.1})]}, is_model("micro-a")),
    "della_linear": ({**ONE, "models": [ModelSpec(model="micro-a", weight=1.0, density=1.0,
                                                  parameters={"epsilon": 0.1})]}, is_model("micro-a")),
    "sce": ({"models": AB, "base": "micro", "parameters": {"select_topk": 1.0}}, sce_two),
    "arcee_fusion": ({"models": ["micro-a"], "base": "micro"}, arcee_fusion_one),
    "ram": ({"models": ["micro-a", "micro-s"], "base": "micro", "parameters": {"epsilon": 1e-5}}, ram_two),
    "ramplus_tl": ({"models": ["micro-a", "micro-s"], "base": "micro", "parameters": {"r": 0.5, "alpha": 1.0}},
                   lambda out, w: ram_two(out, w, r=0.5, alpha=1.0)),
}


def test_every_registered_method_has_a_case():
    from mergekit.merge_methods.registry import registered_methods

    registry = {m.spec.name for m in registered_methods()}
    assert set(mergekit_methods()) == registry == set(CASES)
    from llmlab.merge.choices import method_parameters

    # what the app's form offers besides t, with mergekit's defaults
    assert method_parameters(mergekit_methods()["ramplus_tl"]) == {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}
    assert method_parameters(mergekit_methods()["slerp"]) == {}
    assert "gamma" in mergekit_methods()["breadcrumbs"].per_model and "epsilon" in mergekit_methods()["della"].per_model


@pytest.mark.parametrize("method", list(CASES))
def test_method_runs_and_keeps_its_defining_property(mstore: Store, method: str):
    config, holds = CASES[method]
    art = merge(MergeConfig(name=f"m-{method}", method=method, evaluate=False, **config), store=mstore)
    assert art.kind == "merged" and art.manifest.info["method"] == method
    out = weights(mstore, art.name)
    assert all(torch.isfinite(t).all() for t in out.values())
    names = {"micro", "micro-a", "micro-a2", "micro-b", "micro-s"}
    assert holds(out, {n: weights(mstore, n) for n in names}), method


# ----- peft's add_weighted_adapter -----
def delta(store: Store, name: str) -> Sd:
    """What a merged model changed in ``micro``."""
    base = weights(store, "micro")
    return {k: v - base[k] for k, v in weights(store, name).items()}


@pytest.fixture(scope="module")
def unloaded(mstore: Store) -> dict[str, Sd]:
    """Each adapter merged into its base (the references), by name."""
    for name in ("lora-people", "lora-places"):
        merge(MergeConfig(name=f"u-{name}", method="unload", models=[name], evaluate=False), store=mstore)
    return {name: weights(mstore, f"u-{name}") for name in ("lora-people", "lora-places")}


@pytest.mark.parametrize("combination", list(PEFT_COMBINATIONS))
def test_peft_combination_runs(mstore: Store, unloaded: dict[str, Sd], combination: str):
    import json

    dense = combination not in ("linear", "cat", "svd")
    svd = combination.endswith("svd")
    # two adapters: cat and svd (whose sums are exact) and every other type are merged into the model,
    # the rest written as an adapter
    output = "model" if combination in ("cat", "svd") or PEFT_COMBINATIONS.index(combination) % 2 else "adapter"
    art = merge(MergeConfig(name=f"p-{combination}", method=f"peft_{combination}", models=["lora-people", "lora-places"],
                            weights=[0.6, 0.4], densities=[0.5, 0.5] if dense else None, svd_rank=8 if svd else None,
                            output=output, evaluate=False), store=mstore)
    assert json.loads((art.path / "merge.json").read_text())["combination"] == combination
    if output == "adapter":
        assert art.kind == "adapter"
        cfg = json.loads((art.path / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "micro"
        tensors = load_file(art.path / "adapter_model.safetensors")
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
    else:
        assert art.kind == "merged"
        got = delta(mstore, art.name)
        assert all(torch.isfinite(t).all() for t in got.values()) and any(t.abs().max() > 0 for t in got.values())
        if combination in ("cat", "svd"):  # concatenated ranks / full-rank SVD: exactly the weighted sum
            base = weights(mstore, "micro")
            want = {k: 0.6 * (unloaded["lora-people"][k] - base[k]) + 0.4 * (unloaded["lora-places"][k] - base[k])
                    for k in base}
            assert close(got, want, atol=1e-5), combination
    # One adapter at weight 1, density 1, SVD rank = its rank: that adapter, merged into its base.
    one = merge(MergeConfig(name=f"p1-{combination}", method=f"peft_{combination}", models=["lora-people"],
                            weights=[1.0], densities=[1.0] if dense else None, svd_rank=4 if svd else None,
                            evaluate=False), store=mstore)
    assert close(weights(mstore, one.name), unloaded["lora-people"], atol=1e-5), combination
