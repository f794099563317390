"""Errors a user sees: one sentence on what is wrong, one on how to fix it.

Every failure that comes from the user's input (a recipe, a file, a name, a setting) is raised
as an ``LlmlabError``. The CLI prints it as one line (the traceback only with ``--debug``) and
exits with the error's ``exit_code``; the app shows it as an error box.
"""

from __future__ import annotations


class LlmlabError(Exception):
    """A problem the user can fix. ``hint`` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(LlmlabError):
    """A recipe, flag or form value that does not validate."""

    exit_code = 2


class NotFoundError(LlmlabError):
    """A model, file or job that does not exist."""

    exit_code = 3


class StoreError(LlmlabError):
    """The store is inconsistent, tampered with, or busy."""

    exit_code = 4


class CorruptFileError(StoreError):
    """A model file that is truncated or not what its name says."""


class MissingExtraError(LlmlabError):
    """An optional dependency is not installed."""

    exit_code = 5

    def __init__(self, feature: str, extra: str, package: str | None = None):
        what = f" ({package})" if package else ""
        super().__init__(
            f"{feature} needs an optional dependency{what} that is not installed.",
            f"Install it with: pip install 'llmlab[{extra}]'",
        )


class ResourceError(LlmlabError):
    """Not enough memory or disk for the requested work."""

    exit_code = 6
