"""Per-task diagnostics: gradient norm of the first training step, training seconds.

The gradient norm at the very start of task t (over the trainable weights, on the
first minibatch, before the first optimizer step) tells how responsive the model that
task t starts from is: TRM (arXiv 2605.08311) argues merged models start where
gradients vanish.
"""

from __future__ import annotations

import math
import time


from clmerge.avalanche_api import SupervisedPlugin


class DiagnosticsPlugin(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.records: list[dict] = []
        self._first = False
        self._t0 = 0.0

    def before_training_exp(self, strategy, **kwargs):
        self._first = True
        self._t0 = time.perf_counter()
        self.records.append({"experience": strategy.experience.current_experience})

    def after_backward(self, strategy, **kwargs):
        if not self._first:
            return
        self._first = False
        sq = 0.0
        for group in strategy.optimizer.param_groups:
            if group.get("name") == "head":
                continue
            for p in group["params"]:
                if p.grad is not None:
                    sq += float(p.grad.detach().double().pow(2).sum())
        self.records[-1]["grad_norm_start"] = math.sqrt(sq)
        self.records[-1]["loss_start"] = float(strategy.loss.detach())

    def after_training_epoch(self, strategy, **kwargs):
        if not math.isfinite(float(strategy.loss.detach())):
            raise FloatingPointError(
                f"loss became {float(strategy.loss.detach())} in experience "
                f"{strategy.experience.current_experience}")

    def after_training_exp(self, strategy, **kwargs):
        self.records[-1]["train_seconds"] = time.perf_counter() - self._t0
