"""``task_arithmetic``: addition of task vectors, in streaming form.

Paper: G. Ilharco, M. T. Ribeiro, M. Wortsman, S. Gururangan, L. Schmidt, H. Hajishirzi,
A. Farhadi, "Editing Models with Task Arithmetic", ICLR 2023, arXiv 2212.04089. Rule:
:class:`clmerge.tensormath.merge_rules.RunningSum` and
:func:`~clmerge.tensormath.merge_rules.task_arithmetic_from_sum`.

Rule, after task t, with tau_i = theta*_i - theta_0 (w.r.t. the pretrained model)::

    S_t         = S_{t-1} + tau_t                      (running sum, S_0 = 0)
    theta_hat_t = theta_0 + lam S_t                    (scale=fixed, default)
    theta_hat_t = theta_0 + (lam / t) S_t              (scale=mean)

Defaults: ``lam = 0.5``, ``scale = fixed``. The paper gives no value (lam is tuned on
held-out data, which a continual stream does not have); 0.5 is the coefficient MagMax uses for its own merged task vector in
the same continual setting (Marczak et al., arXiv 2407.06322), so both methods apply
their merged vector at the same scale. MagMax's released continual-learning script
evaluates task arithmetic as the *mean* of the task vectors (``sum`` with coefficient
1/T, ``merge_splitted.py``): that is ``--set task_arithmetic.scale=mean
--set task_arithmetic.lam=1`` here (1/t after t tasks, the streaming form of 1/T).

Deviations / choices: streaming, so only the running sum is kept instead of every
tau_i (identical result: the sum is formed in the same left-to-right order, see the
tensormath tests). Under the default ``start=merged`` protocol tau_t contains the
merged model task t started from, so earlier tasks count again in later task vectors;
the MagMax protocol (``--set start=finetuned``) gives the classic sequential-fine-tuning
task vectors.

Keeps across tasks: the running sum S_t (the size of the mergeable weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger, check_choice, check_finite
from clmerge.tensormath.merge_rules import RunningSum
from clmerge.tensormath.tensordict import TensorDict, sub


@dataclass
class TaskArithmeticOptions:
    lam: float = field(default=0.5, metadata={
        "help": "scaling coefficient lambda of the summed task vectors"})
    scale: str = field(default="fixed", metadata={
        "help": "fixed: theta_0 + lam * sum; mean: theta_0 + lam/t * sum (MagMax's CL script "
                "with lam=1)"})

    def __post_init__(self):
        check_finite(self.lam, "lam")
        check_choice(self.scale, "scale", ("fixed", "mean"))


class TaskArithmetic(Merger):
    Options = TaskArithmeticOptions

    def __init__(self, options: TaskArithmeticOptions | None = None):
        super().__init__(options)
        self.sum = RunningSum()

    def merge(self, ctx: MergeContext) -> TensorDict:
        self.sum.update(sub(ctx.finetuned, ctx.theta0))
        lam = self.options.lam
        if self.options.scale == "mean":
            lam = lam / self.sum.count
        self.record(coefficient=lam)
        return self.sum.merged(ctx.theta0, lam)

    def state_bytes(self) -> int:
        return self.sum.state_bytes()
