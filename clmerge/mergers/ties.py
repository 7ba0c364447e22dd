"""``ties``: TIES-Merging of all task vectors so far.

Paper: P. Yadav, D. Tam, L. Choshen, C. Raffel, M. Bansal, "TIES-Merging: Resolving
Interference When Merging Models", NeurIPS 2023, arXiv 2306.01708; reference code
prateeky2806/ties-merging. Rule: :func:`clmerge.tensormath.merge_rules.ties_merge`.

Rule, after task t, with tau_i = theta*_i - theta_0 (i <= t)::

    hat_tau_i = trim(tau_i, k)        keep the top-k fraction of |tau_i| (over the model)
    gamma_j   = sign(sum_i hat_tau_i,j)                      elected sign per entry
    tau_m,j   = mean of the hat_tau_i,j whose sign is gamma_j  (0 if none)
    theta_hat_t = theta_0 + lam tau_m

Defaults: ``k = 0.2``, ``lam = 0.55``, MagMax's continual-learning setting
(danielm1405/magmax ``merge_splitted.py``: top-20% trim, coefficient 0.55; the TIES
paper also trims to 20%). ``trim_scope = model`` trims over the whole flattened task
vector as the reference code does; ``tensor`` trims each weight separately.

Deviations / choices: TIES is not streamable (trimming and sign election depend on all
task vectors jointly), so every tau_i is kept and the merge is recomputed from all of
them after each task. Keep-count and zero-sign details are in the tensormath docstring.

Keeps across tasks: every task vector tau_1..tau_t (grows linearly in t).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger, check_choice, check_finite
from clmerge.tensormath.merge_rules import ties_merge
from clmerge.tensormath.tensordict import TensorDict, nbytes, sub


@dataclass
class TiesOptions:
    k: float = field(default=0.2, metadata={
        "help": "fraction of each task vector's entries kept by magnitude, in (0, 1]"})
    lam: float = field(default=0.55, metadata={
        "help": "scaling coefficient lambda of the merged task vector"})
    trim_scope: str = field(default="model", metadata={
        "help": "model: top-k over the whole task vector (reference code); tensor: per weight"})

    def __post_init__(self):
        if not 0.0 < self.k <= 1.0:
            raise ValueError(f"k must be in (0, 1] (a fraction: 0.2 keeps the top 20%); "
                             f"got {self.k}")
        check_finite(self.lam, "lam")
        check_choice(self.trim_scope, "trim_scope", ("model", "tensor"))


class Ties(Merger):
    Options = TiesOptions

    def __init__(self, options: TiesOptions | None = None):
        super().__init__(options)
        self.task_vectors: list[TensorDict] = []

    def merge(self, ctx: MergeContext) -> TensorDict:
        o = self.options
        self.task_vectors.append(sub(ctx.finetuned, ctx.theta0))
        self.record(coefficient=o.lam)
        return ties_merge(ctx.theta0, self.task_vectors, k=o.k, lam=o.lam,
                          trim_scope=o.trim_scope)

    def state_bytes(self) -> int:
        return nbytes(self.task_vectors)
