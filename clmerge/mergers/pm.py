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
- The Fisher (:func:`clmerge.mergers.fisher_context.task_fisher`):

  * ``fisher_estimator=empirical`` (default): the paper's empirical Fisher, true
    labels. ``true``: the expectation over labels drawn from the model's own predictive
    distribution, exact over the head's classes (the Fisher information; Martens, arXiv
    1412.1193; Kunstner et al., arXiv 1905.12558), which does not vanish where the model
    fits its training data; it costs one backward pass per class. Which one the paper's
    code uses is not stated.
  * ``fisher_normalize=trace``: each F_t divided by its trace tr(F_t) (sum over every
    mergeable weight entry) before it enters a_t and the running sums, so every task
    weighs the same in a_t however saturated its fit is (our option, not the paper's;
    a task whose trace is 0 keeps F_t = 0). ``none`` (default) is the paper's form.
  * ``fisher=per_sample`` (default, textbook) or ``per_batch`` (the cheaper
    approximation).
  * ``fisher_samples=128`` (default) caps the samples per task: a seeded shuffle of
    the task's training data, stratified by class and interleaved so that every
    batch is mixed (``fisher_sampling=stratified``; the stream stores a task class by
    class, ``sequential`` takes the first samples in that order). The draw is seeded
    by the run's seed and the task index. The cap is set by cost: a per-sample Fisher
    costs about one training step per sample, and a ``quick`` task trains on as few as
    2 epochs x 600 samples, so 128 samples keep the merge under 0.15x of the task's
    training time (``perf/merge_time.py`` prints the ratio). The paper does not report
    its sample count.
  * ``fisher_engine=hooks`` (default): per-sample gradients from one forward and one
    backward pass per batch (layer inputs and output gradients captured by hooks), with
    the log-likelihood in float64; ``vmap`` is the torch.func path with a float32
    log-likelihood, whose gradient vanishes or flips sign for logit margins above
    about 17 (:mod:`clmerge.tensormath.fisher`).
  * ``fisher_batch_size``: samples per forward/backward pass (0: the training batch
    size); it changes only the speed of ``per_sample`` and the estimate of
    ``per_batch``.
- Clipping to [0, 1] is inferred from "convex combination" (``clip``).
- With LoRA the Fisher is over the LoRA target weights, which are the mergeable
  weights (for a timm ViT, the K/V rows of ``qkv`` per the paper; here, whatever the
  backbone's LoRA targets are: in ``quick``, the K/V rows of every block's fused
  ``qkv`` of the letters ViT, as in the paper).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger, check_choice
from clmerge.mergers.fisher_context import SAMPLINGS, task_fisher
from clmerge.tensormath import tensordict as td
from clmerge.tensormath.fisher import ENGINES, ESTIMATORS
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
    fisher_samples: int = field(default=128, metadata={
        "help": "training samples of the current task used for its Fisher (a seeded, "
                "class-stratified draw)",
        "max": 10_000_000, "why": "each sample is a forward and backward pass"})
    fisher_estimator: str = field(default="empirical", metadata={
        "help": "empirical (true labels, the paper's) or true (expectation over labels drawn "
                "from the model's predictive distribution: the Fisher information)"})
    fisher_normalize: str = field(default="none", metadata={
        "help": "none (the paper's) or trace: each F_t scaled to unit trace before it enters "
                "a_t"})
    fisher_sampling: str = field(default="stratified", metadata={
        "help": "stratified (seeded, class-stratified, interleaved draw) or sequential (the "
                "first samples in the stream's stored order)"})
    fisher_engine: str = field(default="hooks", metadata={
        "help": "hooks (per-sample gradients from one forward/backward, float64 "
                "log-likelihood) or vmap (torch.func, float32 log-likelihood)"})
    fisher_batch_size: int = field(default=0, metadata={
        "help": "samples per Fisher forward/backward pass; 0: the training batch size",
        "max": 1_000_000, "why": "a pass holds the gradients of every sample in memory"})
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
        check_choice(self.fisher_estimator, "fisher_estimator", ESTIMATORS)
        check_choice(self.fisher_normalize, "fisher_normalize", ("none", "trace"))
        check_choice(self.fisher_sampling, "fisher_sampling", SAMPLINGS)
        check_choice(self.fisher_engine, "fisher_engine", ENGINES)
        if self.fisher_estimator != "empirical" and (self.fisher_engine != "hooks"
                                                     or self.fisher != "per_sample"):
            raise ValueError("fisher_estimator=true needs fisher_engine=hooks and "
                             "fisher=per_sample")
        if self.fisher_batch_size < 0:
            raise ValueError(f"fisher_batch_size must be >= 0; got {self.fisher_batch_size}")
        if self.fisher_samples < 1:
            raise ValueError(f"fisher_samples must be >= 1; got {self.fisher_samples}")


class PerturbAndMergeMerger(Merger):
    Options = PMOptions

    def __init__(self, options: PMOptions | None = None):
        super().__init__(options)
        self.state = RunningFisherSums() if self.options.storage == "running" else StoredTasks()

    def fisher(self, ctx: MergeContext) -> td.TensorDict:
        """F_t at theta*_t (the model holds theta*_t while merging) on task t's data,
        before any normalisation."""
        o = self.options
        return task_fisher(ctx, mode=o.fisher, max_samples=o.fisher_samples,
                           engine=o.fisher_engine, estimator=o.fisher_estimator,
                           sampling=o.fisher_sampling, batch_size=o.fisher_batch_size or None)

    def merge(self, ctx: MergeContext) -> td.TensorDict:
        o = self.options
        delta = td.sub(ctx.finetuned, ctx.merged)
        fisher_t = self.fisher(ctx)
        trace = float(sum(f.double().sum() for f in fisher_t.values()))
        # tr(F_t) and Delta^T F_t Delta of the estimate itself: how strongly the current
        # task pulls a_t up (recorded before any normalisation)
        diag = {"fisher_trace": trace,
                "delta_F_delta": float(td.dot(delta, delta, weight=fisher_t))}
        if o.fisher_normalize == "trace" and trace > 0:
            fisher_t = td.scale(fisher_t, 1.0 / trace)
        a = self.state.coefficient(ctx.merged, delta, fisher_t,
                                   per_module=o.alpha == "per_module", clip=o.clip)
        self.state.update(fisher_t, ctx.finetuned)
        if isinstance(a, dict):
            self.record(coefficient=sum(a.values()) / len(a), coefficients=a, **diag)
        else:
            self.record(coefficient=a, **diag)
        return td.axpy(ctx.merged, a, delta)

    def state_bytes(self) -> int:
        return self.state.state_bytes()
