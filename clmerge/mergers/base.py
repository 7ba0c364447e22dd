"""The merger interface shared by every method.

After experience t the pipeline hands a merger a :class:`MergeContext` and writes the
tensors it returns into the model's mergeable weights in place (``p.copy_``), so the
optimizer and the evaluator keep valid references. Mergeable weights are the LoRA target
weights (LoRA fine-tuning) or every backbone parameter (full fine-tuning); heads are
never merged.

A merger keeps whatever it needs between tasks as its own state and reports its size
with :meth:`Merger.state_bytes`: storage across tasks is one of the axes methods are
compared on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from clmerge.tensormath.tensordict import TensorDict


@dataclass
class Observations:
    """What the training-time plugins observed while task t trained, for the merge of
    task t (written by :mod:`clmerge.plugins.trajectory` and
    :mod:`clmerge.plugins.diagnostics`; emptied after every merge).

    Attributes:
        trajectory: snapshots of the task's update at evenly spaced steps (the last
            point, theta*_t, is not among them).
        recent_batches: the last training minibatches, (x, y), as the loader served them.
        g0_series: the dense gradient norm |dL/dW| of each of the task's first steps.
    """

    trajectory: list[TensorDict] = field(default_factory=list)
    recent_batches: list[tuple] = field(default_factory=list)
    g0_series: list[float] = field(default_factory=list)

    def clear(self) -> None:
        self.trajectory = []
        self.recent_batches = []
        self.g0_series = []


@dataclass(frozen=True)
class TaskData:
    """The data of experience t a merger may read, besides weights.

    Attributes:
        batches: a callable returning an iterable of (x, y) minibatches of experience
            t's training data (for Fisher-based mergers); ``batches(indices=...,
            batch_size=...)`` yields only the samples at those indices of the
            experience's training set, in that order.
        targets: a callable returning the class label of every training sample of
            experience t (by index), e.g. to draw a stratified sample.
        logits_fn: callable (model, x) -> logits restricted to experience t's head.
        seed: the run's seed, for mergers that draw samples (combined with ``t``).
        trajectory, recent_batches, g0_series: what the training-time plugins
            observed (:class:`Observations`; empty when no plugin recorded it).
    """

    batches: Callable[..., Iterable] | None = None
    targets: Callable[[], Sequence[int]] | None = None
    logits_fn: Callable | None = None
    seed: int = 0
    trajectory: Sequence[TensorDict] = ()
    recent_batches: Sequence[tuple] = ()
    g0_series: Sequence[float] = ()


@dataclass
class MergeContext:
    """Everything a merger may read after experience ``t`` (0-based).

    Attributes:
        t: index of the experience just trained.
        theta0: pretrained values of the mergeable weights (kept by the pipeline, not
            counted as merger state: it is the public starting point).
        merged: theta_hat_{t-1}, the merged model before this merge.
        start: the weights training of experience t started from (``merged`` unless
            the ``finetuned`` start protocol is used).
        finetuned: theta*_t, the weights at the end of training experience t.
        model: the model (its mergeable weights currently hold ``finetuned``).
        weights: the mergeable weight parameters of ``model``, by the same keys.
        task: experience t's data and what training observed (:class:`TaskData`).
    """

    t: int
    theta0: TensorDict
    merged: TensorDict
    start: TensorDict
    finetuned: TensorDict
    model: Any = None
    weights: dict = field(default_factory=dict)
    task: TaskData = field(default_factory=TaskData)


def parameter_names(module, weights: dict) -> dict[str, str]:
    """Key of ``weights`` -> name of the same parameter object inside ``module`` (for
    ``torch.func.functional_call`` and friends)."""
    names = {id(p): n for n, p in module.named_parameters()}
    missing = [k for k, p in weights.items() if id(p) not in names]
    if missing:
        raise ValueError(f"mergeable weights not in {type(module).__name__}: {missing[:3]}")
    return {k: names[id(p)] for k, p in weights.items()}


def check_choice(value, name: str, choices) -> None:
    """Raise ValueError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def check_finite(value: float, name: str) -> None:
    """Raise ValueError when ``value`` is not a finite number."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value}")


class Merger:
    """Base class. Subclasses optionally set ``Options`` (a dataclass of method options
    with help text) and implement :meth:`merge`; a method declares the merger class in
    :mod:`clmerge.strategies.methods`.

    ``options`` defaults to ``Options()`` (None when the merger has no options).
    """

    Options: ClassVar[type | None] = None

    def __init__(self, options=None):
        if options is None and self.Options is not None:
            options = self.Options()
        self.options = options
        self.records: list[dict] = []

    def merge(self, ctx: MergeContext) -> TensorDict:
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes this merger keeps across tasks (0 when it keeps nothing)."""
        return 0

    def record(self, **values) -> None:
        """Record per-task values (e.g. merge coefficients) for the result file."""
        self.records.append(values)
