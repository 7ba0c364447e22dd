"""``average``: running mean of the fine-tuned models ("Model Averaging").

Source: the "Model Averaging" row of Perturb-and-Merge's tables (Qiu et al., arXiv
2505.22389); uniform weight averaging of the sequence of fine-tuned models, computed
incrementally (:func:`clmerge.tensormath.merge_rules.running_average`).

Rule, after task t (1-based; theta*_t fine-tuned, theta_hat_{t-1} the merged model)::

    theta_hat_1 = theta*_1
    theta_hat_t = ((t-1)/t) theta_hat_{t-1} + (1/t) theta*_t

Defaults: none (no options). Deviations: none; with the default ``start=merged``
protocol each theta*_t starts from theta_hat_{t-1}, as in P&M's baseline.

Keeps across tasks: only the task count t (reported as 0 bytes: no tensors).
"""

from __future__ import annotations

from clmerge.mergers.base import MergeContext, Merger
from clmerge.tensormath.merge_rules import running_average
from clmerge.tensormath.tensordict import TensorDict


class RunningAverage(Merger):
    def __init__(self, options=None):
        super().__init__(options)
        self.count = 0

    def merge(self, ctx: MergeContext) -> TensorDict:
        self.count += 1
        self.record(coefficient=1.0 / self.count)
        return running_average(ctx.merged, ctx.finetuned, self.count)
