"""The Fisher of the task just trained, as the Fisher-based mergers (``pm``, ``cofima``) see it.

:func:`task_fisher` is F_t: the diagonal empirical Fisher (:func:`clmerge.tensormath.fisher.
diagonal_fisher`) of the model at theta*_t (the merge driver makes the model hold
theta*_t densely while a merger runs) on experience t's training data, through the
current head's logits (``ctx.logits_fn``), with respect to the mergeable weights, keyed
like them (``ctx.weights``).
"""

from __future__ import annotations

from clmerge.mergers.base import MergeContext, parameter_names
from clmerge.tensormath.fisher import diagonal_fisher
from clmerge.tensormath.tensordict import TensorDict


# bytes of float32 per-sample gradients held at once (ViT-B/16's K/V targets: 25 samples)
PER_SAMPLE_BUDGET = 2 * 2**30


def task_fisher(ctx: MergeContext, mode: str = "per_sample",
                max_samples: int | None = None) -> TensorDict:
    """F_t at theta*_t on task t's training data, keyed like ``ctx.weights``.

    Args:
        ctx: the merge context (``model``, ``weights``, ``train_batches`` and
            ``logits_fn`` are used).
        mode: ``per_sample`` (textbook empirical Fisher) or ``per_batch`` (cheaper
            approximation); see :mod:`clmerge.tensormath.fisher`.
        max_samples: cap on the training samples used (None: all of them).

    Per-sample gradients are computed in chunks that keep them under
    ``PER_SAMPLE_BUDGET`` bytes (the result does not depend on the chunking).
    """
    if ctx.model is None or ctx.train_batches is None:
        raise ValueError("task_fisher needs the merge context's model and train_batches")
    model_names = parameter_names(ctx.model, ctx.weights)
    n_params = sum(p.numel() for p in ctx.weights.values())
    f = diagonal_fisher(ctx.model, list(model_names.values()), ctx.train_batches(),
                        logits_fn=ctx.logits_fn, mode=mode, max_samples=max_samples,
                        chunk_size=max(1, PER_SAMPLE_BUDGET // (4 * n_params)))
    return {k: f[n] for k, n in model_names.items()}
