"""The Streamlit app in a real browser: Debian's chromium driven by Playwright against ``streamlit run`` on a
free local port, one app server per module over a store holding the micro model (``micro-hf``) and its
GGUF (``micro-f16``).

Every page in app/views is visited and checked for a page-specific text and no exception box; then a job
is submitted on Jobs and watched to "done", the Models page chats with a model, the Arena compares two
variants and takes a vote, and the Export page exports a GGUF bundle, starts its server and chats with it
over HTTP. A full-page screenshot of each step goes to ``$LLMLAB_TEST_ARTIFACTS/screenshots`` (default
``tests/artifacts/screenshots``), beside the app's log.

chromium must be installed (``.ci/run`` installs Debian's package): without it these tests fail, unless
``LLMLAB_NO_BROWSER=1`` says to skip them.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("LLMLAB_NO_BROWSER") == "1":
    pytest.skip("LLMLAB_NO_BROWSER=1: the browser tests are switched off", allow_module_level=True)
pytest.importorskip("llama_cpp")  # the GGUF variant, its chat and its bundle server

from browser import (VIEWS, AppServer, assistant_reply, chat, check_page, chromium_path,  # noqa: E402
                     launch_chromium, open_view, pick, screenshot, settle)
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from llmlab.store import Store  # noqa: E402

pytestmark = pytest.mark.browser

ARTIFACTS = Path(os.environ.get("LLMLAB_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
SHOTS = ARTIFACTS / "screenshots"
JOB_TIMEOUT = 180_000  # ms: a job's subprocess imports torch and trains on a shared CPU


@pytest.fixture(scope="module")
def timed_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints the module's time (app, browser and all tests) past pytest's output capture."""
    started = time.perf_counter()
    yield
    line = f"== test_browser: {time.perf_counter() - started:.0f} s for the module"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        sys.stderr.write(f"\n{line}\n")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium: missing, the tests fail at once with how to install it (CI must not skip them)."""
    return chromium_path()


@pytest.fixture(scope="module")
def home(timed_module: None, chromium: str, tmp_path_factory: pytest.TempPathFactory, micro_model_dir: Path,
         micro_gguf) -> Iterator[Store]:
    """A store with two chat-able variants; servers and jobs the app started are stopped at the end."""
    store = Store(tmp_path_factory.mktemp("browser") / "models")
    store.add(micro_model_dir, "micro-hf")
    store.add(micro_gguf("f16"), "micro-f16")
    yield store
    stop_what_the_app_started(store)


def stop_what_the_app_started(store: Store) -> None:
    """Stop the servers and cancel the jobs the app started from ``store`` (a ``home`` fixture's end)."""
    from llmlab.jobs import FINAL, JobQueue
    from llmlab.serve import process

    process.stop_all(store)
    queue = JobQueue(store)
    for job in queue.list():
        if job.status not in FINAL:
            queue.cancel(job.id)


@contextlib.contextmanager
def chromium_page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A page of a headless chromium with a fresh profile and waits that suit a loaded CI machine."""
    with sync_playwright() as p:
        context = launch_chromium(p, tmp_path_factory.mktemp("chromium-profile"))
        context.set_default_timeout(60_000)  # actions; `expect` has its own 5 s default, raised below
        expect.set_options(timeout=60_000)  # a page's rerun after a click can take seconds on a loaded CI machine
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def app(home: Store) -> Iterator[AppServer]:
    with AppServer(home.root, ARTIFACTS / "streamlit.log") as server:
        yield server


@pytest.fixture(scope="module")
def page(app: AppServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium_page(tmp_path_factory) as page:
        yield page


def test_every_view_is_visited() -> None:
    pages = {p.stem for p in (Path(__file__).parents[1] / "app" / "views").glob("*.py") if p.stem != "__init__"}
    assert pages == {view or "home" for view in VIEWS}, "add the new page to browser.VIEWS"


@pytest.mark.parametrize("view", list(VIEWS))
def test_every_page_renders(page: Page, app: AppServer, view: str) -> None:
    open_view(page, app.url, view)
    check_page(page, VIEWS[view])
    expect(page.get_by_role("heading", level=1)).to_have_text(VIEWS[view] if view else "llmlab")
    screenshot(page, SHOTS / f"page-{view or 'home'}.png")


def test_job_runs_to_done(page: Page, app: AppServer, home: Store) -> None:
    open_view(page, app.url, "jobs")
    pick(page, "Recipe", "(write your own)")
    page.get_by_text("Edit the recipe (YAML)").click()  # the editor is collapsed by default
    expect(page.get_by_role("textbox", name="Recipe (YAML")).to_have_value(re.compile("size: micro"))
    page.get_by_role("button", name="Submit", exact=True).click()
    expect(page.get_by_text(re.compile(r"Submitted job [\w-]+"))).to_be_visible()
    status = page.get_by_test_id("stMarkdownContainer").filter(has_text=re.compile(r"status\s+(done|failed|died)"))
    expect(status).to_have_count(1, timeout=JOB_TIMEOUT)
    screenshot(page, SHOTS / "jobs-done.png")
    assert re.search(r"status\s+done", status.inner_text()), page.get_by_test_id("stAlert").all_inner_texts()
    assert home.get("micro").kind == "base"
    check_page(page, "step 1/1")


def test_models_page_chat(page: Page, app: AppServer) -> None:
    open_view(page, app.url, "models")
    pick(page, "Artifact", "micro-f16")
    expect(page.get_by_role("heading", name="Chat with micro-f16")).to_be_visible()
    chat(page, "Ask micro-f16 something", "Where does Bodo live?")
    expect(page.get_by_test_id("stChatMessage").first).to_contain_text("Where does Bodo live?")
    assert assistant_reply(page).strip()
    settle(page)
    check_page(page, "Chat with micro-f16")
    screenshot(page, SHOTS / "models-chat.png")


def test_arena_compares_two_variants(page: Page, app: AppServer) -> None:
    open_view(page, app.url, "arena")
    # two variants are chosen by default (which two depends on what earlier tests added to the store)
    expect(page.get_by_test_id("stMultiSelect")).to_contain_text(re.compile(r"micro.*micro"))
    chat(page, "Ask every chosen variant", "Who are you?")
    expect(page.get_by_text("Which answer to")).to_be_visible(timeout=JOB_TIMEOUT)
    check_page(page, "Which answer to")
    screenshot(page, SHOTS / "arena-answers.png")
    page.get_by_role("button", name="Tie", exact=True).click()
    expect(page.get_by_text("1 pairwise votes")).to_be_visible()
    expect(page.get_by_text("Which answer to")).to_have_count(0)
    check_page(page, "Ratings")
    screenshot(page, SHOTS / "arena-ratings.png")


def test_export_bundle_and_serve(page: Page, app: AppServer, home: Store) -> None:
    open_view(page, app.url, "export")
    pick(page, "Model", "micro-f16")  # not the first model: its defaults must follow the choice
    expect(page.get_by_role("textbox", name="Bundle name")).to_have_value("micro-f16-bundle")
    expect(page.get_by_role("checkbox", name="Parity check")).to_be_checked()
    page.get_by_role("button", name="Export", exact=True).click()
    expect(page.get_by_text(re.compile(r"Started job [\w-]+: export micro-f16"))).to_be_visible()
    # when the job ends the page reruns and lists the bundle with its parity result
    expect(page.get_by_text(re.compile(r"Parity.*: ok"))).to_be_visible(timeout=JOB_TIMEOUT)
    assert home.get("micro-f16-bundle").kind == "bundle"
    page.get_by_role("button", name="Start server").click()
    expect(page.get_by_text(re.compile(r"Serving micro-f16-bundle at http://127\.0\.0\.1:\d+/v1"))).to_be_visible(
        timeout=JOB_TIMEOUT)
    settle(page)
    chat(page, "Ask micro-f16-bundle (over HTTP)", "Where does Bodo live?")
    assert assistant_reply(page).strip()
    settle(page)
    # the live metrics table (a canvas grid: its cells are in the DOM for screen readers, not visible)
    answered = page.locator('[data-testid="stDataFrame"] tr:has(td:text-is("chat requests answered")) td')
    expect(answered.nth(1)).to_have_text(re.compile(r"^1(\.0)?$"), timeout=30_000)
    check_page(page, "Serving micro-f16-bundle")
    screenshot(page, SHOTS / "export-served.png")
    page.get_by_role("button", name="Stop server").click()
    expect(page.get_by_role("button", name="Start server")).to_be_visible()
