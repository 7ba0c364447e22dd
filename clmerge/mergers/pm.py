"""``pm``: Perturb-and-Merge, stage 2 ("infer after merging").

Paper: H. Qiu, M. Zhang, Z. Qiao, L. Nie, "Train with Perturbation, Infer after Merging:
A Two-Stage Framework for Continual Learning", arXiv 2505.22389 (NeurIPS 2025).
Stage 1 (training with perturbation) is :mod:`clmerge.plugins.perturbation`.

Rule, after task t (theta_hat_{t-1} the merged model, theta*_t the fine-tuned one,
Delta_t = theta*_t - theta_hat_{t-1}, F_i the diagonal empirical Fisher of task i taken
at theta*_i on task i's training data)::

    theta_hat_t = theta_hat_{t-1} + a_t Delta_t

    a_t = - sum_{i<=t} (theta_hat_{t-1} - theta*_i)^T F_i Delta_t
            ------------------------------------------------------
                     sum_{i<=t} Delta_t^T F_i Delta_t

the minimiser over a of the summed second-order loss increase of all tasks so far
(each L_i expanded around theta*_i with its Hessian replaced by F_i), clipped to [0, 1].
a_1 = 1. ``alpha=per_module`` solves one a per mergeable weight (the paper's ablation).

Defaults and deviations (each one an option):

- ``storage=running`` (default): a_t from two running sums S_F = sum_{i<t} F_i and
  S_Ftheta = sum_{i<t} F_i theta*_i (O(1) in the number of tasks; our rewrite, exactly
  equal to the paper's form, proven in the tests). ``storage=stored`` keeps every
  theta*_i and F_i as the paper does (O(T)).
- ``fisher=per_sample`` (default; textbook empirical Fisher via torch.func);
  ``per_batch`` is the cheaper approximation. ``fisher_samples`` caps the samples.
- Clipping to [0, 1] is inferred from "convex combination" (``clip``).
- With LoRA the Fisher is over the LoRA target weights, which are the mergeable
  weights (for a timm ViT, the K/V rows of ``qkv`` per the paper; here, whatever the
  backbone's LoRA targets are: MobileNetV2's pointwise convolutions in ``quick``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger, check_choice
from clmerge.mergers.fisher_context import task_fisher
from clmerge.tensormath import tensordict as td
from clmerge.tensormath.pm_coefficient import RunningFisherSums, StoredTasks


@dataclass
class PMOptions:
    eps: float = field(default=0.5, metadata={
        "help": "perturbation size e: the LoRA branch is scaled by 1 + s*e, s in {0,+1,-1}"})
    p0: float = field(default=1 / 3, metadata={"help": "probability of s = 0 (no perturbation)"})
    p_plus: float = field(default=1 / 3, metadata={"help": "probability of s = +1"})
    p_minus: float = field(default=1 / 3, metadata={"help": "probability of s = -1"})
    perturbation: str = field(default="delta", metadata={
        "help": "delta (along the task vector, the paper), gaussian (random direction of the "
                "same norm, the paper's ablation) or none (merge only)"})
    alpha: str = field(default="global", metadata={
        "help": "global: one a_t for the model; per_module: one per mergeable weight"})
    fisher: str = field(default="per_sample", metadata={"help": "per_sample or per_batch"})
    fisher_samples: int = field(default=1024, metadata={
        "help": "training samples of the current task used for its Fisher"})
    storage: str = field(default="running", metadata={
        "help": "running: O(1) sums S_F, S_Ftheta; stored: every theta*_i and F_i (paper)"})
    clip: bool = field(default=True, metadata={"help": "clip a_t to [0, 1]"})

    def __post_init__(self):
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0; got {self.eps}")
        probs = (self.p0, self.p_plus, self.p_minus)
        if any(p < 0 or p > 1 for p in probs) or abs(sum(probs) - 1) > 1e-6:
            raise ValueError(f"p0, p_plus, p_minus must be in [0, 1] and sum to 1; got {probs}")
        check_choice(self.perturbation, "perturbation", ("delta", "gaussian", "none"))
        check_choice(self.alpha, "alpha", ("global", "per_module"))
        check_choice(self.fisher, "fisher", ("per_sample", "per_batch"))
        check_choice(self.storage, "storage", ("running", "stored"))
        if self.fisher_samples < 1:
            raise ValueError(f"fisher_samples must be >= 1; got {self.fisher_samples}")


class PerturbAndMergeMerger(Merger):
    Options = PMOptions

    def __init__(self, options: PMOptions | None = None):
        super().__init__(options)
        self.state = RunningFisherSums() if self.options.storage == "running" else StoredTasks()

    def fisher(self, ctx: MergeContext) -> td.TensorDict:
        """F_t at theta*_t (the model holds theta*_t while merging) on task t's data."""
        return task_fisher(ctx, mode=self.options.fisher, max_samples=self.options.fisher_samples)

    def merge(self, ctx: MergeContext) -> td.TensorDict:
        o = self.options
        delta = td.sub(ctx.finetuned, ctx.merged)
        fisher_t = self.fisher(ctx)
        a = self.state.coefficient(ctx.merged, delta, fisher_t,
                                   per_module=o.alpha == "per_module", clip=o.clip)
        self.state.update(fisher_t, ctx.finetuned)
        # tr(F_t) and Delta^T F_t Delta: how strongly the current task pulls a_t up
        diag = {"fisher_trace": float(sum(f.double().sum() for f in fisher_t.values())),
                "delta_F_delta": float(td.dot(delta, delta, weight=fisher_t))}
        if isinstance(a, dict):
            self.record(coefficient=sum(a.values()) / len(a), coefficients=a, **diag)
        else:
            self.record(coefficient=a, **diag)
        return td.axpy(ctx.merged, a, delta)

    def state_bytes(self) -> int:
        return self.state.state_bytes()
