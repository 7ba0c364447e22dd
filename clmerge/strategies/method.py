"""The interface every method implements, merging or not.

A method is built from its spec, its typed options and the run's
:class:`~clmerge.strategies.context.RunContext` (``Method(spec, options, ctx)``), then
:meth:`Method.run` trains and evaluates: it yields one row of the accuracy matrices
(class-incremental, task-incremental) at a time, and the caller decides what to do
between rows (the runner writes a checkpoint). Afterwards :meth:`Method.records` gives
the per-task records of the result file. A method whose state a checkpoint can hold
names the objects that carry it (:meth:`Method.checkpointed`); a run of it resumes after
the last row it checkpointed, ``run(ctx, start)`` training from experience ``start``.
"""

from __future__ import annotations

from typing import ClassVar, Iterator

Row = tuple[list[float], list[float]]


class Method:
    """Base class: ``kind`` names the family (``merge``, ``joint``, ``probe``, ``nmc``)."""

    kind: ClassVar[str] = ""

    def run(self, ctx, start: int = 0) -> Iterator[Row]:
        """Rows of R and R_til, the first for experience ``start``, in order."""
        raise NotImplementedError

    def records(self) -> list[dict]:
        """Per-task records of the rows :meth:`run` yielded."""
        raise NotImplementedError

    def checkpointed(self) -> dict[str, object] | None:
        """The objects whose state a checkpoint holds, by a stable name (None: the method
        is not resumed, it reruns from the start)."""
        return None
