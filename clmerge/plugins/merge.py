"""The merge driver: runs a :class:`~clmerge.mergers.base.Merger` after each experience.

Per experience t:

- ``before_training_exp``: remember where training starts (the mergeable weights now);
- ``after_training_exp``: read theta*_t (LoRA: base + scaling * B @ A per target;
  full fine-tuning: the weights themselves), ask the merger for theta_hat_t, write it
  into the mergeable weights in place and, with LoRA, reset the adapter. Under the
  ``finetuned`` start protocol (MagMax) theta*_t is kept and written back before the
  next experience trains, while evaluation sees theta_hat_t.

Before the merge, the trained model (its parameters and theta*_t) and, after it, the
merged weights theta_hat_t must be finite (:mod:`clmerge.plugins.guard`): a diverged
experience stops the run before anything of it is evaluated or saved.

Records per task: merge seconds, the bytes kept across tasks after the merge (the
merger's, plus those of the method's training-time plugins given as ``state_sources``,
e.g. EWC's anchors and importances), the distance |theta_hat_t - theta_0|, and whatever
the merger recorded (coefficients).

The merger reads experience t's data as a :class:`~clmerge.mergers.base.TaskData`:
its batches (``batches(experience, indices=..., batch_size=...)``, given), its targets,
the logits function, the run's seed, and what the training-time plugins observed while
it trained (``observations``, an :class:`~clmerge.mergers.base.Observations` the
trajectory recorder and the diagnostics fill; it is given, so those plugins can be built
with it first, and emptied after each merge: nothing of task t survives the merge but
the merged weights).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch

from clmerge.avalanche_api import SupervisedPlugin
from clmerge.mergers.base import MergeContext, Merger, Observations, TaskData
from clmerge.plugins.guard import check_tensors
from clmerge.tensormath import tensordict as td


def active_head_logits(model, x):
    """Logits through the model's active heads (the current task's, while merging)."""
    return model(x)


class MergePlugin(SupervisedPlugin):
    def __init__(self, merger: Merger, weights: dict[str, torch.nn.Parameter],
                 theta0: td.TensorDict, lora=None, start: str = "merged",
                 batches: Callable | None = None, logits_fn: Callable | None = None,
                 observations: Observations | None = None, state_sources: Iterable = (),
                 seed: int = 0):
        super().__init__()
        self.merger = merger
        self.weights = weights
        self.theta0 = theta0
        self.lora = lora
        self.start_mode = start
        self.batches = batches
        self.logits_fn = logits_fn
        self.seed = seed
        self.merged = td.clone({k: p for k, p in weights.items()})
        self.finetuned_prev: td.TensorDict | None = None
        self.start: td.TensorDict | None = None
        self.records: list[dict] = []
        self.observations = Observations() if observations is None else observations
        self.state_sources = list(state_sources)

    @torch.no_grad()
    def _write(self, values: td.TensorDict) -> None:
        for k, v in values.items():
            self.weights[k].copy_(v)

    def before_training_exp(self, strategy, **kwargs):
        if self.start_mode == "finetuned" and self.finetuned_prev is not None:
            self._write(self.finetuned_prev)
        self.start = td.clone(self.weights)

    def current_finetuned(self) -> td.TensorDict:
        """theta*_t: the mergeable weights with the LoRA delta folded in."""
        if self.lora is None:
            return td.clone(self.weights)
        return td.add(td.clone(self.weights), self.lora.delta())

    def task_data(self, exp) -> TaskData:
        """What the merger reads of experience ``exp`` besides weights."""
        obs = self.observations
        return TaskData(
            batches=(lambda **kw: self.batches(exp, **kw)) if self.batches else None,
            targets=lambda: list(exp.dataset.targets), logits_fn=self.logits_fn,
            seed=self.seed, trajectory=list(obs.trajectory),
            recent_batches=list(obs.recent_batches), g0_series=list(obs.g0_series))

    def after_training_exp(self, strategy, **kwargs):
        t = strategy.experience.current_experience
        check_tensors(strategy.model.named_parameters(), t, "training", "the parameters")
        t0 = time.perf_counter()
        finetuned = self.current_finetuned()
        check_tensors(finetuned, t, "training", "the fine-tuned weights")
        if self.lora is not None:  # the model holds theta*_t densely while merging
            self.lora.write_base(finetuned)
        ctx = MergeContext(
            t=t, theta0=self.theta0, merged=self.merged, start=self.start,
            finetuned=finetuned, model=strategy.model, weights=self.weights,
            task=self.task_data(strategy.experience))
        merged = self.merger.merge(ctx)
        check_tensors(merged, t, "the merge", "the merged weights")
        self._write(merged)
        self.merged = td.clone(merged)
        self.finetuned_prev = finetuned if self.start_mode == "finetuned" else None
        self.observations.clear()  # nothing of task t survives the merge
        self.records.append({
            "merge_seconds": time.perf_counter() - t0,
            "state_bytes": int(self.merger.state_bytes()
                               + sum(s.state_bytes() for s in self.state_sources)),
            "distance_from_pretrained": td.norm(td.sub(self.merged, self.theta0)),
            "task_vector_norm": td.norm(td.sub(finetuned, self.start)),
        })
