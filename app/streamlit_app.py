"""llmlab's Streamlit app: the entry point (`streamlit run app/streamlit_app.py`).

It only sets up navigation over the pages in ``app/views/`` (deliberately not a folder named
``pages/``, which would switch on Streamlit's legacy multipage mode) and a sidebar naming the
store. Each page lays out widgets and calls the llmlab API; long work runs as jobs.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from llmlab.store import Store
from widgets import session_id

VIEWS = Path(__file__).parent / "views"

st.set_page_config(page_title="llmlab", page_icon=":material/science:", layout="wide")

page = st.navigation(
    {
        "Lab": [st.Page(VIEWS / "home.py", title="Home", icon=":material/home:", default=True)],
        "Store": [st.Page(VIEWS / "models.py", title="Models", icon=":material/inventory_2:")],
        "Work": [st.Page(VIEWS / "jobs.py", title="Jobs", icon=":material/play_circle:")],
        "Stations": [st.Page(VIEWS / "tune.py", title="Tune", icon=":material/tune:"),
                     st.Page(VIEWS / "quantize.py", title="Quantize", icon=":material/compress:"),
                     st.Page(VIEWS / "merge.py", title="Merge", icon=":material/merge:"),
                     st.Page(VIEWS / "agents.py", title="Agents", icon=":material/smart_toy:"),
                     st.Page(VIEWS / "leaderboard.py", title="Leaderboard", icon=":material/leaderboard:"),
                     st.Page(VIEWS / "arena.py", title="Arena", icon=":material/swords:"),
                     st.Page(VIEWS / "export.py", title="Export", icon=":material/rocket_launch:")],
    }
)

with st.sidebar:
    st.caption("Store (`$LLMLAB_HOME`)")
    st.code(str(Store().root), language=None)
    st.caption(f"App session `{session_id()}`: the Jobs page exports its jobs as code.")

page.run()
