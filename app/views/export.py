"""Export: a model as a deployable bundle, its parity report, and a server to try it.

Pick a model (GGUF and gguf-adapter artifacts for llmlab serve / Ollama, Hugging Face ones for
vLLM; best accuracy first; the picker opens on the model sent from the Leaderboard or Home, else on
the Leaderboard's winner), for a GGUF base (or an agent over one) any number of LoRA adapters served
beside it (each asked for as ``<bundle>:<adapter>``, an agent's as ``<agent>:<adapter>``), see what goes
into its bundle (``llmlab.export.plan``), and start a
one-step ``export`` recipe as a job (it checks parity before the bundle is written). For a bundle:
its files and hashes, the parity report (and a button to run it again), Start / Stop of a server
process (``llmlab.serve.process``), a chat against it over HTTP, copyable curl and OpenAI-client
snippets, and its live metrics. Nothing heavy is imported until a button is pressed.

Which models can be exported (best accuracy first), whether parity applies, a bundle's files and
which server metrics to show come from ``llmlab.export.choices`` (beside ``llmlab.export.plan``). The
page only lays out widgets and calls them. Its body is ``main``, run when Streamlit executes this
file (as ``__main__``).
"""

from __future__ import annotations

import streamlit as st

from llmlab.catalog import default_model_index
from llmlab.errors import LlmlabError
from llmlab.evaluate.choices import leaderboard_winner
from llmlab.export import ExportConfig, plan
from llmlab.export.choices import (adapters_for, bundle_files, exportable, parity_applies, parity_source,
                                   served_names, served_over_http, server_metric_rows)
from llmlab.jobs import FINAL, JobQueue
from llmlab.store import Artifact, Store
from widgets import job_panel, job_queue, start_button

HELP = {name: f.description for name, f in ExportConfig.model_fields.items()}
PICKED = "export:model"  # also set by the Leaderboard's and Home's "Export" buttons


# ----- page sections -----
def export_form(store: Store, queue: JobQueue) -> None:
    models = exportable(store)
    if not models:
        st.info("The store has no model to export. Run the quickstart (`llmlab run recipes/quickstart.yaml`) "
                "or quantize a model first.")
        return
    names = [a.name for a in models]
    sent = st.session_state.get(PICKED)
    if sent is not None and sent not in names:  # sent from the Leaderboard or Home, but not exportable
        st.warning(f"{sent} cannot be exported (it is gone, or of a kind a bundle does not take).")
        del st.session_state[PICKED]
    # a model sent here wins; otherwise open on the Leaderboard's winner
    index = 0 if PICKED in st.session_state else default_model_index(
        store, names, "export", winner=leaderboard_winner(store, names))
    name = st.selectbox("Model", names, index=index, key=PICKED, help=HELP["model"])
    art = store.get(name)
    adapters = adapters_for(art, store)
    picked = st.multiselect("Adapters", adapters, key=f"export:adapters:{name}", help=HELP["adapters"],
                            disabled=not adapters,
                            placeholder="Pick LoRA adapters of this base" if adapters else "No adapters of this base")
    st.dataframe(plan(art, picked), hide_index=True)
    c1, c2, c3 = st.columns(3)
    # keyed by model: a keyed widget keeps its value when its default changes, so picking another model
    # would keep the first one's bundle name and parity setting
    out = c1.text_input("Bundle name", f"{name}-bundle", key=f"export:name:{name}", help=HELP["name"])
    parity = c2.checkbox("Parity check", parity_applies(art), key=f"export:parity:{name}", help=HELP["parity"],
                         disabled=not parity_applies(art))
    registry = c3.checkbox("Register in MLflow", False, key="export:registry", help=HELP["registry"])
    config = {"model": name, "name": out, "parity": parity, "registry": registry,
              **({"adapters": picked} if picked else {})}
    start_button(queue, "export", config, label="Export", title=f"export {name}", session_key="export:job")


def live_metrics(url: str) -> None:
    from llmlab.serve.client import metrics

    try:
        st.dataframe(server_metric_rows(metrics(url)), hide_index=True)
    except Exception as e:  # the server went away between reruns
        st.caption(f"No metrics: {type(e).__name__}")


def server_section(store: Store, bundle: Artifact) -> None:
    from llmlab.serve import process
    from llmlab.serve.client import snippets, stream_chat
    from llmlab.world import example_question

    server = process.server_of(bundle.name, store)
    if server is None:
        if st.button("Start server", key="export:serve", type="primary"):
            with st.spinner("Starting the server…"):
                try:
                    process.start(bundle.name, store=store)
                except LlmlabError as e:
                    st.error(str(e))
                    return
            st.rerun()
        return
    st.success(f"Serving **{bundle.name}** at {server['url']}/v1 (pid {server['pid']}, log {server['log_path']})")
    if st.button("Stop server", key="export:stop"):
        process.stop(bundle.name, store=store)
        st.rerun()
    names = served_names(bundle)
    model = st.selectbox("Model", names, key=f"export:model:{bundle.name}", disabled=len(names) == 1,
                         help="The bundle's base, one of its adapters (switched per request by the server), or "
                              "its agent (on the base, or on each adapter).")
    code = snippets(server["url"], model, question=example_question(store, bundle))
    c1, c2 = st.columns(2)
    c1.code(code["curl"], language="bash")
    c2.code(code["python"], language="python")
    st.fragment(run_every=2)(live_metrics)(server["url"])
    # a conversation per served name: another adapter or the agent starts afresh, not from one's answers
    history: list[dict[str, str]] = st.session_state.setdefault(f"export:chat:{bundle.name}:{model}", [])
    for m in history:
        st.chat_message(m["role"]).markdown(m["content"])
    prompt = st.chat_input(f"Ask {model} (over HTTP)", key="export:chat")
    if prompt:
        history.append({"role": "user", "content": prompt})
        st.chat_message("user").markdown(prompt)
        try:
            with st.chat_message("assistant"):
                reply = st.write_stream(stream_chat(server["url"], model, history, max_tokens=128))
            history.append({"role": "assistant", "content": str(reply)})
        except LlmlabError as e:
            history.pop()
            st.error(str(e))


def bundle_section(store: Store) -> None:
    bundles = store.list("bundle")
    st.subheader("Bundles")
    if not bundles:
        st.caption("No bundles yet: export a model above (or `llmlab export MODEL`).")
        return
    name = st.selectbox("Bundle", [b.name for b in bundles], key="export:bundle")
    bundle = store.get(name)
    tarball = store.root / f"{name}.tar.gz"
    st.caption(f"{bundle.path}" + (f" · tarball {tarball} ({tarball.stat().st_size / 1e6:.1f} MB)"
                                   if tarball.exists() else ""))
    st.dataframe(bundle_files(bundle), hide_index=True)
    parity = bundle.metrics.get("parity")
    if parity:
        st.markdown(f"**Parity** ({parity.get('mode')}): {'ok' if parity.get('ok') else 'DRIFT'} · "
                    f"largest log-probability difference {parity.get('max_logprob_diff', 0):.2e} over "
                    f"{parity.get('prompts')} prompts"
                    + (f", {len(parity['adapters'])} adapters" if parity.get("adapters") else ""))
    source = parity_source(bundle, store)
    if source and st.button("Run the parity check again", key="export:parity_again"):
        from llmlab.export.parity import check

        with st.spinner("Replaying the prompts through the bundle's server and the artifact…"):
            try:
                spec = bundle.manifest.info.get("model") or {}
                adapters = {a: e["artifact"] for a, e in (spec.get("adapters") or {}).items()}
                st.json(check(bundle.path, source, store=store, adapters=adapters))
            except LlmlabError as e:
                st.error(str(e))
    if served_over_http(bundle):
        server_section(store, bundle)
    else:
        from llmlab.export import open_bundle

        st.code(open_bundle(bundle.path, verify=False).get("vllm", ""), language="bash")


def main() -> None:
    store = Store()
    queue = job_queue(str(store.root))
    st.title("Export")
    st.markdown("Turn a model into a folder and a `.tar.gz` you can copy to a server: the model in its serving "
                "format, an OpenAI-compatible server, a Dockerfile, an Ollama Modelfile, and a parity check that "
                "proves the bundle answers as the model you evaluated.")
    with st.container(border=True):
        export_form(store, queue)
    job_id = st.session_state.get("export:job")
    if job_id:
        job = queue.get(job_id)
        st.fragment(run_every=1 if job.status not in FINAL else None)(job_panel)(queue, job_id, "export")
    bundle_section(store)


if __name__ == "__main__":
    main()
