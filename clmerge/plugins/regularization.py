"""Avalanche's EWC and LwF plugins, adapted to the shared head protocol and to LoRA.

Both run through the same pipeline as the merging methods (methods ``ewc`` and ``lwf``:
the ``seq`` merge, i.e. no merge, plus one of these plugins), so they see the same
stream, backbone, LoRA/full fine-tuning setting and heads.

:class:`EWC` is Avalanche's ``EWCPlugin`` (importance = squared minibatch gradients of
the training loss averaged over the minibatches of the experience, penalty
``ewc_lambda * sum_i sum_k F_i,k (w_k - w*_i,k)^2``, ``separate`` or ``online`` mode):

- full fine-tuning: the stock plugin, unchanged; every model parameter is regularised
  (the backbone; a head is only trained in its own experience, so its term is 0 later).
- LoRA: the stock plugin would anchor the *adapter* parameters A, B to their values at
  the end of the previous experience. But the merge driver folds each adapter into the
  base weights and starts a fresh one (A re-drawn, B = 0), so that anchor would pull the
  new adapter back onto the old one and count the previous update twice. Here the
  regularised quantities are instead the dense LoRA target weights w = W_base +
  scaling * B A (what a merger merges): the importances are the same Avalanche
  estimate taken w.r.t. the dense weights (the gradient w.r.t. W_base is the gradient
  w.r.t. w), the anchors are the dense weights theta*_i at the end of experience i,
  and the penalty is differentiated through A and B. Weights outside the LoRA targets
  never change under LoRA, so this is EWC on everything that can move.

:class:`HeadedLwF` is Avalanche's ``LwFPlugin`` (teacher = a copy of the model at the
end of the previous experience; loss += alpha * KL(softmax(teacher / T) ||
softmax(student / T)) over the previously seen classes, ``batchmean``), with the
distillation restricted to the previous heads: ``HeadedModel`` sets the logits of
inactive heads to -inf, and while experience t trains only head t is active, so the
stock plugin's log_softmax over the old classes' columns is a softmax of all -inf
(NaN). Here both student and teacher logits over the old classes are computed with the
previous heads (0..t-1) on the student's own backbone features (captured from the
training forward pass, no second forward) and on the teacher's. The old heads are
frozen, so the distillation gradient reaches the backbone (LoRA or all weights) only.
The teacher is copied before the merge driver runs; with the ``seq`` merge that is the
same function as the merged model.

Both record per task which parameters were regularised and the bytes they keep across
tasks (``regularizer_state_bytes``); their :meth:`state_bytes` is counted in the
result's per-task ``state_bytes`` (the merge driver sums it with the merger's, which is 0
for the ``seq`` merge).

The methods' options (``--set ewc.ewc_lambda=...``), with their papers and defaults:

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from clmerge.avalanche_api import EWCPlugin, LwFPlugin
from clmerge.mergers.base import check_choice

STATE_KEY = "regularizer_state_bytes"  # the key of the per-task records


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


def _bytes(values) -> int:
    total = 0
    for v in values:
        t = v.data if not isinstance(v, torch.Tensor) else v  # avalanche ParamData or tensor
        total += t.numel() * t.element_size()
    return int(total)


class _ZeroAllGrads:
    """Stands in for the optimizer in EWC's importance pass: zeroes every gradient (the
    dense base weights are not in the optimizer, so its zero_grad would let theirs pile up)."""

    def __init__(self, model):
        self.model = model

    def zero_grad(self, set_to_none: bool = True):
        self.model.zero_grad(set_to_none=set_to_none)


class EWC(EWCPlugin):
    """Avalanche's EWCPlugin; with ``lora`` given, on the dense LoRA target weights."""

    def __init__(self, ewc_lambda: float, mode: str = "separate",
                 decay_factor: float | None = None, lora=None):
        super().__init__(ewc_lambda, mode=mode,
                         decay_factor=decay_factor if mode == "online" else None)
        self.lora = lora
        self.records: list[dict] = []

    # -- LoRA: dense target weights -----------------------------------------------------
    def _dense_names(self, model) -> dict[str, str]:
        """Model parameter name of each LoRA base weight -> LoRA key."""
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: k for k, p in self.lora.base_weights().items()}

    def _dense_current(self, model) -> dict[str, torch.Tensor]:
        """w = W_base + scaling * B A per target, differentiable through A and B."""
        out = {}
        for name, k in self._dense_names(model).items():
            out[name] = self.lora.layers[k].get_base_layer().weight + self.lora.dense_delta(k)
        return out

    def compute_importances(self, model, criterion, optimizer, dataset, device, batch_size,
                            num_workers=0):
        if self.lora is None:
            return super().compute_importances(model, criterion, optimizer, dataset, device,
                                               batch_size, num_workers=num_workers)
        base = list(self.lora.base_weights().values())
        flags = [p.requires_grad for p in base]
        for p in base:
            p.requires_grad_(True)
        try:
            imp = super().compute_importances(model, criterion, _ZeroAllGrads(model), dataset,
                                              device, batch_size, num_workers=num_workers)
        finally:
            for p, flag in zip(base, flags):
                p.requires_grad_(flag)
            model.zero_grad(set_to_none=True)
        return {n: imp[n] for n in self._dense_names(model)}

    def before_backward(self, strategy, **kwargs):
        if self.lora is None:
            return super().before_backward(strategy, **kwargs)
        t = strategy.clock.train_exp_counter
        if t == 0:
            return
        current = self._dense_current(strategy.model)
        penalty = torch.zeros((), device=strategy.device)
        for e in (range(t) if self.mode == "separate" else [t - 1]):
            for n, w in current.items():
                imp = self.importances[e][n].data
                penalty = penalty + (imp * (w - self.saved_params[e][n]).pow(2)).sum()
        strategy.loss += self.ewc_lambda * penalty

    def after_training_exp(self, strategy, **kwargs):
        t = strategy.clock.train_exp_counter
        # the importance pass's DataLoader draws a seed from torch's global generator;
        # keep the stream the run draws from (LoRA re-init, ...) as it would be without EWC
        with torch.random.fork_rng(devices=[]):
            super().after_training_exp(strategy, **kwargs)
        if self.lora is not None:  # anchor: the dense weights theta*_t, not A and B
            with torch.no_grad():
                current = self._dense_current(strategy.model)
            self.saved_params[t] = {n: w.detach().clone() for n, w in current.items()}
        nbytes = self.state_bytes()
        self.records.append({
            "regularized": "lora_targets_dense" if self.lora is not None else "all_parameters",
            STATE_KEY: nbytes})

    def state_bytes(self) -> int:
        return (_bytes(v for d in self.saved_params.values() for v in d.values())
                + _bytes(v for d in self.importances.values() for v in d.values()))


class HeadedLwF(LwFPlugin):
    """Avalanche's LwFPlugin with distillation over the previous heads' (finite) logits."""

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        super().__init__(alpha=alpha, temperature=temperature)
        self.records: list[dict] = []
        self._hook = None
        self._feats: torch.Tensor | None = None

    def _keep_features(self, module, inputs, output):
        if module.training and torch.is_grad_enabled():
            self._feats = output

    def before_training_exp(self, strategy, **kwargs):
        if self._hook is None:
            self._hook = strategy.model.backbone.register_forward_hook(self._keep_features)

    def previous_heads(self, model) -> list[int]:
        seen = set().union(*self.lwf.prev_classes_by_task.values())
        return [h for h, cls in enumerate(model.classes_per_exp) if cls and set(cls) <= seen]

    def before_backward(self, strategy, **kwargs):
        lwf = self.lwf
        feats, self._feats = self._feats, None
        if lwf.prev_model is None:
            return
        model, x = strategy.model, strategy.mb_x
        heads = self.previous_heads(model)
        if not heads:
            return
        if feats is None or feats.shape[0] != x.shape[0]:
            feats = model.backbone(x)
        cols = [c for h in heads for c in model.classes_per_exp[h]]
        out = model.logits_from_features(feats, heads)
        with torch.no_grad():
            teacher = lwf.prev_model
            prev_out = teacher.logits_from_features(teacher.backbone(x), heads)
        alpha = lwf.alpha[lwf.expcount] if isinstance(lwf.alpha, (list, tuple)) else lwf.alpha
        strategy.loss += alpha * lwf._distillation_loss(out, prev_out, cols)

    def after_training_exp(self, strategy, **kwargs):
        if self._hook is not None:  # not copied into the teacher
            self._hook.remove()
            self._hook = None
        self._feats = None
        super().after_training_exp(strategy, **kwargs)
        self.records.append({"regularized": "distillation_previous_heads",
                             STATE_KEY: self.state_bytes()})

    def state_bytes(self) -> int:
        """Bytes of the teacher (a copy of the whole model), 0 before it exists."""
        teacher = self.lwf.prev_model
        if teacher is None:
            return 0
        return _bytes(list(teacher.parameters()) + list(teacher.buffers()))
