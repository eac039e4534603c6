"""User-facing errors: one clear line, no traceback."""

from __future__ import annotations


class PneumoError(Exception):
    """A mistake in the user's input (data, flags, files) that the CLI reports in one line."""


class NonFiniteLossError(PneumoError):
    """A fold's training loss became NaN or infinite."""
