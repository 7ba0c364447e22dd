"""Per-task diagnostics: the first training steps of each task, and training seconds.

TRM (arXiv 2605.08311) argues that a merged model is a poor *starting point*: the next
task starts where gradients vanish, so optimisation stagnates. This plugin records, for
every method alike, what the first ``steps`` training steps of each task see from the
model the task starts from (the merged model, or theta*_{t-1} under the fine-tuned start):

- ``losses_first``: the training loss of each of those steps;
- ``grad_norms_first``: the gradient norm over the trainable backbone weights (the
  fresh LoRA factors, or every backbone weight under full fine-tuning; the new head is
  left out: it is fresh at every task whatever the method);
- ``dense_grad_norms_first``: the gradient norm over the mergeable weights themselves,
  dL/dW (with LoRA, the base weights are made to require a gradient for those steps
  only; the optimiser never sees them). This is the quantity a merger can reason
  about, in the same units as TRM's gradient-responsiveness term.

``grad_norm_start`` / ``loss_start`` are the first step's values. ``losses`` is the
training loss of *every* step of the task (as the loss the strategy minimises: with LwF
or EWC it includes their penalty), from which the report derives how many steps the
task needs to reach a fixed training loss from the model it started from
(:func:`clmerge.report.start_diagnostics.steps_to_loss`); recording it reads the loss
only and changes no number of the run. The dense gradient norms of the first steps are
written to the merge's :class:`~clmerge.mergers.base.Observations` (``g0_series``), when
given, so a merger may use them (TRM's hinge reference). A loss that is not finite, or
that explodes, stops the run with the experience and step named
(:mod:`clmerge.plugins.guard`).
"""

from __future__ import annotations

import math
import time

from clmerge.avalanche_api import SupervisedPlugin
from clmerge.mergers.base import Observations
from clmerge.plugins.guard import check_loss


class DiagnosticsPlugin(SupervisedPlugin):
    def __init__(self, weights: dict | None = None, lora=None, steps: int = 20,
                 observations: Observations | None = None):
        super().__init__()
        self.weights = weights or {}
        self.lora = lora
        self.steps = steps
        self.observations = observations
        self.records: list[dict] = []
        self._step = 0
        self._t0 = 0.0
        self._first_loss: float | None = None

    def _watch_dense(self) -> bool:
        return self.lora is not None and self._step < self.steps

    def before_training_exp(self, strategy, **kwargs):
        self._step = 0
        self._first_loss = None
        self._t0 = time.perf_counter()
        self.records.append({"experience": strategy.experience.current_experience,
                             "losses_first": [], "grad_norms_first": [],
                             "dense_grad_norms_first": [], "losses": []})

    def before_forward(self, strategy, **kwargs):
        if strategy.is_training and self._watch_dense():
            for w in self.weights.values():
                w.requires_grad_(True)

    def after_backward(self, strategy, **kwargs):
        loss = float(strategy.loss.detach())
        check_loss(loss, self._first_loss, strategy.experience.current_experience, self._step)
        if self._first_loss is None:
            self._first_loss = loss
        rec = self.records[-1]
        rec["losses"].append(loss)
        if self._step < self.steps:
            rec["losses_first"].append(loss)
            rec["grad_norms_first"].append(_norm(
                p for g in strategy.optimizer.param_groups if g.get("name") != "head"
                for p in g["params"]))
            rec["dense_grad_norms_first"].append(_norm(self.weights.values()))
            if self.lora is not None:
                for w in self.weights.values():
                    w.grad = None
                    w.requires_grad_(False)
        self._step += 1

    def after_training_exp(self, strategy, **kwargs):
        rec = self.records[-1]
        rec["train_seconds"] = time.perf_counter() - self._t0
        rec["train_steps"] = self._step
        if rec["losses_first"]:
            rec["grad_norm_start"] = rec["grad_norms_first"][0]
            rec["loss_start"] = rec["losses_first"][0]
            if self.observations is not None and rec["dense_grad_norms_first"]:
                self.observations.g0_series = list(rec["dense_grad_norms_first"])


def _norm(params) -> float:
    sq = 0.0
    for p in params:
        if p.grad is not None:
            sq += float(p.grad.detach().double().pow(2).sum())
    return math.sqrt(sq)

