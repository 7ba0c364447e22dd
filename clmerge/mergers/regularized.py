"""``ewc`` and ``lwf``: Avalanche's regularisation baselines through the same pipeline.

These methods do not merge: after each experience theta_hat_t = theta*_t (the ``seq``
merger), and the training-time plugin does the continual-learning work
(:mod:`clmerge.plugins.regularization`, built by the method registry from these
options). The options live here, on small :class:`~clmerge.mergers.sequential.
Sequential` subclasses, so that ``--set ewc.ewc_lambda=...`` is validated like every
other method option.

- EWC: J. Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks",
  PNAS 2017, arXiv 1612.00796; online mode: J. Schwarz et al., "Progress & Compress",
  ICML 2018, arXiv 1805.06370. Avalanche's ``EWCPlugin``.

      L = CE_t + ewc_lambda * sum_{i<t} sum_k F_i,k (w_k - w*_i,k)^2   (separate)
      L = CE_t + ewc_lambda * sum_k tilde F_{t-1},k (w_k - w*_{t-1},k)^2,
          tilde F_i = decay_factor * tilde F_{i-1} + F_i                (online)

  Defaults: ``mode = separate`` (Avalanche's default), ``ewc_lambda = 100``:
  Avalanche's importance is the squared mean gradient of a minibatch averaged over
  minibatches, roughly 1/B of the per-sample Fisher at an optimum, so useful strengths
  are large; there is no canonical value (it depends on the model and the data): sweep
  it with ``--set ewc.ewc_lambda=...``.
  ``decay_factor = 1.0`` only applies to ``online`` mode.

  With ``finetune=lora`` the regularised weights are the dense LoRA target weights
  (W_base + scaling * B A), not the adapter's A and B: the adapter is reset after every
  experience, so anchoring A and B would be meaningless (see the plugin). With
  ``finetune=full`` every parameter is regularised, as in the stock plugin. The result
  records which (``regularized`` per task, and ``config.finetune``).

- LwF: Z. Li, D. Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, arXiv
  1606.09282. Avalanche's ``LwFPlugin``:

      L = CE_t + alpha * KL(softmax(z_old / T) || softmax(z / T))   over the old classes

  with z_old the logits of the model at the end of the previous experience. Defaults:
  ``alpha = 1``, ``temperature = 2`` (Avalanche's and the paper's). Deviation:
  distillation runs over the previous heads' logits only (the current head protocol
  makes other heads' logits -inf; see the plugin).

Keeps across tasks (reported as ``state_bytes``): EWC keeps anchors and importances
(one pair per past task in ``separate`` mode, one in ``online`` mode); LwF keeps a copy
of the whole model (the teacher). The plugins hand the byte counts to these mergers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, check_choice
from clmerge.mergers.registry import register_merger
from clmerge.mergers.sequential import Sequential
from clmerge.tensormath.tensordict import TensorDict

STATE_KEY = "regularizer_state_bytes"  # the key clmerge.plugins.regularization writes


@dataclass
class EWCOptions:
    ewc_lambda: float = field(default=100.0, metadata={
        "help": "strength of the EWC penalty (>= 0; 0 is sequential fine-tuning)"})
    mode: str = field(default="separate", metadata={
        "help": "separate: one penalty per past task; online: one running penalty"})
    decay_factor: float = field(default=1.0, metadata={
        "help": "online mode only: decay of the running importance, in [0, 1]"})

    def __post_init__(self):
        if not (math.isfinite(self.ewc_lambda) and self.ewc_lambda >= 0):
            raise ValueError(f"ewc_lambda must be a finite number >= 0; got {self.ewc_lambda}")
        check_choice(self.mode, "mode", ("separate", "online"))
        if not 0.0 <= self.decay_factor <= 1.0:
            raise ValueError(f"decay_factor must be in [0, 1]; got {self.decay_factor}")


@dataclass
class LwFOptions:
    alpha: float = field(default=1.0, metadata={
        "help": "weight of the distillation loss (>= 0; 0 is sequential fine-tuning)"})
    temperature: float = field(default=2.0, metadata={
        "help": "softmax temperature of the distillation (> 0)"})

    def __post_init__(self):
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha must be a finite number >= 0; got {self.alpha}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0; got {self.temperature}")


class _Regularized(Sequential):
    """No merge; reports the bytes its training-time plugin keeps across tasks."""

    def __init__(self, options=None):
        super().__init__(options or self.Options())
        self.plugin_bytes = 0

    def merge(self, ctx: MergeContext) -> TensorDict:
        self.plugin_bytes = int(ctx.extras.get(STATE_KEY, self.plugin_bytes))
        return super().merge(ctx)

    def state_bytes(self) -> int:
        return self.plugin_bytes


@register_merger("ewc")
class EWCMethod(_Regularized):
    Options = EWCOptions


@register_merger("lwf")
class LwFMethod(_Regularized):
    Options = LwFOptions
