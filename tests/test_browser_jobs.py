"""The Jobs page in a real browser (chromium through Playwright, as ``tests/test_browser.py``), on a
store holding the micro model (``micro``): a quantize job submitted from the page shows its phases
with an ETA while it runs and, once done, its outputs (links to the Models page opened on each) with
their metrics and a log; the app session survives a reload of the page. Screenshots go to
``$LLMLAB_TEST_ARTIFACTS/screenshots`` (default ``tests/artifacts/screenshots``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import AppServer, check_page, open_view, pick, screenshot, settle  # noqa: E402
from playwright.sync_api import Page, expect  # noqa: E402
from test_browser import (ARTIFACTS, JOB_TIMEOUT, SHOTS, chromium, chromium_page,  # noqa: F401  (fixtures)
                          stop_what_the_app_started, timed_module)

from llmlab.store import Store  # noqa: E402

pytestmark = pytest.mark.browser

RECIPE = """name: quantize-micro
steps:
  - quantize: {model: micro, types: [q8_0], texts: prose, qa: none}
"""


@pytest.fixture(scope="module")
def home(timed_module: None, chromium: str, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
         micro_model_dir: Path) -> Iterator[Store]:
    """A store with the micro model; jobs the app started are cancelled at the end."""
    store = Store(tmp_path_factory.mktemp("browser-jobs") / "models")
    store.add(micro_model_dir, "micro")
    yield store
    stop_what_the_app_started(store)


@pytest.fixture(scope="module")
def app(home: Store) -> Iterator[AppServer]:
    with AppServer(home.root, ARTIFACTS / "streamlit-jobs.log") as server:
        yield server


@pytest.fixture(scope="module")
def page(app: AppServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium_page(tmp_path_factory) as page:
        yield page


def session_shown(page: Page) -> str:
    """The app session id the sidebar names."""
    caption = page.get_by_text(re.compile(r"App session \S+: the Jobs page")).first.inner_text()
    return re.search(r"App session (\S+):", caption).group(1)


def test_a_quantize_job_shows_its_phases_then_its_outputs_and_metrics(page: Page, app: AppServer,
                                                                       home: Store) -> None:
    open_view(page, app.url, "jobs")
    pick(page, "Recipe", "(write your own)")
    page.get_by_text("Edit the recipe (YAML)").click()
    editor = page.get_by_role("textbox", name="Recipe (YAML")
    editor.fill(RECIPE)
    editor.press("Control+Enter")
    settle(page)
    check_page(page, "Steps: quantize")
    page.get_by_role("button", name="Submit", exact=True).click()
    expect(page.get_by_text(re.compile(r"Submitted job [\w-]+"))).to_be_visible()
    # while it runs: the step, its phases and the current one's bar with an ETA
    expect(page.get_by_text(re.compile(r"ETA \d+ (s|min)")).first).to_be_visible(timeout=JOB_TIMEOUT)
    check_page(page, "step 1/1 · quantize")
    screenshot(page, SHOTS / "jobs-card-running.png")
    status = page.get_by_test_id("stMarkdownContainer").filter(has_text=re.compile(r"status\s+(done|failed|died)"))
    expect(status).to_have_count(1, timeout=JOB_TIMEOUT)
    assert re.search(r"status\s+done", status.inner_text()), page.get_by_test_id("stAlert").all_inner_texts()
    settle(page)

    # done: each output is a link to the Models page opened on it, beside its metrics
    link = page.get_by_role("link", name="micro-q8_0")
    expect(link).to_be_visible()
    kld = home.get("micro-q8_0").metrics["kld_mean"]
    expect(page.get_by_text(re.compile(r"gguf · perplexity [\d.]+ · KLD vs reference " + re.escape(f"{kld:.4g}")))).to_be_visible()
    expect(page.get_by_role("link", name="micro-f16")).to_be_visible()
    page.get_by_role("tab", name="Log").click()
    expect(page.get_by_text(re.compile(r"scoring micro-q8_0 against micro-f16"))).to_be_visible()
    check_page(page, "quantize: done in")
    screenshot(page, SHOTS / "jobs-card-done.png")

    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Models")
    settle(page)
    assert re.search(r"/models\?.*artifact=micro-q8_0", page.url), page.url
    assert f"session={session_shown(page)}" in page.url


def test_the_app_session_survives_a_reload(page: Page, app: AppServer) -> None:
    open_view(page, app.url, "jobs")
    session = session_shown(page)
    assert f"session={session}" in page.url, page.url
    page.reload(wait_until="domcontentloaded")
    settle(page)
    assert session_shown(page) == session
    page.get_by_text("Export as code").first.click()
    box = page.get_by_role("combobox", name="App session", exact=True)
    expect(box).to_have_value(f"{session} (this one)")
    check_page(page, "Export as code")
    screenshot(page, SHOTS / "jobs-session-after-reload.png")
