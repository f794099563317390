"""Make the README's pictures of the app from a real store, in a real browser (Debian's chromium).

    python scripts/screenshots.py --home /tmp/demo-home --out docs/images

The store is copied to a temporary folder first (the app and its chats never touch ``--home``), the app
is served from it on a free 127.0.0.1 port, and chromium saves four full-page PNGs to ``--out``:
``home.png``, ``models-chat.png`` (the chat-able model that answered the most scored questions right, asked one
of them), ``arena.png`` (the Arena's first two variants answering the same question) and
``leaderboard.png`` (after an ``evaluate`` job, started from the page, has scored what the copy lacks;
``--no-score`` skips it). It uses the same helpers as the browser tests (``tests/browser.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FALLBACK_QUESTION = "Who are you?"


def _browser() -> ModuleType:
    """``tests/browser.py`` (the tests folder is not a package, and the script adds nothing to sys.path)."""
    spec = importlib.util.spec_from_file_location("llmlab_browser", ROOT / "tests" / "browser.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chat_models(home: Path) -> list[tuple[str, str]]:
    """(name, a question) for each model the app can chat with, those that answered the most scored questions
    right first; the question is one the model answered right when it was scored, if any."""
    from llmlab.runtime import KIND_ENGINES
    from llmlab.store import Store

    found = []
    for art in Store(home).list():
        if art.kind not in KIND_ENGINES:
            continue
        examples = art.metrics.get("accuracy_examples") or []
        right = [e["question"] for e in examples if isinstance(e, dict) and e.get("ok") and e.get("question")]
        found.append((-len(right), art.name, right[0] if right else FALLBACK_QUESTION))
    return [(name, question) for _, name, question in sorted(found)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="the store to picture (copied, never changed)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1280, help="browser window width in pixels")
    parser.add_argument("--no-score", dest="score", action="store_false",
                        help="picture the leaderboard as it is, without scoring what is missing first")
    parser.add_argument("--score-timeout", type=float, default=900, help="seconds to wait for the scoring job")
    args = parser.parse_args(argv)
    if not args.home.is_dir():
        parser.error(f"--home {args.home} is not a folder: give a store (an LLMLAB_HOME folder).")

    from playwright.sync_api import expect, sync_playwright

    # a SIGTERM (e.g. from `timeout`) unwinds the with-blocks, so the app server and chromium are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = _browser()
    with tempfile.TemporaryDirectory(prefix="llmlab-shots-") as tmp:
        home = Path(tmp) / "models"
        shutil.copytree(args.home, home, symlinks=True, ignore=shutil.ignore_patterns(".jobs", ".tmp", ".locks",
                                                                                        ".serve", "*.tar.gz"))
        models = chat_models(home)
        if not models:
            parser.error(f"{args.home} holds no model to chat with: run the quickstart into it first.")
        shots: list[Path] = []
        with b.AppServer(home, Path(tmp) / "streamlit.log") as app, sync_playwright() as p:
            context = b.launch_chromium(p, Path(tmp) / "profile", width=args.width, height=800)
            context.set_default_timeout(120_000)
            page = context.new_page()

            b.open_view(page, app.url, "")
            b.check_page(page, b.VIEWS[""])
            shots.append(b.screenshot(page, args.out / "home.png"))

            name, question = models[0]
            b.open_view(page, app.url, "models")
            b.pick(page, "Artifact", name)
            b.chat(page, f"Ask {name} something", question)
            b.assistant_reply(page)
            b.settle(page)
            b.check_page(page, f"Chat with {name}")
            shots.append(b.screenshot(page, args.out / "models-chat.png"))

            if len(models) >= 2:
                b.open_view(page, app.url, "arena")
                b.chat(page, "Ask every chosen variant", question)
                expect(page.get_by_text("Which answer to")).to_be_visible()
                b.check_page(page, "Which answer to")
                shots.append(b.screenshot(page, args.out / "arena.png"))

            b.open_view(page, app.url, "leaderboard")
            missing = page.get_by_role("button", name=re.compile(r"^Score what is missing"))
            if args.score and missing.count():  # score in the copy, so the table and charts have numbers
                missing.click()
                expect(page.get_by_text(re.compile(r"Started job"))).to_be_visible()
                # the page shows scores when it is opened again after the job (it does not poll)
                deadline = time.monotonic() + args.score_timeout
                while missing.count() and time.monotonic() < deadline:
                    page.wait_for_timeout(3000)
                    b.open_view(page, app.url, "leaderboard")
                if missing.count():
                    raise SystemExit(f"scoring did not finish within {args.score_timeout:.0f} s")
            b.check_page(page, "Leaderboard")
            shots.append(b.screenshot(page, args.out / "leaderboard.png"))
            context.close()
    for shot in shots:
        print(f"{shot}  {shot.stat().st_size / 1e3:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
