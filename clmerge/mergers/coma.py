"""``coma``: continual model averaging with a fixed coefficient (CoMA).

Paper: I. E. Marouf, S. Roy, E. Tartaglione, S. Lathuiliere, "Weighted Ensemble Models
Are Strong Continual Learners", ECCV 2024, arXiv 2312.08977. Rule:
:func:`clmerge.tensormath.merge_rules.coma`.

Rule, after task t (1-based)::

    theta_hat_1 = theta*_1
    theta_hat_t = (1 - alpha) theta_hat_{t-1} + alpha theta*_t        (t > 1)

Defaults: ``alpha = 0.4``, the ``wt_alpha`` of the authors' released configs
(IemProg/CoFiMA, ``exps/cofima/*.json``).

Deviations / choices: the first task is not averaged with the pretrained model
(theta_hat_1 = theta*_1), as in the released code, which merges only from the second
task on (``if self._cur_task > 0``). CoFiMA's classifier alignment stage is not part of
this merger: the shared head protocol replaces it for every method.

Keeps across tasks: nothing (0 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger
from clmerge.tensormath.merge_rules import coma
from clmerge.tensormath.tensordict import TensorDict, clone


@dataclass
class CoMAOptions:
    alpha: float = field(default=0.4, metadata={
        "help": "weight of the new fine-tuned model, in [0, 1] (1: sequential, 0: frozen)"})

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")


class CoMA(Merger):
    Options = CoMAOptions

    def merge(self, ctx: MergeContext) -> TensorDict:
        if ctx.t == 0:
            self.record(coefficient=1.0)
            return clone(ctx.finetuned)
        self.record(coefficient=self.options.alpha)
        return coma(ctx.merged, ctx.finetuned, self.options.alpha)
