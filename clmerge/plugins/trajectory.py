"""Trajectory recorder: what TRM (arXiv 2605.08311) may use at the merge of task t.

While task t trains, keeps in memory

- ``snapshots - 1`` snapshots of the task's update at evenly spaced steps
  (step round(k * N / K) for k = 1..K-1, N = epochs x minibatches per epoch): with LoRA
  the dense delta ``scaling * B @ A`` of every target, under full fine-tuning the
  weights minus where the task started. The K-th point of the trajectory is the end of
  training, theta*_t, which the merge receives anyway;
- the last ``keep_batches`` training minibatches (inputs and labels, as the shuffled
  loader served them): the current-task data the merge optimises on, with no extra
  pass over the data.

Under full fine-tuning the task's start is read at its first training iteration, after
every ``before_training_exp`` callback has run: under the ``finetuned`` start protocol the
merge plugin writes theta*_{t-1} back into the weights there, and that, not the merged
model, is where the task's trajectory begins.

At the end of the task it hands both to the merge (the fields ``trajectory`` and
``recent_batches`` of the :class:`~clmerge.mergers.base.Observations` it is given) and
drops its own references; the merge driver empties the observations after the merge, so
nothing from task t survives into task t+1 but the merged weights.
"""

from __future__ import annotations

from collections import deque

import torch

from clmerge.avalanche_api import SupervisedPlugin
from clmerge.mergers.base import Observations
from clmerge.tensormath import tensordict as td


class TrajectoryPlugin(SupervisedPlugin):
    def __init__(self, weights: dict, observations: Observations, lora=None,
                 snapshots: int = 4, keep_batches: int = 5):
        super().__init__()
        if snapshots < 1:
            raise ValueError(f"snapshots must be >= 1; got {snapshots}")
        self.weights = weights
        self.observations = observations
        self.lora = lora
        self.n_snapshots = snapshots
        self.snapshots: list[td.TensorDict] = []
        self.batches: deque = deque(maxlen=max(keep_batches, 0))
        self._at: set[int] = set()
        self._step = 0
        self._start: td.TensorDict | None = None

    def before_training_exp(self, strategy, **kwargs):
        total = strategy.train_epochs * len(strategy.dataloader)
        K = self.n_snapshots
        self._at = {max(1, round(k * total / K)) for k in range(1, K)}
        self._step = 0
        self.snapshots = []
        self.batches.clear()
        self._start = None

    @torch.no_grad()
    def before_training_iteration(self, strategy, **kwargs):
        if self._step == 0 and self.lora is None:
            self._start = td.clone(self.weights)  # where training really starts

    @torch.no_grad()
    def after_training_iteration(self, strategy, **kwargs):
        self._step += 1
        if self.batches.maxlen:
            self.batches.append((strategy.mb_x.detach().clone(), strategy.mb_y.detach().clone()))
        if self._step in self._at:
            self.snapshots.append(self.current_update())

    def current_update(self) -> td.TensorDict:
        """The task's update so far, relative to where the task started."""
        if self.lora is not None:
            return self.lora.delta()
        return td.sub(td.clone(self.weights), self._start)

    def after_training_exp(self, strategy, **kwargs):
        self.observations.trajectory = self.snapshots
        self.observations.recent_batches = list(self.batches)
        self.snapshots = []
        self.batches.clear()
        self._start = None
