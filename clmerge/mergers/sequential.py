"""``seq``: no merge, theta_hat_t = theta*_t (sequential LoRA / sequential fine-tuning).

The lower bound every merging method is measured against (P&M's table row "LoRA").
Keeps nothing across tasks.
"""

from __future__ import annotations

from clmerge.mergers.base import MergeContext, Merger
from clmerge.tensormath.tensordict import TensorDict


class Sequential(Merger):
    def merge(self, ctx: MergeContext) -> TensorDict:
        return ctx.finetuned
