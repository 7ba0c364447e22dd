"""The Fisher of the task just trained, as the Fisher-based mergers (``pm``, ``cofima``) see it.

:func:`task_fisher` is F_t: the diagonal Fisher (:func:`clmerge.tensormath.fisher.
diagonal_fisher`) of the model at theta*_t (the merge driver makes the model hold
theta*_t densely while a merger runs) on experience t's training data, through the
current head's logits (``ctx.task.logits_fn``), with respect to the mergeable weights, keyed
like them (``ctx.weights``).

Which samples (``sampling``):

- ``"stratified"``: at most ``max_samples`` training samples of the task, drawn without
  replacement by a seeded shuffle, stratified by class (:func:`stratified_order`): each
  class gets a share of the sample proportional to its share of the task's training
  data (largest remainders, ties broken at random), and the drawn samples are
  interleaved so that every batch is itself close to stratified, which matters for the
  ``per_batch`` form. The draw is seeded by the run's seed and the experience index
  (:func:`fisher_rng`), so a run is reproducible and different seeds see different
  samples.
- ``"sequential"``: the first ``max_samples`` samples in the stream's stored order (the
  earlier behaviour, kept for reproducing results computed with it). Streams store a
  task class by class, so the first samples may all be of one class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clmerge.mergers.base import MergeContext, parameter_names
from clmerge.tensormath.fisher import diagonal_fisher
from clmerge.tensormath.tensordict import TensorDict

# bytes of float32 per-sample gradients held at once by torch.func (ViT-B/16's K/V
# targets: 25 samples)
PER_SAMPLE_BUDGET = 2 * 2**30

SAMPLINGS = ("stratified", "sequential")
# distinguishes the Fisher's random stream from the run's other seeded draws
FISHER_STREAM = 0xF15E


def fisher_rng(seed: int, t: int) -> np.random.Generator:
    """The generator of experience ``t``'s Fisher sample in a run with ``seed``."""
    return np.random.default_rng([int(seed), int(t), FISHER_STREAM])


def stratified_order(targets: Sequence[int], n: int, rng: np.random.Generator) -> list[int]:
    """Indices of a class-stratified sample of min(n, len(targets)) items, interleaved.

    Class c with N_c of the N items gets q_c = floor(n N_c / N) items plus one for the
    classes with the largest remainders (ties in random order), so sum_c q_c = n and
    |q_c - n N_c / N| < 1. Within a class the items are a uniformly random subset. Item
    i (0-based) of class c gets the position key (i + u) / q_c, u ~ U[0, 1), and the
    sample is sorted by key: every class is spread evenly over the order, so any run
    of B consecutive items holds about B q_c / n items of class c.
    """
    y = np.asarray(list(targets))
    if n < 1:
        raise ValueError(f"sample size must be >= 1; got {n}")
    if len(y) == 0:
        raise ValueError("no training samples to draw the Fisher sample from")
    n = min(n, len(y))
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / len(y)
    quota = np.floor(exact).astype(int)
    remainder = n - int(quota.sum())
    by_remainder = np.lexsort((rng.random(len(classes)), -(exact - quota)))
    quota[by_remainder[:remainder]] += 1
    picked, keys = [], []
    for c, q in zip(classes, quota):
        if q == 0:
            continue
        members = np.flatnonzero(y == c)
        picked.append(rng.permutation(members)[:q])
        keys.append((np.arange(q) + rng.random(q)) / q)
    picked, keys = np.concatenate(picked), np.concatenate(keys)
    return picked[np.argsort(keys, kind="stable")].tolist()


def task_fisher(ctx: MergeContext, mode: str = "per_sample",
                max_samples: int | None = None, *, engine: str = "vmap",
                estimator: str = "empirical", sampling: str = "sequential",
                batch_size: int | None = None) -> TensorDict:
    """F_t at theta*_t on task t's training data, keyed like ``ctx.weights``.

    Args:
        ctx: the merge context (``model``, ``weights``, ``task.batches``,
            ``task.logits_fn``; ``task.targets`` and ``task.seed`` for stratified
            sampling).
        mode: ``per_sample`` (textbook) or ``per_batch`` (cheaper approximation); see
            :mod:`clmerge.tensormath.fisher`.
        max_samples: cap on the training samples used (None: all of them).
        engine, estimator: see :func:`clmerge.tensormath.fisher.diagonal_fisher`.
        sampling: ``stratified`` or ``sequential`` (module docstring).
        batch_size: samples per forward/backward pass (None: the training batch size).

    Per-sample gradients of the ``vmap`` engine are computed in chunks that keep them
    under ``PER_SAMPLE_BUDGET`` bytes (the result does not depend on the chunking).
    """
    task = ctx.task
    if ctx.model is None or task.batches is None:
        raise ValueError("task_fisher needs the merge context's model and task batches")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}; got {sampling!r}")
    model_names = parameter_names(ctx.model, ctx.weights)
    n_params = sum(p.numel() for p in ctx.weights.values())
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    if sampling == "stratified":
        if task.targets is None:
            raise ValueError("stratified Fisher sampling needs the task's targets")
        targets = task.targets()
        order = stratified_order(targets, max_samples or len(targets),
                                 fisher_rng(task.seed, ctx.t))
        batches = task.batches(indices=order, **kwargs)
    else:
        batches = task.batches(**kwargs)
    f = diagonal_fisher(ctx.model, list(model_names.values()), batches,
                        logits_fn=task.logits_fn, mode=mode, max_samples=max_samples,
                        chunk_size=max(1, PER_SAMPLE_BUDGET // (4 * n_params)),
                        engine=engine, estimator=estimator)
    return {k: f[n] for k, n in model_names.items()}
