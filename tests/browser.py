"""Helpers for driving the Streamlit app in a real browser (Debian's chromium through Playwright).

``AppServer`` runs ``streamlit run app/streamlit_app.py`` on a free 127.0.0.1 port in its own process
group with ``LLMLAB_HOME`` pointing at a store, and waits for ``/_stcore/health``; ``launch_chromium``
starts a headless chromium with a fresh profile and no background networking; ``open_view`` goes to a
page and waits until Streamlit's script run has settled; ``check_page`` asserts there is no exception
box and that a page-specific text is shown; ``screenshot`` saves a full-page PNG.

Used by ``tests/test_browser.py`` and ``scripts/screenshots.py``::

    with AppServer(home) as app, sync_playwright() as p:
        context = launch_chromium(p, profile_dir)
        page = context.new_page()
        open_view(page, app.url, "models")
        check_page(page, "Models")
        screenshot(page, out_dir / "models.png")

This module does not import pytest, so the screenshot script can load it too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlab.serve.process import free_port

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page, Playwright

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app" / "streamlit_app.py"
# Without the background-networking flags chromium keeps trying to reach Google on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NO_BROWSER = "LLMLAB_NO_BROWSER"
# The URL path of each page in app/views (Streamlit uses the file's stem) and a text that only it shows.
VIEWS = {"": "A workbench for open LLMs", "models": "Models", "jobs": "Jobs", "tune": "Tune",
         "quantize": "Quantize", "merge": "Merge", "agents": "Agents", "leaderboard": "Leaderboard",
         "arena": "Arena", "export": "Export"}
SETTLED = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# Grey placeholders shown while an element's lazily loaded code arrives (tables, JSON, chat inputs).
LOADING = ('[data-testid="stSkeleton"], [data-testid="stSkeletonElement"], [data-testid="stAppSkeleton"], '
           '[data-testid="stVegaLiteChart"]:not(:has(canvas, svg))')  # charts draw after the run
EXCEPTION = '[data-testid="stException"]'
ASSISTANT = '[data-testid="stChatMessage"]:has([data-testid="stChatMessageAvatarAssistant"])'


def chromium_path() -> str:
    """Debian's chromium, or an error that says how to install it (CI must not skip silently)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("chromium is not installed: `apt-get install -y --no-install-recommends chromium` "
                           f"(`.ci/run` does this), or set {NO_BROWSER}=1 to skip the browser tests.")
    return path


class AppServer:
    """The app served from a subprocess for one store; a context manager that kills its process group."""

    def __init__(self, home: Path, log: Path, *, env: dict[str, str] | None = None, timeout: float = 90) -> None:
        self.home, self.log, self.timeout = Path(home), Path(log), timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "LLMLAB_HOME": str(self.home), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AppServer:
        cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.port", str(self.port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit did not answer /_stcore/health within {self.timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the app's process group (jobs it started run in their own groups), then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def launch_chromium(p: Playwright, profile_dir: Path, *, width: int = 1400, height: int = 900) -> BrowserContext:
    """Headless chromium with a fresh profile in ``profile_dir``; close the context to end it."""
    return p.chromium.launch_persistent_context(
        str(profile_dir), executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True,
        viewport={"width": width, "height": height}, timezone_id="UTC", locale="en-US")


def settle(page: Page, timeout: float = 60) -> None:
    """Wait until the app's script run has finished and its elements are drawn (a fragment's timer may
    start another run later)."""
    from playwright.sync_api import expect

    page.locator(SETTLED).wait_for(timeout=timeout * 1000)
    expect(page.locator(LOADING)).to_have_count(0, timeout=timeout * 1000)


def open_view(page: Page, url: str, view: str, timeout: float = 60) -> None:
    """Go to the page ``view`` (its URL path, "" for Home) and wait for its first run to finish."""
    page.goto(f"{url}/{view}", wait_until="domcontentloaded")
    page.locator('[data-testid="stMain"]').wait_for(timeout=timeout * 1000)
    settle(page, timeout)


def check_page(page: Page, text: str, timeout: float = 30) -> None:
    """The page shows ``text`` and no Streamlit exception box."""
    from playwright.sync_api import expect

    expect(page.get_by_text(text, exact=False).first).to_be_visible(timeout=timeout * 1000)
    errors = page.locator(EXCEPTION)
    assert errors.count() == 0, "the page shows an exception:\n" + "\n".join(errors.all_inner_texts())


def screenshot(page: Page, path: Path) -> Path:
    """A full-page PNG at ``path`` (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Streamlit scrolls inside its main area, not the document, so full_page alone would cut the page at
    # the window's height: grow the window to the content for the picture, then restore it.
    size = page.viewport_size or {"width": 1400, "height": 900}
    try:
        height = 0
        for _ in range(3):  # a taller window can draw more (lazy charts), so measure again
            settle(page)
            new = max(size["height"], min(int(page.evaluate(_CONTENT_HEIGHT)), 12_000))
            if new == height:
                break
            height = new
            page.set_viewport_size({"width": size["width"], "height": height})
        page.screenshot(path=str(path), full_page=True, animations="disabled")
    finally:
        page.set_viewport_size(size)
    return path


# The height of the scrolling areas that hold the page's content and the sidebar (not inner ones, e.g. a table's).
_CONTENT_HEIGHT = """() => {
    const parts = ['[data-testid="stMainBlockContainer"]', '[data-testid="stSidebarContent"]']
        .map(q => document.querySelector(q)).filter(Boolean);
    const scrollers = Array.from(document.querySelectorAll('*')).filter(e =>
        /(auto|scroll)/.test(getComputedStyle(e).overflowY) && parts.some(p => e.contains(p)));
    return Math.max(document.documentElement.scrollHeight, ...scrollers.map(e => e.scrollHeight));
}"""


def chat(page: Page, placeholder: str, text: str) -> None:
    """Type ``text`` into the chat input whose placeholder starts with ``placeholder`` and send it."""
    box = page.get_by_placeholder(placeholder, exact=False)
    box.fill(text)
    box.press("Enter")


def pick(page: Page, label: str, option: str) -> None:
    """Choose ``option`` in the selectbox labelled ``label`` and wait for the rerun."""
    from playwright.sync_api import expect

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_role("combobox", name=label, exact=True)
    for attempt in range(3):  # a rerun of the page while the list is open closes it: wait, open it again
        if box.input_value() == option:  # typing the current value would not open the list
            break
        box.click()
        box.fill(option)  # filters the list, so the option is drawn even in a long one
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=20_000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
            settle(page)
    expect(box).to_have_value(option)
    settle(page)


def assistant_reply(page: Page, index: int = -1, timeout: float = 180) -> str:
    """The text of an assistant chat message once it has a word in it (replies stream in)."""
    import re

    from playwright.sync_api import expect

    message = page.locator(ASSISTANT).nth(index)
    expect(message).to_have_text(re.compile(r"\w"), timeout=timeout * 1000)
    return message.inner_text()
