"""Arena: two or more variants answer the same prompt side by side (streamed), the user votes, and the votes
become Elo and Bradley-Terry ratings shown next to the automatic scores.

Blind by default: the answers are headed "Model A", "Model B"... in a new random order for each
question, and the variants' names appear only after the vote, which is recorded against the
variants behind the labels (``llmlab.evaluate.arena.Round``). The question and its answers stay
after the vote; "Ask again" asks the same question afresh (a new blind order, a new vote).

The variants are the store's runnable models and, while a bundle with several adapters is served
(started on the Export page), that bundle's base and each of its adapters (``bundle:adapter``): those
answer over HTTP from the one server, which switches adapters per request
(``llmlab.serve.process.served_adapters``).

Answers stream one column at a time through each model's own chat template with the same system
prompt (empty by default: each template's own default applies) and sampling settings
(``widgets.sampling_controls``). A vote names the better answer, or a tie; it is stored with every
pair's answers and content hashes in ``<store>/.arena/votes.sqlite``. The ratings table adds each
variant's cached perplexity and task accuracy on the default suite (read from the quality cache;
nothing is scored here).

An optional LLM judge (any runnable variant, constrained decoding) compares the last two answers
with position swapping (``llmlab.evaluate.judge.pairwise``); blind, its verdict names the label.
Beside its verdict the page shows the judge's measured agreement with exact match
(``llmlab.evaluate.agreement.judge_note``) and warns plainly when its kappa is below
``TRUST_KAPPA`` (0.4) or was never measured.

The ratings beside their cached scores come from ``llmlab.evaluate.choices.ratings_with_scores``; the
page only lays out widgets and calls the library. Its body is ``main``, run when Streamlit executes
this file (as ``__main__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from llmlab.errors import LlmlabError
from llmlab.evaluate.agreement import judge_note
from llmlab.evaluate.arena import Arena, Round
from llmlab.evaluate.choices import MISSING, number_formats, ratings_with_scores
from llmlab.evaluate.judge import ModelJudge, pairwise
from llmlab.serve.process import served_adapters
from llmlab.store import RUNNABLE_KINDS, Store
from widgets import load_model, sampling_controls

if TYPE_CHECKING:
    from llmlab.runtime import SamplingParams


NO_JUDGE = "(no judge)"
NOTE = {"warning": st.warning, "info": st.info, "ok": st.caption}
ROUND = "arena:last"  # the current Round in the session


def judge_block(store: Store, judge_name: str, last: Round | None) -> None:
    """The judge's trust note and, for the last two answers, its pairwise verdict on demand."""
    level, sentence = judge_note(store, judge_name)
    NOTE[level](sentence)
    if not last or len(last.votable()) != 2:
        return
    if st.button(f"Ask {judge_name} which answer is better", key="arena:judge:ask"):
        label_a, label_b = last.votable()
        a, b = (last.answers[last.labels[lb]] for lb in (label_a, label_b))
        try:
            art = store.get(judge_name)
            model = load_model(str(store.root), judge_name, art.content_hash)
            verdict = pairwise(ModelJudge(model, constrained=True), last.prompt, a, b)
        except LlmlabError as e:
            st.error(str(e))
            return
        winner = {"a": last.heading(label_a), "b": last.heading(label_b), "tie": "tie"}.get(
            verdict["winner"] or "", "no verdict")
        st.markdown(f"Judge **{judge_name}**: **{winner}** "
                    f"(position consistent: {verdict['position_consistent']}).")
        if level != "ok":
            st.caption("Read this verdict with the warning above.")


def ask(store: Store, chosen: list[str], prompt: str, system: str, params: SamplingParams,
        blind: bool, served: dict[str, str]) -> Round:
    """Stream every chosen variant's answer into its column (``served``: names answered by a running
    server, with its URL); the new round."""
    current = Round.start(prompt, chosen, blind=blind)
    st.chat_message("user").markdown(prompt)
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    for col, (label, name) in zip(st.columns(len(current.labels)), current.labels.items()):
        with col:
            st.markdown(f"**{current.heading(label)}**")
            try:
                if name in served:
                    from llmlab.serve.client import stream_chat

                    reply = st.write_stream(stream_chat(served[name], name, messages,
                                                        **params.model_dump(exclude_none=True)))
                else:
                    art = store.get(name)
                    model = load_model(str(store.root), name, art.content_hash)
                    reply = st.write_stream(model.stream_chat(messages, params))
                current.answers[name] = reply if isinstance(reply, str) else str(reply)
            except LlmlabError as e:
                st.error(f"{current.heading(label)}: {e}")
    return current


def show(current: Round) -> None:
    """The round's question and answers under their headings (names revealed once voted)."""
    st.chat_message("user").markdown(current.prompt)
    for col, (label, name) in zip(st.columns(len(current.labels)), current.labels.items()):
        col.markdown(f"**{current.heading(label)}**")
        col.markdown(current.answers.get(name) or "_(no answer)_")


def reask() -> None:
    st.session_state["arena:reask"] = True  # read by the run this click starts


def vote_block(arena: Arena, current: Round) -> None:
    """Before the vote: a button per answer and a tie. After it: the outcome, names revealed."""
    if current.voted is None:
        st.markdown(f"Which answer to *{current.prompt}* is better?")
        labels = current.votable()
        for col, label in zip(st.columns(len(labels) + 1), [*labels, None]):
            if col.button(label or "Tie", key=f"arena:vote:{label or 'tie'}"):
                try:
                    current.record(arena, label)
                except LlmlabError as e:
                    st.error(str(e))
                    return
                st.toast("Vote stored.")
                st.rerun()
        return
    st.success(current.outcome())
    fresh = "new answers, a new blind order" if current.blind else "new answers"
    st.button("Ask again", key="arena:reask", on_click=reask,
              help=f"The same question afresh: {fresh} and a new vote. Or ask something new below.")


# ----- page -----
def main() -> None:
    store = Store()
    arena = Arena(store)
    st.title("Arena")
    st.markdown("Ask two or more variants the same thing, read their answers side by side and vote for the "
                "better one. Votes become Elo and Bradley-Terry ratings.")
    served = served_adapters(store)
    variants = [a.name for a in store.list() if a.kind in RUNNABLE_KINDS]
    variants += [n for n in served if n not in variants]
    if len(variants) < 2:
        st.info("The Arena needs at least two models in the store. Run the quickstart "
                "(`llmlab run recipes/quickstart.yaml`) to get a base model, an adapter and GGUF quants.")
    else:
        c1, c2 = st.columns([4, 1])
        chosen = c1.multiselect("Variants", variants, default=variants[:2], key="arena:variants")
        blind = c2.toggle("Blind", True, key="arena:blind", help="Answers as Model A, Model B… in a random "
                          "order for each question; the names appear after your vote.")
        params = sampling_controls("arena")
        system = st.text_input("System prompt", "", key="arena:system",
                               placeholder="Empty: each model's chat template default is used")
        judge_name = st.selectbox("LLM judge", [NO_JUDGE, *variants], key="arena:judge",
                                  help="A variant that compares the last two answers (its kappa is shown).")
        last: Round | None = st.session_state.get(ROUND)
        prompt = st.chat_input("Ask every chosen variant", key="arena:prompt")
        if not prompt and st.session_state.pop("arena:reask", False) and last:
            prompt = last.prompt
        if prompt and len(chosen) >= 2:
            st.session_state[ROUND] = last = ask(store, chosen, prompt, system, params, blind, served)
        elif prompt:
            st.warning("Pick at least two variants.")
        elif last:
            show(last)  # a rerun (after a vote, a widget change): the answers again
        if judge_name != NO_JUDGE and not (last and len(last.votable()) >= 2):
            judge_block(store, judge_name, None)
        if last and len(last.votable()) >= 2:
            if judge_name != NO_JUDGE:
                judge_block(store, judge_name, last)
            vote_block(arena, last)

    st.subheader("Ratings")
    ratings = arena.ratings()
    if not ratings:
        st.caption("No votes yet.")
        return
    rows = ratings_with_scores(store, ratings)
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", placeholder=MISSING,
                 column_config={"name": st.column_config.Column(pinned=True),
                                **{c: st.column_config.NumberColumn(format=f)
                                   for c, f in number_formats(list(rows[0])).items()}})
    st.caption(f"{len(arena.votes())} pairwise votes. Elo replays the votes in order (K=32); Bradley-Terry "
               "(bt, and on the Elo scale bt_elo) fits all of them at once. Automatic scores come from the "
               "leaderboard's cache (default suite).")


if __name__ == "__main__":
    main()
