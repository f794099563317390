"""The README's two commands: `make test` runs every test CI runs, so it builds what they need."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prerequisites(target: str) -> list[str]:
    match = re.search(rf"^{target}:(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"the Makefile has no '{target}' target"
    return match.group(1).split()


def test_make_test_builds_the_wheelhouse_the_fresh_environment_test_needs():
    # without it, tests/test_fresh_env.py skips: `make test` would not be "every test, exactly as CI does"
    assert "wheelhouse" in _prerequisites("test")
    assert {"install", "chromium"} <= set(_prerequisites("test"))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test         # runs every test, exactly as CI does (.ci/run)" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M) and "make install" in ci
