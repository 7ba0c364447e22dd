"""Errors a user can cause; the command line turns them into one sentence and exit 2."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad name or value in a configuration; the message lists the valid choices."""


class MissingInputError(Exception):
    """Data or weights a run needs are not on this machine; the message says where to
    get them. Concrete errors also derive from the builtin their callers catch
    (``FileNotFoundError``, ``RuntimeError``)."""
