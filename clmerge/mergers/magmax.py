"""``magmax``: maximum-magnitude selection of task vectors (MagMax).

Paper: D. Marczak, B. Twardowski, T. Trzcinski, S. Cygert, "MagMax: Leveraging Model
Merging for Seamless Continual Learning", ECCV 2024, arXiv 2407.06322; reference code
danielm1405/magmax (``merge_max_abs``). Rule:
:class:`clmerge.tensormath.merge_rules.MaxAbsAccumulator` (streaming) and
:func:`~clmerge.tensormath.merge_rules.magmax` (all task vectors).

Rule, after task t, with tau_i = theta*_i - theta_0, per weight entry j::

    tau_MM,j    = tau_{i*,j},  i* = argmax_{i<=t} |tau_i,j|   (ties: the latest task)
    theta_hat_t = theta_0 + lam tau_MM

Streaming form (``form=streaming``, default): a running max-abs vector
M_t = select(M_{t-1}, tau_t) by magnitude, theta_hat_t = theta_0 + lam M_t. It gives
exactly the same tensors as ``form=keep_all``, which keeps every tau_i and selects over
all of them after each task as published (tested to be equal).

Defaults: ``lam = 0.5`` (the paper's and the released script's coefficient).

Protocol: the paper starts task t from the previous *fine-tuned* model (sequential
fine-tuning, then merge for inference): run with ``--set start=finetuned`` (recorded in
the result's config and shown as ``magmax@ft``). The default ``start=merged`` starts from
theta_hat_{t-1}, like every other method here.

Keeps across tasks: the running max-abs vector (``streaming``: the size of the mergeable
weights, constant in t) or every tau_i (``keep_all``: grows linearly in t).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger, check_choice, check_finite
from clmerge.tensormath.merge_rules import MaxAbsAccumulator, magmax
from clmerge.tensormath.tensordict import TensorDict, nbytes, sub


@dataclass
class MagMaxOptions:
    lam: float = field(default=0.5, metadata={
        "help": "scaling coefficient lambda of the max-magnitude task vector"})
    form: str = field(default="streaming", metadata={
        "help": "streaming: keep the running max-abs vector (O(1)); keep_all: keep every "
                "task vector (as published); same result"})

    def __post_init__(self):
        check_finite(self.lam, "lam")
        check_choice(self.form, "form", ("streaming", "keep_all"))


class MagMax(Merger):
    Options = MagMaxOptions

    def __init__(self, options: MagMaxOptions | None = None):
        super().__init__(options)
        self.acc = MaxAbsAccumulator()
        self.task_vectors: list[TensorDict] = []

    def merge(self, ctx: MergeContext) -> TensorDict:
        o = self.options
        tau = sub(ctx.finetuned, ctx.theta0)
        self.record(coefficient=o.lam)
        if o.form == "keep_all":
            self.task_vectors.append(tau)
            return magmax(ctx.theta0, self.task_vectors, lam=o.lam)
        self.acc.update(tau)
        return self.acc.merged(ctx.theta0, lam=o.lam)

    def state_bytes(self) -> int:
        return self.acc.state_bytes() + nbytes(self.task_vectors)
