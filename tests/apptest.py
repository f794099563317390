"""Helpers for the Streamlit AppTest tests of every page (imported by the test_*page modules)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
HOME = "views/home.py"


def open_page(page: str, timeout: float = 60) -> AppTest:
    """Run the app, switch to ``page`` and check that nothing raised."""
    at = AppTest.from_file(str(APP), default_timeout=timeout)
    at.run()
    if page != HOME:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    """Everything the page wrote as markdown, captions, alerts and code, joined."""
    parts = [*at.markdown, *at.caption, *at.info, *at.success, *at.error, *at.warning, *at.code]
    return "\n".join(str(p.value) for p in parts)
