"""Merger registry: ``@register_merger(name)`` on a Merger subclass adds it."""

from __future__ import annotations

from clmerge.mergers.base import Merger

MERGERS: dict[str, type[Merger]] = {}


def register_merger(name: str):
    def deco(cls: type[Merger]) -> type[Merger]:
        if name in MERGERS:
            raise ValueError(f"merger {name!r} is registered twice")
        cls.name = name
        MERGERS[name] = cls
        return cls
    return deco


def load_builtin_mergers() -> None:
    """Import the built-in merger modules (each registers itself)."""
    from clmerge.mergers import pm, sequential  # noqa: F401
    from clmerge.mergers import (average, cofima, coma, dare, magmax,  # noqa: F401
                                 regularized, task_arithmetic, ties, trm)
