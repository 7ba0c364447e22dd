"""P&M stage 1, "train with perturbation", as an Avalanche plugin.

Paper: arXiv 2505.22389. While training task t, the merge that follows degrades the
model by a term containing Delta^T H_t Delta, with Delta = theta - theta_hat_{t-1} the
growing task vector. A symmetric finite difference along Delta gives

    Delta^T H Delta ~ [L(theta + e Delta) + L(theta - e Delta) - 2 L(theta)] / e^2,

and instead of three forward passes each training step samples one point
s in {0, +1, -1} with probabilities (p0, p+, p-) and computes the loss, and its
gradient, at theta + s e Delta only: one forward and one backward per step, as in plain
training. With the paper's e = 0.5 and p = 1/3 each, the expected sampled loss is
L(theta) + (e^2 / 3) Delta^T H Delta / 2 + O(e^4) (regulariser weight inferred, not
stated in the paper).

Implementation per mode:

- LoRA, ``perturbation=delta`` (the paper): the current task's LoRA branch output is
  scaled by (1 + s e) for the step (Delta = scaling * B A, so this is exactly
  theta + s e Delta). B starts at 0, so the perturbation starts as a no-op.
- ``perturbation=gaussian`` (the paper's ablation): the mergeable weights are moved by
  s e G for the step, G a Gaussian direction rescaled to |Delta| per weight, and restored
  after the backward pass.
- full fine-tuning, ``delta``: the weights are moved by s e (theta - theta_start) for
  the step and restored after the backward pass, so the gradient taken at the perturbed
  point updates the unperturbed weights.

s is drawn from a generator seeded by the run seed, so runs are reproducible. Nothing is
perturbed at evaluation time.
"""

from __future__ import annotations

import torch

from clmerge.avalanche_api import SupervisedPlugin


class PerturbationPlugin(SupervisedPlugin):
    def __init__(self, weights: dict[str, torch.nn.Parameter], lora=None, eps: float = 0.5,
                 probs=(1 / 3, 1 / 3, 1 / 3), mode: str = "delta", seed: int = 0):
        super().__init__()
        self.weights = weights
        self.lora = lora
        self.eps = eps
        self.probs = torch.tensor(probs, dtype=torch.float64)
        self.mode = mode
        self.gen = torch.Generator().manual_seed(10_007 + seed)
        self.start: dict[str, torch.Tensor] | None = None
        self.saved: dict[str, torch.Tensor] | None = None
        self.counts = {0: 0, 1: 0, -1: 0}
        self.records: list[dict] = []

    def before_training_exp(self, strategy, **kwargs):
        self.start = {k: p.detach().clone() for k, p in self.weights.items()}
        self.counts = {0: 0, 1: 0, -1: 0}

    def _sample(self) -> int:
        return (0, 1, -1)[int(torch.multinomial(self.probs, 1, generator=self.gen))]

    def _current_delta(self) -> dict[str, torch.Tensor]:
        if self.lora is not None:
            return self.lora.delta()
        return {k: p.detach() - self.start[k] for k, p in self.weights.items()}

    @torch.no_grad()
    def before_forward(self, strategy, **kwargs):
        s = self._sample()
        self.counts[s] += 1
        if s == 0 or self.mode == "none" or self.eps == 0:
            return
        if self.lora is not None and self.mode == "delta":
            self.lora.set_scale_factor(1.0 + s * self.eps)
            return
        delta = self._current_delta()
        self.saved = {k: p.detach().clone() for k, p in self.weights.items()}
        for k, p in self.weights.items():
            d = delta[k]
            if self.mode == "gaussian":
                g = torch.randn(d.shape, generator=self.gen, dtype=d.dtype).to(d.device)
                d = g * (d.norm() / g.norm().clamp_min(1e-12))
            p.add_(d, alpha=s * self.eps)

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        if self.lora is not None:
            self.lora.set_scale_factor(1.0)
        if self.saved is not None:
            for k, p in self.weights.items():
                p.copy_(self.saved[k])
            self.saved = None

    def after_training_exp(self, strategy, **kwargs):
        total = max(1, sum(self.counts.values()))
        self.records.append({f"perturb_frac_{name}": self.counts[s] / total
                             for s, name in ((0, "zero"), (1, "plus"), (-1, "minus"))})
