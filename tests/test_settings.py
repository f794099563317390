"""Settings read from the environment: the warning when other work holds llama.cpp's cores."""

from __future__ import annotations

import logging

import pytest

from llmlab import settings


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine whose 1-minute load average the test sets."""
    monkeypatch.delenv("LLMLAB_THREADS", raising=False)
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    settings.warn_if_cores_busy.cache_clear()
    yield lambda load: monkeypatch.setattr(settings.os, "getloadavg", lambda: (load, load, load))
    settings.warn_if_cores_busy.cache_clear()


def _warned(caplog) -> bool:
    settings.warn_if_cores_busy.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmlab"):
        settings.warn_if_cores_busy()
    return any("LLMLAB_THREADS=1" in r.getMessage() for r in caplog.records)


def test_a_busy_machine_gets_a_warning_naming_the_fix(machine, caplog, monkeypatch):
    machine(2.8)
    assert _warned(caplog)
    assert "load 2.8 on 2 cores" in caplog.records[0].getMessage()
    machine(1.5)  # our own threads fit beside the other work: no warning
    assert not _warned(caplog)
    machine(2.8)
    monkeypatch.setenv("LLMLAB_THREADS", "2")  # the user chose: say nothing
    assert not _warned(caplog)
