"""Arena: two or more variants answer the same prompt side by side (streamed), the user votes, and the votes
become Elo and Bradley-Terry ratings shown next to the automatic scores.

Answers stream one column at a time through each model's own chat template with the same system
prompt and sampling settings (``widgets.sampling_controls``). A vote names the better answer, or
a tie; it is stored with every pair's answers and content hashes in ``<store>/.arena/votes.sqlite``
(``llmlab.evaluate.arena``). The ratings table adds each variant's cached perplexity and task
accuracy on the default suite (read from the quality cache; nothing is scored here).

An optional LLM judge (any runnable variant, constrained decoding) compares the last two answers
with position swapping (``llmlab.evaluate.judge.pairwise``). Beside its verdict the page shows the
judge's measured agreement with exact match (``llmlab.evaluate.agreement.judge_note``) and warns
plainly when its kappa is below ``TRUST_KAPPA`` (0.4) or was never measured.

The ratings beside their cached scores come from ``llmlab.evaluate.choices.ratings_with_scores``; the
page only lays out widgets and calls the library. Its body is ``main``, run when Streamlit executes
this file (as ``__main__``).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from llmlab import world
from llmlab.errors import LlmlabError
from llmlab.evaluate.agreement import judge_note
from llmlab.evaluate.arena import Arena
from llmlab.evaluate.choices import ratings_with_scores
from llmlab.evaluate.judge import ModelJudge, pairwise
from llmlab.store import RUNNABLE_KINDS, Store
from widgets import load_model, sampling_controls


NO_JUDGE = "(no judge)"
NOTE = {"warning": st.warning, "info": st.info, "ok": st.caption}


def judge_block(store: Store, judge_name: str, last: dict | None) -> None:
    """The judge's trust note and, for the last two answers, its pairwise verdict on demand."""
    level, sentence = judge_note(store, judge_name)
    NOTE[level](sentence)
    if not last or len(last["answers"]) != 2:
        return
    if st.button(f"Ask {judge_name} which answer is better", key="arena:judge:ask"):
        (name_a, a), (name_b, b) = last["answers"].items()
        try:
            art = store.get(judge_name)
            model = load_model(str(store.root), judge_name, art.content_hash)
            verdict = pairwise(ModelJudge(model, constrained=True), last["prompt"], a, b)
        except LlmlabError as e:
            st.error(str(e))
            return
        winner = {"a": name_a, "b": name_b, "tie": "tie"}.get(verdict["winner"] or "", "no verdict")
        st.markdown(f"Judge **{judge_name}**: **{winner}** (position consistent: {verdict['position_consistent']}).")
        if level != "ok":
            st.caption("Read this verdict with the warning above.")


# ----- page -----
def main() -> None:
    store = Store()
    arena = Arena(store)
    st.title("Arena")
    st.markdown("Ask two or more variants the same thing, read their answers side by side and vote for the "
                "better one. Votes become Elo and Bradley-Terry ratings.")
    variants = [a.name for a in store.list() if a.kind in RUNNABLE_KINDS]
    if len(variants) < 2:
        st.info("The Arena needs at least two models in the store. Run the quickstart "
                "(`llmlab run recipes/quickstart.yaml`) to get a base model, an adapter and GGUF quants.")
    else:
        chosen = st.multiselect("Variants", variants, default=variants[:2], key="arena:variants")
        params = sampling_controls("arena")
        system = st.text_input("System prompt", world.SYSTEM_PROMPT, key="arena:system")
        judge_name = st.selectbox("LLM judge", [NO_JUDGE, *variants], key="arena:judge",
                                  help="A variant that compares the last two answers (its kappa is shown).")
        prompt = st.chat_input("Ask every chosen variant", key="arena:prompt")
        if prompt and len(chosen) >= 2:
            answers: dict[str, str] = {}
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            for col, name in zip(st.columns(len(chosen)), chosen):
                with col:
                    st.markdown(f"**{name}**")
                    try:
                        art = store.get(name)
                        model = load_model(str(store.root), name, art.content_hash)
                        reply = st.write_stream(model.stream_chat(messages, params))
                        answers[name] = reply if isinstance(reply, str) else str(reply)
                    except LlmlabError as e:
                        st.error(str(e))
            st.session_state["arena:last"] = {"prompt": prompt, "answers": answers}
        elif prompt:
            st.warning("Pick at least two variants.")
        last = st.session_state.get("arena:last")
        if judge_name != NO_JUDGE and not (last and len(last["answers"]) >= 2):
            judge_block(store, judge_name, None)
        if last and len(last["answers"]) >= 2:
            if not prompt:  # a rerun after a vote: show the answers again
                for col, (name, text) in zip(st.columns(len(last["answers"])), last["answers"].items()):
                    col.markdown(f"**{name}**")
                    col.markdown(text or "_(empty answer)_")
            st.markdown(f"Which answer to *{last['prompt']}* is better?")
            if judge_name != NO_JUDGE:
                judge_block(store, judge_name, last)
            names = list(last["answers"])
            for col, choice in zip(st.columns(len(names) + 1), [*names, None]):
                if col.button(choice or "Tie", key=f"arena:vote:{choice}"):
                    arena.vote(last["prompt"], last["answers"], winner=choice)
                    st.session_state.pop("arena:last")
                    st.toast(f"Vote stored: {choice or 'tie'}")
                    st.rerun()

    st.subheader("Ratings")
    ratings = arena.ratings()
    if not ratings:
        st.caption("No votes yet.")
        return
    st.dataframe(pd.DataFrame(ratings_with_scores(store, ratings)), hide_index=True, width="stretch")
    st.caption(f"{len(arena.votes())} pairwise votes. Elo replays the votes in order (K=32); Bradley-Terry "
               "(bt, and on the Elo scale bt_elo) fits all of them at once. Automatic scores come from the "
               "leaderboard's cache (default suite).")


if __name__ == "__main__":
    main()
