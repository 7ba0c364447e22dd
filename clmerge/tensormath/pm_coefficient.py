"""Closed-form merge coefficient of Perturb-and-Merge (P&M).

Paper: H. Qiu, M. Zhang, Z. Qiao, L. Nie, "Train with Perturbation, Infer after
Merging: A Two-Stage Framework for Continual Learning", arXiv 2505.22389
(NeurIPS 2025); the rule and its deviations are written out in ``clmerge/mergers/pm.py``.

Notation (all quantities are tensor dicts keyed by parameter name)::

    theta_hat_{t-1}   merged model after task t-1          (``prev``)
    theta*_i          model fine-tuned on task i           (``finetuned[i-1]``)
    F_i               diagonal empirical Fisher at theta*_i (``fishers[i-1]``)
    Delta_t           theta*_t - theta_hat_{t-1}           (``delta``)
    theta_hat_t       theta_hat_{t-1} + a_t Delta_t

Each task loss is expanded to second order around its own optimum theta*_i (gradient
dropped, Hessian replaced by F_i), and a_t minimises the summed increase::

    Q(a) = sum_{i<=t} 0.5 (theta_hat_{t-1} + a Delta_t - theta*_i)^T F_i
                          (theta_hat_{t-1} + a Delta_t - theta*_i)

    dQ/da = 0  =>  a_t = - sum_{i<=t} (theta_hat_{t-1} - theta*_i)^T F_i Delta_t
                         / sum_{i<=t} Delta_t^T F_i Delta_t

The i = t term has theta_hat_{t-1} - theta*_t = -Delta_t, so::

    a_t = [Delta_t^T F_t Delta_t - sum_{i<t} (theta_hat_{t-1} - theta*_i)^T F_i Delta_t]
          / [sum_{i<=t} Delta_t^T F_i Delta_t]

and a_1 = 1 exactly. With the running sums S_F = sum_{i<t} F_i and
S_Ftheta = sum_{i<t} F_i * theta*_i (elementwise products) the old-task terms are::

    sum_{i<t} (theta_hat_{t-1} - theta*_i)^T F_i Delta_t
        = (S_F * theta_hat_{t-1} - S_Ftheta)^T Delta_t
    sum_{i<t} Delta_t^T F_i Delta_t = Delta_t^T (S_F * Delta_t)

so the same a_t needs O(1) storage (two parameter-sized tensors) instead of keeping
every theta*_i and F_i (O(T), the paper's mode).

Per-module variant (the paper's ablation): every key of the tensor dicts gets its own
numerator and denominator, i.e. one a per parameter tensor. For LoRA-P&M the tensor
dicts hold one dense K/V weight per key, so "per key" is "per target module".

Deviations / choices not fixed by the paper (each one a switch or documented here):

- **Clip** to [0, 1] (``clip=True``, default): inferred from "convex combination";
  ``clip=False`` returns the unconstrained minimiser. Since Q is a convex parabola in
  a, the clipped value is the exact argmin of Q over [0, 1].
- **Zero denominator** (Delta_t = 0, or F_i = 0 wherever Delta_t != 0): Q is flat in
  a, every a is a minimiser, and we return a = 1.0 (take the fine-tuned model, the
  same value as a_1). Per module, per key. Negative Fisher entries raise
  ``ValueError``.
- **i = t term** is computed as -Delta_t^T F_t Delta_t from ``delta`` (the identity
  above), not from ``finetuned[-1]``; this makes a_1 == 1.0 exactly and the stored
  and running-sum forms agree to rounding. ``finetuned[-1]`` is only checked to equal
  ``prev + delta`` up to rounding of its dtype (``ValueError`` otherwise, which
  catches a list that misses the current task).
- **float64**: all inner products and differences are taken in float64 (inputs may be
  float32); results are Python floats. The running sums are stored in float64.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .tensordict import (
    TensorDict,
    _check_keys,
    apply,
    axpy,
    dot,
    dot_per_key,
    nbytes,
    norm,
    sub,
)

__all__ = [
    "pm_coefficient",
    "quadratic_objective",
    "RunningFisherSums",
    "StoredTasks",
]

TD = Mapping[str, torch.Tensor]

#: a returned when the denominator is exactly zero (Q flat in a).
ZERO_DENOMINATOR_COEFFICIENT = 1.0


def _f64(a: TD) -> TensorDict:
    return apply(lambda v: v.detach().to(torch.float64), a)


def _finish(numerator: Mapping[str, torch.Tensor], denominator: Mapping[str, torch.Tensor],
            per_module: bool, clip: bool) -> float | dict[str, float]:
    """a = -numerator / denominator (global: summed over keys), with clip and zero handling."""

    def one(num: float, den: float, where: str) -> float:
        if den < 0.0:
            raise ValueError(f"negative P&M denominator {den} ({where}): "
                             "Fisher entries must be >= 0")
        if den == 0.0:
            return ZERO_DENOMINATOR_COEFFICIENT
        a = -num / den
        if clip:
            a = min(1.0, max(0.0, a))
        return a

    if per_module:
        return {k: one(float(numerator[k]), float(denominator[k]), k) for k in numerator}
    num = float(sum(float(v) for v in numerator.values()))
    den = float(sum(float(v) for v in denominator.values()))
    return one(num, den, "global")


def _check_nonnegative(fishers: Sequence[TD]) -> None:
    for i, f in enumerate(fishers):
        for k, v in f.items():
            if bool((v < 0).any()):
                raise ValueError(f"negative Fisher entries (fisher {i}, key {k!r}): must be >= 0")


def _check_current(prev: TD, finetuned_t: TD, delta: TD) -> None:
    """Require finetuned_t == prev + delta up to the rounding of the inputs' dtypes."""
    eps = max(torch.finfo(v.dtype).eps if v.is_floating_point() else 0.0
              for d in (prev, finetuned_t, delta) for v in d.values())
    err = norm(sub(_f64(finetuned_t), axpy(_f64(prev), 1.0, _f64(delta))))
    tol = 4.0 * eps * (norm(prev) + norm(finetuned_t) + norm(delta)) + 1e-300
    if err > tol:
        raise ValueError(
            f"finetuned[-1] != prev + delta (|err| = {err:.3e} > {tol:.3e}); "
            "finetuned must list theta*_1..theta*_t including the current task")


def _current_terms(delta64: TD, fisher_t: TD) -> dict[str, torch.Tensor]:
    """Delta^T F_t Delta per key (float64)."""
    return dot_per_key(delta64, delta64, weight=fisher_t)


def pm_coefficient(prev: TD, finetuned: Sequence[TD], fishers: Sequence[TD], delta: TD,
                   per_module: bool = False, clip: bool = True) -> float | dict[str, float]:
    """P&M merge coefficient a_t from all stored tasks (the paper's O(T) form).

    ``a_t = - sum_{i<=t} (prev - theta*_i)^T F_i Delta / sum_{i<=t} Delta^T F_i Delta``
    (arXiv 2505.22389; see the module docstring for derivation and deviations).

    Args:
        prev: theta_hat_{t-1}, the merged model before task t.
        finetuned: [theta*_1, ..., theta*_t]; the last one must equal prev + delta.
        fishers: [F_1, ..., F_t], diagonal Fishers (non-negative), same keys.
        delta: Delta_t = theta*_t - theta_hat_{t-1}.
        per_module: one a per key (dict) instead of one global float.
        clip: clip to [0, 1].

    Returns:
        a Python float, or ``{key: float}`` when ``per_module``. A zero denominator
        (globally, or for a key when per_module) gives 1.0.
    """
    if len(finetuned) != len(fishers) or len(finetuned) == 0:
        raise ValueError(f"need as many finetuned models as Fishers (>= 1), got "
                         f"{len(finetuned)} and {len(fishers)}")
    _check_keys(prev, delta, *finetuned, *fishers)
    _check_current(prev, finetuned[-1], delta)
    _check_nonnegative(fishers)
    prev64, delta64 = _f64(prev), _f64(delta)

    cur = _current_terms(delta64, fishers[-1])
    numerator = {k: -v for k, v in cur.items()}          # i = t: (prev - theta*_t) = -Delta
    denominator = dict(cur)
    for theta_i, fisher_i in zip(finetuned[:-1], fishers[:-1]):
        diff = sub(prev64, _f64(theta_i))
        num_i = dot_per_key(diff, delta64, weight=fisher_i)
        den_i = dot_per_key(delta64, delta64, weight=fisher_i)
        for k in numerator:
            numerator[k] = numerator[k] + num_i[k]
            denominator[k] = denominator[k] + den_i[k]
    return _finish(numerator, denominator, per_module, clip)


def quadratic_objective(a: float | Mapping[str, float], prev: TD, finetuned: Sequence[TD],
                        fishers: Sequence[TD], delta: TD) -> float:
    """Q(a) = sum_i 0.5 (prev + a Delta - theta*_i)^T F_i (prev + a Delta - theta*_i).

    The Fisher-weighted quadratic surrogate of the summed loss increase whose argmin
    over a is :func:`pm_coefficient` (arXiv 2505.22389). ``a`` is one float, or one
    float per key (per-module variant; Q is then separable over keys). All of
    ``finetuned`` is used as given, including theta*_t. Computed in float64.
    """
    if len(finetuned) != len(fishers):
        raise ValueError("need as many finetuned models as Fishers")
    _check_keys(prev, delta, *finetuned, *fishers)
    merged = axpy(_f64(prev), a, _f64(delta))
    total = torch.zeros((), dtype=torch.float64)
    for theta_i, fisher_i in zip(finetuned, fishers):
        diff = sub(merged, _f64(theta_i))
        total = total + 0.5 * dot(diff, diff, weight=fisher_i).cpu()
    return float(total)


class RunningFisherSums:
    """O(1)-storage P&M state: S_F = sum_{i<t} F_i and S_Ftheta = sum_{i<t} F_i * theta*_i.

    ``coefficient`` returns the same a_t as :func:`pm_coefficient` over all stored
    tasks (arXiv 2505.22389, our rewrite; see the module docstring)::

        numerator   = (S_F * prev - S_Ftheta)^T Delta  -  Delta^T F_t Delta
        denominator =  Delta^T (S_F * Delta)           +  Delta^T F_t Delta
        a_t         = - numerator / denominator        (clipped to [0, 1])

    The second terms are the current task (i = t), where prev - theta*_t = -Delta.
    The sums are kept in float64 on the device of the first Fisher given; memory is
    two parameter-sized float64 tensor dicts, independent of the number of tasks.
    Usage per task: ``a = s.coefficient(prev, delta, F_t)``; then
    ``s.update(F_t, prev + delta)``.
    """

    def __init__(self) -> None:
        self.sum_fisher: TensorDict | None = None
        self.sum_fisher_theta: TensorDict | None = None
        self.num_tasks = 0

    def coefficient(self, prev: TD, delta: TD, fisher_t: TD, per_module: bool = False,
                    clip: bool = True) -> float | dict[str, float]:
        _check_keys(prev, delta, fisher_t)
        _check_nonnegative([fisher_t])
        delta64 = _f64(delta)
        cur = _current_terms(delta64, fisher_t)
        numerator = {k: -v for k, v in cur.items()}
        denominator = dict(cur)
        if self.sum_fisher is not None:
            _check_keys(prev, self.sum_fisher)
            prev64 = _f64(prev)
            # S_F * prev - S_Ftheta = sum_{i<t} F_i * (prev - theta*_i)
            weighted = apply(lambda sf, p, sft: sf * p - sft,
                             self.sum_fisher, prev64, self.sum_fisher_theta)
            num_old = dot_per_key(weighted, delta64)
            den_old = dot_per_key(delta64, delta64, weight=self.sum_fisher)
            for k in numerator:
                numerator[k] = numerator[k] + num_old[k]
                denominator[k] = denominator[k] + den_old[k]
        return _finish(numerator, denominator, per_module, clip)

    def update(self, fisher_t: TD, finetuned_t: TD) -> None:
        """Add task t: S_F += F_t, S_Ftheta += F_t * theta*_t."""
        _check_keys(fisher_t, finetuned_t)
        _check_nonnegative([fisher_t])
        f64 = apply(lambda v: v.detach().to(torch.float64, copy=True), fisher_t)  # never alias
        ft = apply(lambda f, th: f * th.detach().to(device=f.device, dtype=torch.float64),
                   f64, finetuned_t)
        if self.sum_fisher is None:
            self.sum_fisher, self.sum_fisher_theta = f64, ft
        else:
            _check_keys(self.sum_fisher, fisher_t)
            for k in self.sum_fisher:
                self.sum_fisher[k].add_(f64[k])
                self.sum_fisher_theta[k].add_(ft[k])
        self.num_tasks += 1

    def state_bytes(self) -> int:
        """Bytes held across tasks (0 before the first update, then constant)."""
        if self.sum_fisher is None:
            return 0
        return nbytes([self.sum_fisher, self.sum_fisher_theta])


class StoredTasks:
    """O(T)-storage P&M state, as in the paper: keeps every theta*_i and F_i.

    Same interface as :class:`RunningFisherSums`; ``coefficient`` calls
    :func:`pm_coefficient` with the stored tasks plus the current one
    (theta*_t = prev + delta, formed in float64). Stores detached clones in the
    dtype given, so ``state_bytes`` grows linearly with the number of tasks.
    """

    def __init__(self) -> None:
        self.finetuned: list[TensorDict] = []
        self.fishers: list[TensorDict] = []

    @property
    def num_tasks(self) -> int:
        return len(self.finetuned)

    def coefficient(self, prev: TD, delta: TD, fisher_t: TD, per_module: bool = False,
                    clip: bool = True) -> float | dict[str, float]:
        current = axpy(_f64(prev), 1.0, _f64(delta))
        return pm_coefficient(prev, [*self.finetuned, current], [*self.fishers, fisher_t],
                              delta, per_module=per_module, clip=clip)

    def update(self, fisher_t: TD, finetuned_t: TD) -> None:
        _check_keys(fisher_t, finetuned_t)
        self.fishers.append({k: v.detach().clone() for k, v in fisher_t.items()})
        self.finetuned.append({k: v.detach().clone() for k, v in finetuned_t.items()})

    def state_bytes(self) -> int:
        return nbytes(self.finetuned) + nbytes(self.fishers)
