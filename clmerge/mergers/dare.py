"""``dare``: drop-and-rescale the new update (DARE), then the running average.

Paper: L. Yu, B. Yu, H. Yu, F. Huang, Y. Li, "Language Models are Super Mario:
Absorbing Abilities from Homologous Models as a Free Lunch", ICML 2024, arXiv
2311.03099; reference code yule-BUAA/MergeLM. Rules:
:func:`clmerge.tensormath.merge_rules.dare` and
:func:`~clmerge.tensormath.merge_rules.running_average`.

Rule, after task t (1-based), with Delta_t = theta*_t - theta_hat_{t-1}::

    m_j ~ Bernoulli(p) per entry (1 = drop)
    tilde_Delta_t = (1 - m) * Delta_t / (1 - p)          (E[tilde_Delta_t] = Delta_t)
    tilde_theta_t = theta_hat_{t-1} + tilde_Delta_t
    theta_hat_t   = ((t-1)/t) theta_hat_{t-1} + (1/t) tilde_theta_t     (``average``)
                  = theta_hat_{t-1} + tilde_Delta_t / t

Defaults: ``p = 0.3``. No continual-learning value is published; the DARE paper shows drop rates
up to 0.9 are harmless for large language models fine-tuned with small updates, but
small models with LoRA updates have far fewer redundant entries, so a moderate rate is
the documented default; sweep it with ``--set dare.p=...``. The merge rule after DARE
is ``average``, so DARE differs from the ``average`` baseline by the drop alone.

Randomness: the masks come from a ``torch.Generator`` seeded per task with
``seed * 1_000_003 + t`` (t the 0-based experience index). ``seed = -1`` (default) uses
the run's seed: the runner seeds torch with the config's ``seed`` right before it builds
the merger, and the merger reads it then (``torch.initial_seed()``). So the same config
gives the same masks, different run seeds give different masks, and ``--set
dare.seed=N`` fixes the masks independently of the run seed.

Deviations / choices: DARE is applied to Delta_t (the update of this task w.r.t. the
merged model it is merged into), not to tau_t = theta*_t - theta_0.

Keeps across tasks: nothing but the task count and the seed (0 bytes; the generator
is recreated per task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from clmerge.mergers.base import MergeContext, Merger
from clmerge.tensormath.merge_rules import dare, running_average
from clmerge.tensormath.tensordict import TensorDict, add, sub


@dataclass
class DareOptions:
    p: float = field(default=0.3, metadata={
        "help": "drop probability of each entry of Delta_t, in [0, 1)"})
    seed: int = field(default=-1, metadata={
        "help": "seed of the drop masks (per task: seed * 1000003 + t); -1: the run's seed"})

    def __post_init__(self):
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"p must be in [0, 1) (p = 1 would drop everything); got {self.p}")
        if self.seed < -1:
            raise ValueError(f"seed must be >= 0, or -1 for the run's seed; got {self.seed}")


class Dare(Merger):
    Options = DareOptions

    def __init__(self, options: DareOptions | None = None):
        super().__init__(options)
        self.seed = torch.initial_seed() if self.options.seed == -1 else self.options.seed
        self.count = 0

    def generator(self, t: int, device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + t) % 2**63)
        return g

    def merge(self, ctx: MergeContext) -> TensorDict:
        self.count += 1
        delta = sub(ctx.finetuned, ctx.merged)
        device = next(iter(delta.values())).device
        dropped = dare(delta, self.options.p, self.generator(ctx.t, device))
        self.record(coefficient=1.0 / self.count)
        return running_average(ctx.merged, add(ctx.merged, dropped), self.count)
