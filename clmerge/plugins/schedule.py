"""Per-epoch learning-rate schedule within each experience, as an Avalanche plugin.

``lr_schedule=cosine`` is the schedule of InfLoRA (arXiv 2404.00228) and CODA-Prompt
(arXiv 2211.13218) with Adam: every parameter group (LoRA or backbone, and head) trains
epoch e = 0 .. K-1 of an experience of K epochs at

    lr_e = lr_0 * cos(99 * pi * e / (200 * (K - 1))),

from lr_0 down to lr_0 * cos(0.495 pi) ~ 0.016 lr_0 in the last epoch; the rate is set
before each epoch and constant within it. A fresh optimizer per experience starts the
schedule again at lr_0, so the state at the end of each task (what the mergers merge)
was trained with a decayed rate. Deviation: with K = 1 (where the codebases' formula
divides by zero) the rate stays lr_0.
"""

from __future__ import annotations

import math

from clmerge.avalanche_api import SupervisedPlugin


def cosine_factor(epoch: int, epochs: int) -> float:
    """cos(99 pi e / (200 (K - 1))); 1 when K = 1."""
    if epochs <= 1:
        return 1.0
    return math.cos(99 * math.pi * epoch / (200 * (epochs - 1)))


class CosineEpochSchedule(SupervisedPlugin):
    """Sets every group's rate to ``initial_lr * cosine_factor(e, K)`` before epoch e."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = int(epochs)

    def before_training_epoch(self, strategy, **kwargs):
        e = strategy.clock.train_exp_epochs
        f = cosine_factor(e, self.epochs)
        for g in strategy.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
            g["lr"] = g["initial_lr"] * f
