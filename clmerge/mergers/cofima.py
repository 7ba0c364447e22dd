"""``cofima``: Fisher-weighted continual model averaging (CoFiMA).

Paper: I. E. Marouf, S. Roy, E. Tartaglione, S. Lathuiliere, "Weighted Ensemble Models
Are Strong Continual Learners", ECCV 2024, arXiv 2312.08977; released code
IemProg/CoFiMA (``models/cofima.py``). Rule:
:func:`clmerge.tensormath.merge_rules.cofima`.

Rule, after task t (1-based), elementwise per weight entry::

    theta_hat_1 = theta*_1
    F_p = clamp(F_{t-1}, fisher_floor, fisher_max)
    F_n = clamp(F_t,     fisher_floor, fisher_max)
    theta_hat_t = ((1-alpha) F_p theta_hat_{t-1} + alpha F_n theta*_t)
                  / ((1-alpha) F_p + alpha F_n)                          (t > 1)

F_i is the diagonal empirical Fisher of the *fine-tuned* model theta*_i on task i's
training data (:func:`clmerge.mergers.fisher_context.task_fisher`, the same estimate P&M
uses), taken right after training and before merging, exactly where the released code
computes it (``getFisherDiagonal`` before ``interpolate_weights``, which then pairs
``fisher_mat[-2:]``, the previous and the current task's Fishers, with the previous
merged model and the new fine-tuned one).

Defaults, following the released code:

- ``alpha = 0.4`` (``wt_alpha`` in ``exps/cofima/*.json``).
- ``fisher_max = 1e-4``: the released code caps the Fisher from *above*
  (``torch.min(fisher, fishermax)``, ``fishermax = 0.0001``). Entries whose Fisher
  exceeds the cap in both models therefore get CoMA's weights; the cap stops a few
  very large Fisher entries from freezing their weights. ``fisher_max = 0`` disables
  the cap.
- ``fisher_floor = 1e-12``: the released code has no floor (0/0 gives NaN where both
  Fishers vanish); a tiny floor makes such entries fall back to CoMA's weights without
  changing any other entry.
- The other reading of "Fisher clipped at 1e-4" (a *floor*, not a cap) is
  ``--set cofima.fisher_floor=1e-4 --set cofima.fisher_max=0``: every entry whose
  Fisher is below 1e-4 in both models then falls back to CoMA's weights.

Deviations / choices: the first task is not averaged (theta_hat_1 = theta*_1), as in
the released code. Its Fisher is the squared mean gradient of each batch averaged over
batches, in train mode, over every head's logits; here the Fisher is ``fisher``
(``per_sample`` by default: the textbook empirical Fisher) in eval mode over the current
head's logits (the shared head protocol). The released estimator is about 1/B of the
per-sample one at an optimum (B = 128 there), so its cap bites at a relatively larger
Fisher; we keep the value 1e-4 and record the fraction of capped entries per task
(``fisher_capped_fraction``). Classifier alignment is not part of the merger.

Keeps across tasks: the previous task's Fisher F_{t-1} (one tensor per mergeable
weight, the size of the mergeable weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clmerge.mergers.base import MergeContext, Merger, check_choice
from clmerge.mergers.fisher_context import task_fisher
from clmerge.tensormath.merge_rules import cofima
from clmerge.tensormath.tensordict import TensorDict, clone, nbytes


@dataclass
class CoFiMAOptions:
    alpha: float = field(default=0.4, metadata={
        "help": "weight of the new fine-tuned model, in [0, 1]"})
    fisher_max: float = field(default=1e-4, metadata={
        "help": "upper cap on both Fishers (released code: 1e-4); 0 disables the cap"})
    fisher_floor: float = field(default=1e-12, metadata={
        "help": "lower clamp on both Fishers, > 0 (keeps 0/0 out of the merge)"})
    fisher: str = field(default="per_sample", metadata={"help": "per_sample or per_batch"})
    fisher_samples: int = field(default=1024, metadata={
        "help": "training samples of the current task used for its Fisher",
        "max": 10_000_000, "why": "each sample is a forward and backward pass"})

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha}")
        if not self.fisher_floor > 0:
            raise ValueError(f"fisher_floor must be > 0; got {self.fisher_floor}")
        if self.fisher_max != 0 and not self.fisher_max >= self.fisher_floor:
            raise ValueError(f"fisher_max must be 0 (no cap) or >= fisher_floor "
                             f"({self.fisher_floor}); got {self.fisher_max}")
        check_choice(self.fisher, "fisher", ("per_sample", "per_batch"))
        if self.fisher_samples < 1:
            raise ValueError(f"fisher_samples must be >= 1; got {self.fisher_samples}")


class CoFiMA(Merger):
    Options = CoFiMAOptions

    def __init__(self, options: CoFiMAOptions | None = None):
        super().__init__(options)
        self.fisher_prev: TensorDict | None = None

    def merge(self, ctx: MergeContext) -> TensorDict:
        o = self.options
        fisher_t = task_fisher(ctx, mode=o.fisher, max_samples=o.fisher_samples)
        cap = o.fisher_max if o.fisher_max > 0 else None
        capped = (sum(int((f > cap).sum()) for f in fisher_t.values())
                  / sum(f.numel() for f in fisher_t.values())) if cap else 0.0
        if self.fisher_prev is None:
            merged = clone(ctx.finetuned)
            self.record(coefficient=1.0, fisher_capped_fraction=capped)
        else:
            merged = cofima(ctx.merged, ctx.finetuned, self.fisher_prev, fisher_t,
                            alpha=o.alpha, fisher_floor=o.fisher_floor, fisher_max=cap)
            self.record(coefficient=o.alpha, fisher_capped_fraction=capped)
        self.fisher_prev = fisher_t
        return merged

    def state_bytes(self) -> int:
        return 0 if self.fisher_prev is None else nbytes(self.fisher_prev)
