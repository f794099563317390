"""The Quantize front ends: the app page (``app/views/quantize.py``) and ``notebooks/quantize.py``.

What the page shows is worked out by the library (``llmlab.quantize.choices``: the type and method
choices, the Pareto front; ``llmlab.quantize.step.stored_table``), tested here against the page's
needs; ``tests/test_choices.py`` checks the choices on their own. The page file loads as a module
without running (its body, ``main``, runs only as Streamlit's ``__main__``).
The page itself is driven through ``AppTest`` on a temporary store: empty, with the imported
micro model (which has no demo world, so evaluation texts come from a file), and with fake
GGUF children whose metrics fill the table and chart, and with outputs already quantized (the page
says which a job reuses and which it replaces, and offers Reuse or Redo). The slow tests run a real
one-type quantize job started from the page, the same quantize twice (the second reuses everything
and scores nothing), and the notebook headless with the micro model.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("streamlit")
from apptest import load_page, open_page, run_notebook, texts  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from llmlab.jobs import JobQueue  # noqa: E402
from llmlab.quantize.choices import method_choices, type_choices  # noqa: E402
from llmlab.quantize.gguf import QUANT_TYPES  # noqa: E402
from llmlab.quantize.step import QuantizeConfig, quantize, stored_table  # noqa: E402
from llmlab.scoring import pareto_front  # noqa: E402
from llmlab.store import Parent, StepRecord, Store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = "views/quantize.py"
NOTEBOOK = ROOT / "notebooks" / "quantize.py"
EVAL_TEXT = """Ana lives in Dunmere. She works as a baker and walks to the market every morning.

The town of Dunmere sits by a river. Its bridge is old, and the mill beside it still turns.

Bo keeps a red lantern on his boat. At night he rows past the mill and waves to the baker.
"""

# What the notebook test checks, from the notebook's definitions (``defs``), as JSON.
NOTEBOOK_REPORT = """{
    "names": [r["name"] for r in defs.get("rows") or []],
    "kld": {r["name"]: r["kld_mean"] for r in defs.get("rows") or []},
    "front": [r["name"] for r in defs.get("front") or []],
    "table_rows": len(defs["table"]) if "table" in defs else 0,
    "gptq": {r["name"]: r["kld_mean"] for r in defs.get("gptq_rows") or []},
}"""


@pytest.fixture(scope="module")
def page() -> ModuleType:
    """The page file as a module: its drawing helpers, without running the page."""
    return load_page(PAGE)


def charts(at: AppTest) -> list:
    """The Altair (Vega-Lite) charts on the page."""
    return list(at.get("vega_lite_chart"))


def fake_variant(store: Store, name: str, type_name: str, size: int, kld: float | None) -> None:
    """A gguf child of 'micro' with the manifest facts and metrics a quantize step records."""
    source = store.get("micro")
    with store.write(name, "gguf") as w:
        (w.path / f"{name}.gguf").write_bytes(b"GGUF")
        w.parents = [Parent(name="micro", content_hash=source.content_hash, role="source")]
        w.info = {"type": type_name, "bpw": 8.0 * size / 1_000_000, "size_bytes": size,
                  "reference": "micro-f16"}
    # (the file is a stand-in: the row's size comes from the manifest's size_bytes, as for a real variant)
    store.record_metrics(name, {"ppl": 20.0, "kld_mean": kld, "kld_p99": None if kld is None else 5 * kld,
                                "top1": 0.9, "kld_reference": "micro-f16",
                                "ppl_data": {"sha256": "same-text"}})


# ----- what the page shows, from the library -----
def test_the_page_loads_without_running_and_has_a_main(page: ModuleType):
    assert callable(page.main) and page.human_size(3_400_000) == "3.4 MB" and page.human_size(812) == "812 B"


def test_pareto_front_keeps_the_undominated_rows():
    rows = [{"name": "a", "s": 1, "k": 0.5}, {"name": "b", "s": 2, "k": 0.1}, {"name": "c", "s": 3, "k": 0.2},
            {"name": "d", "s": 2, "k": 0.1}, {"name": "e", "s": 0.5, "k": None},
            {"name": "f", "s": 4, "k": float("nan")},
            {"name": "g", "s": 5, "k": 0.01}, {"name": "h", "s": 5, "k": 0.02}]
    # c is beaten by b on both; h by g on quality at the same size; e and f have no quality number
    assert [r["name"] for r in pareto_front(rows, "s", "k")] == ["a", "b", "d", "g"]
    assert pareto_front([], "s", "k") == []
    assert pareto_front([{"name": "x", "s": 1, "k": 1}], "s", "k") == [{"name": "x", "s": 1, "k": 1}]
    assert pareto_front([{"name": "t", "s": True, "k": 1}], "s", "k") == []  # bools are not numbers


def test_type_choices_give_sizes_and_reasons():
    narrow = {"model.embed_tokens.weight": [512, 96], "model.norm.weight": [96]}
    options = {o.type: o for o in type_choices(narrow, imatrix=False)}
    assert set(options) == set(QUANT_TYPES)
    n_params = 512 * 96 + 96
    assert options["Q8_0"].reason is None and options["Q8_0"].expected_bytes == int(n_params * 8.5 / 8)
    assert options["Q4_K_M"].reason is None and "rows of 96" in options["Q4_K_M"].note  # falls back to Q5_0
    assert "Q5_0" in options["Q4_K_M"].note and options["Q8_0"].note is None
    wide = {"w": [512, 256]}
    plain = {o.type: o for o in type_choices(wide, imatrix=False)}
    assert plain["Q4_K_M"].reason is None
    assert "needs an importance matrix" in plain["IQ2_XS"].reason and plain["IQ2_XS"].needs_imatrix
    assert all(o.reason is None for o in type_choices(wide, imatrix=True))


def test_method_choices_give_sizes_and_reasons():
    shapes = {"model.embed_tokens.weight": [512, 256], "model.layers.0.self_attn.q_proj.weight": [256, 256],
              "model.layers.0.mlp.down_proj.weight": [256, 96], "model.norm.weight": [256]}
    fine = {o.method: o for o in method_choices(shapes, 4, 32)}
    assert list(fine) == ["gptq", "awq", "rtn"] and all(o.reason is None for o in fine.values())
    assert fine["gptq"].calibrated and not fine["rtn"].calibrated
    assert 0 < fine["rtn"].expected_bytes < 2 * sum(256 * n for n in (512, 256, 96))  # under 16-bit
    coarse = method_choices(shapes, 4, 64)
    assert all("does not divide 'model.layers.0.mlp.down_proj.weight'" in o.reason for o in coarse)


# ----- the page -----


def test_page_offers_gptq_awq_rtn_and_asks_for_calibration(micro_home: Store):
    from llmlab.quantize.gptq import METHODS

    at = open_page(PAGE, timeout=60)
    gptq_box = at.checkbox(key="quantize:method:gptq")
    assert gptq_box.help == METHODS["gptq"] and not gptq_box.value
    assert "RTN: plain round-to-nearest" in texts(at)
    gptq_box.check().run()
    # the imported micro model has no demo world: GPTQ's calibration text must come from a file
    assert at.selectbox(key="quantize:calibration").value == "file"
    assert "Give the calibration file for GPTQ/AWQ" in texts(at)
    assert at.button(key="quantize:start").disabled
    at.checkbox(key="quantize:method:gptq").uncheck()
    at.checkbox(key="quantize:method:rtn").check().run()  # RTN needs no calibration
    assert "Give the calibration file for GPTQ/AWQ" not in texts(at) and not at.exception


def test_page_renders_on_an_empty_store(empty_home: Store):
    at = open_page(PAGE, timeout=60)
    assert "no model to quantize" in texts(at)


def ticked_types(at: AppTest) -> set[str]:
    return {box.key.removeprefix("quantize:type:") for box in at.checkbox
            if (box.key or "").startswith("quantize:type:") and box.value}


def test_page_offers_types_with_sizes_and_explains_the_imatrix_ones(micro_home: Store, tmp_path: Path):
    at = open_page(PAGE, timeout=60)
    assert ticked_types(at) == {"Q8_0", "Q4_K_M"}  # the safe choice and the usual best trade-off, not five
    q8 = at.checkbox(key="quantize:type:Q8_0")
    assert q8.value and not q8.disabled and "lossless" in q8.help
    assert re.fullmatch(r"Q8_0 · ≈[\d.]+ [KM]B", q8.label), q8.label  # its expected size
    iq2 = at.checkbox(key="quantize:type:IQ2_XS")
    assert iq2.disabled and "needs an importance matrix" in iq2.help
    assert "need an importance matrix" in texts(at) and "Not available: IQ2_XS needs" in texts(at)
    # the imported micro model has no demo world: it is scored on the shipped prose ("auto"), no flags needed
    assert at.text_input(key="quantize:eval_data").value == "auto"
    assert not at.warning and not at.button(key="quantize:start").disabled
    at.selectbox(key="quantize:imatrix").select("world").run()
    assert not at.checkbox(key="quantize:type:IQ2_XS").disabled
    assert any("has no demo world" in w.value for w in at.warning)
    calib = tmp_path / "calib.txt"
    calib.write_text(EVAL_TEXT)
    at.selectbox(key="quantize:imatrix").select("file").run()
    at.text_input(key="quantize:imatrix_file").input(str(calib)).run()
    at.text_input(key="quantize:eval_data").input(str(calib)).run()
    at.text_input(key="quantize:qa").input("none").run()
    assert not at.exception and not at.warning
    assert not at.button(key="quantize:start").disabled


def test_table_and_chart_come_from_the_stored_variants(micro_home: Store):
    fake_variant(micro_home, "micro-f16", "F16", 2_000_000, 1e-6)
    fake_variant(micro_home, "micro-q8_0", "Q8_0", 1_100_000, 1e-4)
    fake_variant(micro_home, "micro-q5_0", "Q5_0", 900_000, 0.05)  # beaten by q4_k_m on both
    fake_variant(micro_home, "micro-q4_k_m", "Q4_K_M", 600_000, 0.01)
    rows = stored_table(micro_home, "micro")
    assert [r["name"] for r in rows] == ["micro-f16", "micro-q8_0", "micro-q5_0", "micro-q4_k_m"]
    micro_home.record_metrics("micro", {"ppl": 19.5, "ppl_data": {"sha256": "same-text"}})
    rows = stored_table(micro_home, "micro")
    assert rows[0]["name"] == "micro" and rows[0]["kld_mean"] is None  # scored on the same text: shown first
    assert [r["type"] for r in pareto_front(rows, "size_mb", "kld_mean")] == ["Q4_K_M", "Q8_0", "F16"]

    at = open_page(PAGE, timeout=60)
    table = at.dataframe[0].value
    assert list(table["name"]) == ["micro", "micro-f16", "micro-q8_0", "micro-q5_0", "micro-q4_k_m"]
    assert table.set_index("name").loc["micro-q4_k_m", "kld_mean"] == 0.01
    assert charts(at), "the size-vs-quality chart is drawn"
    assert "Pareto front" in texts(at) and "Q4_K_M (0.6 MB), Q8_0 (1.1 MB), F16 (2 MB)" in texts(at)
    assert at.selectbox(key="quantize:chat").value == "micro-q4_k_m"  # the smallest, by default
    at.radio(key="quantize:axis").set_value("ppl").run()
    assert not at.exception and charts(at)


def test_page_says_which_outputs_a_job_reuses_and_offers_redo(micro_home: Store, tmp_path: Path):
    pytest.importorskip("llama_cpp")
    made_by = StepRecord(kind="quantize", config={}, config_hash="an earlier step")
    quantize(QuantizeConfig(model="micro", types=["q8_0", "q2_k"], score=False), store=micro_home, step=made_by)
    at = open_page(PAGE, timeout=60)
    assert "Already made from the same source with the same settings: micro-f16, micro-q8_0." in texts(at)
    assert "replaces" not in texts(at)  # micro-q4_k_m is new; micro-q2_k is not asked for
    assert at.radio(key="quantize:existing").value == "reuse"
    # with an importance matrix, the Q8_0 made without one is another output: the page says it is replaced
    calib = tmp_path / "calib.txt"
    calib.write_text(EVAL_TEXT)
    at.selectbox(key="quantize:imatrix").select("file").run()
    at.text_input(key="quantize:imatrix_file").input(str(calib)).run()
    assert "with the same settings: micro-f16." in texts(at)
    assert "Made otherwise, so a job replaces them: micro-q8_0 (another importance matrix)." in texts(at)
    at.selectbox(key="quantize:imatrix").select("none").run()
    at.radio(key="quantize:existing").set_value("redo").run()
    at.button(key="quantize:start").click().run()
    assert not at.exception and "Started job" in at.success[0].value
    queue = JobQueue(micro_home)
    [job] = queue.list()
    assert queue.recipe(job.id)["steps"][0]["quantize"]["redo"] is True
    queue.cancel(job.id)


def job_events(queue: JobQueue, job_id: str) -> dict[str, Any]:
    """What a quantize job did, from its events: its step's status and seconds, conversion and
    quantization progress, the models it scored and what it reused."""
    events = queue.events(job_id)
    logs = [e["message"] for e in events if e["type"] == "log"]
    [step] = [e for e in events if e["type"] == "step" and e["status"] != "start"]
    return {"status": step["status"], "seconds": step["seconds"],
            "made": sorted({e["task"] for e in events if e["type"] == "progress"
                            and e.get("task") in ("convert", "quantize")}),
            "scored": [m for m in logs if m.startswith("scoring")],
            "reused": [m.removesuffix(": same source and settings") for m in logs if m.startswith("reusing micro")]}


@pytest.mark.slow
def test_quantizing_again_on_the_page_reuses_outputs_and_scores(micro_home: Store, tmp_path: Path):
    # The defect: Q8_0 again (after a quickstart-like run of three types) took 405 s and wrote byte-identical
    # files. Now the same job again, and Q8_0 alone, make nothing, score nothing and leave the files as they are.
    pytest.importorskip("llama_cpp")
    eval_file, qa_file = tmp_path / "eval.txt", tmp_path / "qa.jsonl"
    eval_file.write_text(EVAL_TEXT)
    qa_file.write_text('{"question": "Where does Ana live?", "answer": "Dunmere"}\n')
    queue = JobQueue(micro_home)
    at = open_page(PAGE, timeout=60)
    at.text_input(key="quantize:eval_data").input(str(eval_file))
    at.text_input(key="quantize:qa").input(str(qa_file))
    at.checkbox(key="quantize:type:Q5_0").check()
    runs = []
    for ticked in ({"Q8_0", "Q5_0", "Q4_K_M"}, {"Q8_0", "Q5_0", "Q4_K_M"}, {"Q8_0"}):
        for box in at.checkbox:
            if (box.key or "").startswith("quantize:type:") and box.value:
                box.set_value(box.key.removeprefix("quantize:type:") in ticked)
        at.run()
        assert ticked_types(at) == ticked and not at.warning, [w.value for w in at.warning]
        if runs:  # the page says what a job would reuse
            assert f"with the same settings: micro-f16, {', '.join(names(ticked))}." in texts(at)
        at.button(key="quantize:start").click().run()
        assert not at.exception and "Started job" in at.success[0].value
        job = queue.list()[0]
        assert queue.wait(job.id, timeout=600).status == "done", queue.log(job.id)
        runs.append(job_events(queue, job.id))
        if len(runs) == 1:
            hashes = {a.name: a.content_hash for a in micro_home.list()}
    first, same, q8 = runs
    assert first["made"] == ["convert", "quantize"] and len(first["scored"]) == 5 and not first["reused"]
    assert same["status"] == "skipped" and same["made"] == same["scored"] == []  # the recipe step's own skip
    # another config (one type): quantize reuses each output made alike, and the scores kept by content
    assert q8["status"] == "done" and q8["made"] == q8["scored"] == []
    assert q8["reused"] == ["reusing micro-f16", "reusing micro-q8_0"]
    assert {a.name: a.content_hash for a in micro_home.list()} == hashes
    assert q8["seconds"] < first["seconds"] / 3, (first["seconds"], q8["seconds"])
    at.run()
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["micro-q8_0", "measured_at"] and table.loc["micro-q8_0", "load_avg"] >= 0


def names(types: set[str]) -> list[str]:
    """The variant names of ``types`` in the page's order (most bits first)."""
    return [f"micro-{t.lower()}" for t in ("Q8_0", "Q5_0", "Q4_K_M") if t in types]


@pytest.mark.slow
def test_a_job_started_on_the_page_quantizes_and_fills_the_table(micro_home: Store, tmp_path: Path):
    pytest.importorskip("llama_cpp")
    eval_file, qa_file = tmp_path / "eval.txt", tmp_path / "qa.jsonl"
    eval_file.write_text(EVAL_TEXT)
    # (qa "none" would do, but quality_table reads qa=None as "the world's heldout questions", which an
    # imported model without a world does not have; a small file of questions works either way)
    qa_file.write_text('{"question": "Where does Ana live?", "answer": "Dunmere"}\n'
                       '{"question": "What does Bo keep on his boat?", "answer": "a red lantern"}\n')
    at = open_page(PAGE, timeout=60)
    for box in at.checkbox:
        if (box.key or "").startswith("quantize:type:") and box.key != "quantize:type:Q8_0" and box.value:
            box.uncheck()
    at.text_input(key="quantize:eval_data").input(str(eval_file))
    at.text_input(key="quantize:qa").input(str(qa_file))
    at.run()
    assert not at.warning, [w.value for w in at.warning]
    at.button(key="quantize:start").click().run()
    assert not at.exception and "Started job" in at.success[0].value
    queue = JobQueue(micro_home)
    [job] = queue.list()
    step = queue.recipe(job.id)["steps"][0]["quantize"]
    assert step["types"] == ["q8_0"] and step["imatrix"] is None
    assert step["texts"] == str(eval_file) and step["qa"] == str(qa_file)
    assert queue.wait(job.id, timeout=600).status == "done", queue.log(job.id)

    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "**done**" in texts(at)
    table = at.dataframe[0].value.set_index("name")
    assert {"micro", "micro-f16", "micro-q8_0"} <= set(table.index)
    assert table.loc["micro-q8_0", "type"] == "Q8_0" and table.loc["micro-q8_0", "top1"] > 0.5
    assert 0 <= table.loc["micro-q8_0", "kld_mean"] < 0.1
    assert charts(at)
    # chat with the q8_0 variant through llama.cpp
    art = micro_home.get("micro-q8_0")
    at.selectbox(key="quantize:chat").select("micro-q8_0").run()
    chat = at.chat_input(key=f"quantize:chat:micro-q8_0:{art.content_hash}:input")
    chat.set_value("Where does Ana live?").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [m.name for m in at.chat_message] == ["user", "assistant"]


# ----- the notebook -----
@pytest.mark.slow
def test_notebook_runs_headless_with_the_micro_model(tmp_path: Path):
    pytest.importorskip("marimo")
    pytest.importorskip("llama_cpp")
    defs = run_notebook(NOTEBOOK, tmp_path, NOTEBOOK_REPORT, timeout=900)
    assert defs["names"] == ["demo-micro", "demo-micro-f16", "demo-micro-q8_0", "demo-micro-q4_k_m",
                             "demo-micro-q2_k"]
    assert defs["table_rows"] == 5
    assert defs["kld"]["demo-micro-q8_0"] < defs["kld"]["demo-micro-q2_k"]
    assert defs["front"] and set(defs["front"]) <= set(defs["names"][1:])
    assert list(defs["gptq"]) == ["demo-micro", "demo-micro-gptq-w4g64", "demo-micro-rtn-w4g64"]
    assert defs["gptq"]["demo-micro-gptq-w4g64"] >= 0 and defs["gptq"]["demo-micro-rtn-w4g64"] >= 0
