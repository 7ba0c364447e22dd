"""The baseline merge rules as pure functions on tensor dicts.

Every rule here takes and returns ``dict[str, Tensor]`` ("tensor dicts", see
:mod:`clmerge.tensormath.tensordict`), returns new tensors and never mutates its
inputs. Nothing here imports Avalanche or peft; the mergers that run inside the
continual-learning pipeline wrap these functions and own any persisted state.

Notation (as on the book's methods page, ``chapters/methods.md``)::

    theta_0                pretrained model
    theta*_t               model fine-tuned on experience t (t = 1, 2, ...)
    theta_hat_t            merged model after experience t
    tau_i = theta*_i - theta_0            task vector w.r.t. the pretrained model
    Delta_t = theta*_t - theta_hat_{t-1}  update w.r.t. the previous merged model
    F_t                    diagonal Fisher (a tensor dict of non-negative entries)

All products, maxima and comparisons below are elementwise.

Validation: argument values out of range, empty task-vector lists and tensor dicts
whose keys or shapes disagree raise ``ValueError`` with a message naming the
argument. Inputs are assumed finite (NaN/inf handling is unspecified).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Literal, Mapping, Sequence

import torch

from .tensordict import TensorDict, add, axpy, clone, nbytes, scale

__all__ = [
    "running_average",
    "coma",
    "cofima",
    "task_arithmetic",
    "running_sum",
    "task_arithmetic_from_sum",
    "StreamingTaskVector",
    "RunningSum",
    "ties_keep_count",
    "ties_trim",
    "ties_task_vector",
    "ties_merge",
    "dare",
    "magmax",
    "magmax_task_vector",
    "running_max_abs",
    "MaxAbsAccumulator",
]

TensorDictLike = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------- checks


def _check_like(ref: TensorDictLike, other: TensorDictLike, ref_name: str,
                other_name: str) -> None:
    """Raise ValueError unless ``other`` has exactly ``ref``'s keys and shapes."""
    if not isinstance(other, Mapping):
        raise ValueError(f"{other_name} must be a tensor dict (Mapping[str, Tensor]), "
                         f"got {type(other).__name__}")
    if set(ref) != set(other):
        missing = sorted(set(ref) - set(other))
        extra = sorted(set(other) - set(ref))
        raise ValueError(
            f"{other_name} and {ref_name} have different keys: "
            f"missing from {other_name}: {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"not in {ref_name}: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for k in ref:
        if ref[k].shape != other[k].shape:
            raise ValueError(
                f"shape mismatch for key {k!r}: {ref_name} has {tuple(ref[k].shape)}, "
                f"{other_name} has {tuple(other[k].shape)}")


def _check_list(task_vectors: Iterable[TensorDictLike], ref: TensorDictLike | None,
                ref_name: str, name: str = "task_vectors") -> list[TensorDictLike]:
    """Materialise ``task_vectors`` as a non-empty list of tensor dicts like ``ref``."""
    if isinstance(task_vectors, Mapping):
        raise ValueError(f"{name} must be a sequence of tensor dicts, got a single "
                         "tensor dict; wrap it in a list")
    tvs = list(task_vectors)
    if not tvs:
        raise ValueError(f"{name} is empty: at least one task vector is needed")
    if ref is None:
        ref, ref_name = tvs[0], f"{name}[0]"
    for i, tv in enumerate(tvs):
        _check_like(ref, tv, ref_name, f"{name}[{i}]")
    return tvs


def _check_fraction(value: float, name: str, *, low_closed: bool, high_closed: bool,
                    hint: str = "") -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok_low = x >= 0.0 if low_closed else x > 0.0
    ok_high = x <= 1.0 if high_closed else x < 1.0
    if not (ok_low and ok_high):  # also rejects NaN
        interval = f"{'[' if low_closed else '('}0, 1{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}{hint}")
    return x


def _check_finite(value: float, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return x


# ------------------------------------------------------------- interpolation rules


def running_average(prev: TensorDictLike | None, finetuned: TensorDictLike,
                    t: int) -> TensorDict:
    """Running mean of the fine-tuned models (baseline ``average``).

    Source: the "Model Averaging" baseline of Perturb-and-Merge (Qiu et al.,
    arXiv 2505.22389), i.e. uniform weight averaging of the sequence of fine-tuned
    models, computed incrementally.

    Rule (t is 1-based)::

        theta_hat_t = ((t-1)/t) * theta_hat_{t-1} + (1/t) * theta*_t
        theta_hat_1 = theta*_1          (prev is ignored and may be None)

    Unrolled, theta_hat_t = (1/t) * sum_{i<=t} theta*_i when every step starts
    from the previous merged model's running mean; it equals the plain mean of the
    fine-tuned models up to float rounding.

    Args:
        prev: theta_hat_{t-1}; ignored (may be None) when t == 1.
        finetuned: theta*_t.
        t: index of the current experience, an int >= 1.
    """
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t is the 1-based experience index, an int >= 1; got {t!r}")
    if not isinstance(finetuned, Mapping):
        raise ValueError("finetuned must be a tensor dict")
    if t == 1:
        return clone(finetuned)
    if prev is None:
        raise ValueError(f"prev is required when t > 1 (got t={t})")
    _check_like(prev, finetuned, "prev", "finetuned")
    return axpy(scale(prev, (t - 1) / t), 1.0 / t, finetuned)


def coma(prev: TensorDictLike, finetuned: TensorDictLike, alpha: float = 0.4) -> TensorDict:
    """CoMA: continual model averaging with a fixed coefficient (baseline ``coma``).

    Source: Marouf et al., "Weighted Ensemble Models Are Strong Continual
    Learners", ECCV 2024, arXiv 2312.08977 (CoMA).

    Rule::

        theta_hat_t = (1 - alpha) * theta_hat_{t-1} + alpha * theta*_t

    Default alpha = 0.4, the ``wt_alpha`` of the authors' released configs
    (IemProg/CoFiMA, ``exps/cofima/*.json``). alpha = 1 returns theta*_t
    (sequential fine-tuning), alpha = 0 returns theta_hat_{t-1}.

    Args:
        prev: theta_hat_{t-1}.
        finetuned: theta*_t.
        alpha: weight of the new model, in [0, 1].
    """
    a = _check_fraction(alpha, "alpha", low_closed=True, high_closed=True)
    _check_like(prev, finetuned, "prev", "finetuned")
    return axpy(scale(prev, 1.0 - a), a, finetuned)


def cofima(prev: TensorDictLike, finetuned: TensorDictLike,
           fisher_prev: TensorDictLike, fisher_new: TensorDictLike,
           alpha: float = 0.4, fisher_floor: float = 1e-4, *,
           fisher_max: float | None = None) -> TensorDict:
    """CoFiMA: Fisher-weighted continual model averaging (baseline ``cofima``).

    Source: Marouf et al., "Weighted Ensemble Models Are Strong Continual
    Learners", ECCV 2024, arXiv 2312.08977 (CoFiMA).

    Rule (elementwise, per parameter)::

        F_p = max(F_{t-1}, fisher_floor)      F_n = max(F_t, fisher_floor)
        theta_hat_t = ((1-alpha) F_p theta_hat_{t-1} + alpha F_n theta*_t)
                      / ((1-alpha) F_p + alpha F_n)

    With F_p == F_n this is :func:`coma` (up to float rounding). F_{t-1} is the
    Fisher of the previous task's model, which is what the merger persists.

    Defaults: alpha = 0.4 (released configs); fisher_floor = 1e-4 (one reading
    of "Fisher clipped at 1e-4"). The floor keeps the denominator
    positive, so parameters with zero Fisher under both models do not produce 0/0.

    Deviation to know about: the authors' released code (IemProg/CoFiMA,
    ``models/cofima.py``, ``fishermax = 0.0001``) clips the Fisher from *above*
    (``torch.min(fisher, 1e-4)``) when estimating it and applies no floor in the
    merge. Pass ``fisher_max=1e-4`` (with a small ``fisher_floor``) to apply that cap
    here; capping in the merge is equivalent to capping at estimation because the cap
    is idempotent. Note that a floor of 1e-4 makes every entry whose Fisher is below
    1e-4 in both models fall back to the CoMA weights.

    Args:
        prev, finetuned: theta_hat_{t-1}, theta*_t.
        fisher_prev, fisher_new: diagonal Fishers F_{t-1}, F_t, same keys/shapes.
        alpha: weight of the new model, in [0, 1].
        fisher_floor: lower clamp for both Fishers, > 0.
        fisher_max: optional upper clamp for both Fishers, >= fisher_floor.
    """
    a = _check_fraction(alpha, "alpha", low_closed=True, high_closed=True)
    floor = _check_finite(fisher_floor, "fisher_floor")
    if floor <= 0.0:
        raise ValueError(f"fisher_floor must be > 0 (it keeps the denominator positive), "
                         f"got {fisher_floor!r}")
    cap = None
    if fisher_max is not None:
        cap = _check_finite(fisher_max, "fisher_max")
        if cap < floor:
            raise ValueError(f"fisher_max ({fisher_max!r}) must be >= fisher_floor "
                             f"({fisher_floor!r})")
    _check_like(prev, finetuned, "prev", "finetuned")
    _check_like(prev, fisher_prev, "prev", "fisher_prev")
    _check_like(prev, fisher_new, "prev", "fisher_new")

    out: TensorDict = {}
    for k in prev:
        fp = fisher_prev[k].clamp(min=floor, max=cap)
        fn = fisher_new[k].clamp(min=floor, max=cap)
        wp = (1.0 - a) * fp
        wn = a * fn
        out[k] = (wp * prev[k] + wn * finetuned[k]) / (wp + wn)
    return out


# ------------------------------------------------------------------ task arithmetic


def running_sum(acc: TensorDictLike | None, tau: TensorDictLike) -> TensorDict:
    """One streaming step of task arithmetic: ``acc + tau`` (a copy of tau if acc is None).

    Summing left to right, ``(((tau_1 + tau_2) + tau_3) + ...)``, exactly as
    :func:`task_arithmetic` does, so the streaming and keep-all forms agree bitwise.
    """
    if acc is None:
        if not isinstance(tau, Mapping):
            raise ValueError("tau must be a tensor dict")
        return clone(tau)
    _check_like(acc, tau, "acc", "tau")
    return add(acc, tau)


def task_arithmetic_from_sum(theta0: TensorDictLike, tau_sum: TensorDictLike,
                             lam: float) -> TensorDict:
    """``theta_0 + lam * tau_sum``: task arithmetic from a kept running sum."""
    lam_f = _check_finite(lam, "lam")
    _check_like(theta0, tau_sum, "theta0", "tau_sum")
    return axpy(theta0, lam_f, tau_sum)


def task_arithmetic(theta0: TensorDictLike, task_vectors: Sequence[TensorDictLike],
                    lam: float) -> TensorDict:
    """Task arithmetic, addition of task vectors (baseline ``task_arithmetic``).

    Source: Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023,
    arXiv 2212.04089.

    Rule::

        theta_hat_t = theta_0 + lam * sum_{i<=t} tau_i

    No default for lam: the paper picks it on held-out data. The sum is formed left
    to right from tau_1, the same order as the streaming form
    (:func:`running_sum` / :class:`RunningSum` then
    :func:`task_arithmetic_from_sum`), so both give identical tensors. Negative lam
    (task negation) is allowed.
    """
    tvs = _check_list(task_vectors, theta0, "theta0")
    acc: TensorDict | None = None
    for tau in tvs:
        acc = running_sum(acc, tau)
    return task_arithmetic_from_sum(theta0, acc, lam)


class StreamingTaskVector:
    """Streaming state of a rule that folds each task vector into one running vector
    (task arithmetic's sum, MagMax's max-abs selection) and merges ``theta_0 + lam *
    value``.

    Subclasses set ``fold`` (``acc, tau -> new acc``, ``acc`` None before the first task).
    ``update(tau)`` folds one task vector in; ``merged(theta0, lam)`` gives
    ``theta_0 + lam * value``; ``state_bytes()`` is what persists between tasks (one
    task vector, whatever the number of tasks).
    """

    fold: Callable[[TensorDictLike | None, TensorDictLike], TensorDict]
    default_lam: float | None = None

    def __init__(self) -> None:
        self.value: TensorDict | None = None
        self.count = 0

    def update(self, tau: TensorDictLike) -> TensorDict:
        self.value = type(self).fold(self.value, tau)
        self.count += 1
        return self.value

    def merged(self, theta0: TensorDictLike, lam: float | None = None) -> TensorDict:
        if self.value is None:
            raise ValueError(f"{type(self).__name__} is empty: call update() with a task "
                             f"vector first")
        lam = self.default_lam if lam is None else lam
        if lam is None:
            raise ValueError(f"{type(self).__name__}.merged needs lam")
        lam_f = _check_finite(lam, "lam")
        _check_like(theta0, self.value, "theta0", "accumulated task vector")
        return axpy(theta0, lam_f, self.value)

    def state_bytes(self) -> int:
        return 0 if self.value is None else nbytes(self.value)


class RunningSum(StreamingTaskVector):
    """Streaming task arithmetic: the running sum of task vectors (:func:`running_sum`);
    ``merged`` equals :func:`task_arithmetic_from_sum` of the sum."""

    fold = staticmethod(running_sum)


# ----------------------------------------------------------------------------- TIES


TrimScope = Literal["model", "tensor"]


def ties_keep_count(numel: int, k: float) -> int:
    """Number of entries TIES keeps out of ``numel`` for keep-fraction ``k``.

    ``m = max(1, floor(k * numel))`` (capped at numel; 0 when numel is 0). A tolerance
    of 1e-6 absorbs float error in ``k * numel`` (e.g. 0.29 * 100 = 28.999...).
    """
    k = _check_fraction(k, "k", low_closed=False, high_closed=True)
    if numel <= 0:
        return 0
    return min(numel, max(1, math.floor(k * numel + 1e-6)))


def _magnitude_threshold(flat_abs: torch.Tensor, k: float) -> torch.Tensor:
    """The m-th largest value of a 1-D tensor of magnitudes, m = ties_keep_count."""
    n = flat_abs.numel()
    m = ties_keep_count(n, k)
    # the m-th largest is the (n - m + 1)-th smallest
    return torch.kthvalue(flat_abs, n - m + 1).values


def _apply_threshold(v: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    keep = v.detach().abs().to(thr.dtype) >= thr
    return torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device))


def ties_trim(tau: TensorDictLike, k: float = 0.2,
              trim_scope: TrimScope = "model") -> TensorDict:
    """TIES step 1 ("trim"): keep the top-k fraction of a task vector by magnitude.

    Source: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
    NeurIPS 2023, arXiv 2306.01708.

    Rule, over a set S of entries (the whole model when ``trim_scope="model"``, as in
    the reference code, which flattens all parameters into one vector; each tensor
    separately when ``trim_scope="tensor"``)::

        m     = max(1, floor(k * |S|))
        thr   = m-th largest |tau_j| over j in S
        trim(tau)_j = tau_j if |tau_j| >= thr else 0

    Ties at the threshold: every entry with |tau_j| == thr is kept, so more than m
    entries survive when magnitudes tie at the threshold (the reference code uses the
    same ``>= kthvalue`` comparison). k = 1 keeps everything.

    Deviation: the reference (prateeky2806/ties-merging ``topk_values_mask``) takes
    ``kthvalue(d - int(d*k))``, which keeps int(d*k) + 1 entries and fails for
    k = 1; here exactly m = max(1, floor(k*d)) entries are kept (absent ties).
    """
    k = _check_fraction(k, "k", low_closed=False, high_closed=True,
                        hint=" (a fraction: 0.2 keeps the top 20%)")
    if trim_scope not in ("model", "tensor"):
        raise ValueError(f"trim_scope must be 'model' or 'tensor', got {trim_scope!r}")
    if not isinstance(tau, Mapping):
        raise ValueError("tau must be a tensor dict")
    if trim_scope == "tensor":
        out: TensorDict = {}
        for name, v in tau.items():
            if v.numel() == 0:
                out[name] = v.detach().clone()
            else:
                out[name] = _apply_threshold(v, _magnitude_threshold(
                    v.detach().abs().reshape(-1), k))
        return out
    if sum(v.numel() for v in tau.values()) == 0:
        return clone(tau)
    flat_abs = torch.cat([v.detach().abs().reshape(-1) for v in tau.values()])
    thr = _magnitude_threshold(flat_abs, k)
    del flat_abs
    return {name: _apply_threshold(v, thr) for name, v in tau.items()}


def ties_task_vector(task_vectors: Sequence[TensorDictLike], k: float = 0.2,
                     trim_scope: TrimScope = "model") -> TensorDict:
    """The merged TIES task vector tau_m (trim, elect sign, disjoint mean).

    See :func:`ties_merge` for the rule; this returns tau_m without theta_0.
    """
    tvs = _check_list(task_vectors, None, "")
    trimmed = [ties_trim(tv, k, trim_scope) for tv in tvs]
    names = list(tvs[0])
    stacked = {n: torch.stack([tr[n] for tr in trimmed]) for n in names}
    del trimmed
    elected = {n: torch.sign(s.sum(dim=0)) for n, s in stacked.items()}
    # zero-sum entries take the majority sign over the whole model (exact int count)
    majority = 0
    for e in elected.values():
        majority += int(e.sum(dtype=torch.int64)) if e.numel() else 0
    majority_sign = (majority > 0) - (majority < 0)

    out: TensorDict = {}
    for n in names:
        s = stacked[n]
        e = elected[n]
        e = torch.where(e == 0, torch.full_like(e, majority_sign), e)
        agree = torch.where(e > 0, s > 0, s < 0) & (e != 0)
        total = torch.where(agree, s, torch.zeros((), dtype=s.dtype, device=s.device)).sum(dim=0)
        count = agree.sum(dim=0).clamp(min=1).to(total.dtype)
        out[n] = total / count
    return out


def ties_merge(theta0: TensorDictLike, task_vectors: Sequence[TensorDictLike],
               k: float = 0.2, lam: float = 0.55,
               trim_scope: TrimScope = "model") -> TensorDict:
    """TIES-Merging (baseline ``ties``).

    Source: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
    NeurIPS 2023, arXiv 2306.01708; reference code prateeky2806/ties-merging
    (``topk_values_mask``, ``resolve_sign``, ``disjoint_merge``).

    Rule::

        hat_tau_i = trim(tau_i, k)                      (see ties_trim)
        gamma_j   = sign(sum_i hat_tau_i,j)             elected sign per parameter
        A_j       = {i : sign(hat_tau_i,j) == gamma_j}  (zero entries never agree)
        tau_m,j   = (1/|A_j|) sum_{i in A_j} hat_tau_i,j   (0 when A_j is empty)
        theta_hat = theta_0 + lam * tau_m

    Zero-sum entries (gamma_j = 0 although some hat_tau_i,j != 0, e.g. +1 and -1)
    take the majority sign sign(sum_j gamma_j) over the whole model, as the reference
    code's ``resolve_zero_signs(..., "majority")`` does; if that is 0 too the entry
    merges to 0 (the reference would then pick the negative entries).

    Defaults: k = 0.2, lam = 0.55 (MagMax's continual-learning setting, arXiv
    2407.06322; the TIES paper also uses k = 20% and tunes lam on validation data).
    ``trim_scope="model"`` (default, as in the reference code) trims over the
    whole flattened task vector; ``"tensor"`` trims each parameter tensor separately.
    Sign election is always per parameter entry, majority resolution always over the
    whole model.
    """
    lam_f = _check_finite(lam, "lam")
    tvs = _check_list(task_vectors, theta0, "theta0")
    return axpy(theta0, lam_f, ties_task_vector(tvs, k, trim_scope))


# ----------------------------------------------------------------------------- DARE


def dare(delta: TensorDictLike, p: float,
         generator: torch.Generator | None) -> TensorDict:
    """DARE: drop and rescale (baseline ``dare``, applied to Delta_t before merging).

    Source: Yu et al., "Language Models are Super Mario: Absorbing Abilities from
    Homologous Models as a Free Lunch", ICML 2024, arXiv 2311.03099; reference code
    yule-BUAA/MergeLM (``mask_input_with_mask_rate``).

    Rule, independently per entry::

        m_j ~ Bernoulli(p)                 (1 = drop)
        dare(delta)_j = (1 - m_j) * delta_j / (1 - p)

    so E[dare(delta)] = delta. p = 0 returns an exact copy and draws no random
    numbers. p must be in [0, 1) (p = 1 would drop everything and divide by zero).

    Randomness: masks are drawn with ``torch.bernoulli(full_like(delta_k, p),
    generator=generator)``, one tensor per key in the dict's key order, the same
    draw as the reference code, so a fixed generator seed and key order give a
    reproducible result. ``generator`` (None: torch's global RNG) must live on the
    tensors' device.
    """
    p_f = _check_fraction(p, "p (DARE drop probability)", low_closed=True, high_closed=False)
    if not isinstance(delta, Mapping):
        raise ValueError("delta must be a tensor dict")
    if p_f == 0.0:
        return clone(delta)
    out: TensorDict = {}
    for name, v in delta.items():
        v = v.detach()
        drop = torch.bernoulli(torch.full_like(v, p_f), generator=generator)
        out[name] = torch.where(drop == 0, v / (1.0 - p_f),
                                torch.zeros((), dtype=v.dtype, device=v.device))
    return out


# --------------------------------------------------------------------------- MagMax


def running_max_abs(acc: TensorDictLike | None, tau: TensorDictLike) -> TensorDict:
    """One streaming MagMax step: per entry keep whichever of acc, tau has larger |.|.

    Rule::

        acc_j <- tau_j if |tau_j| >= |acc_j| else acc_j     (acc = None: copy of tau)

    Ties (|tau_j| == |acc_j|, including +x vs -x) go to the newer vector, as in the
    reference ``merge_max_abs`` (danielm1405/magmax, ``torch.where(cur.abs() >=
    max.abs(), cur, max)``). Folding this over tau_1..tau_t gives exactly
    :func:`magmax_task_vector`.
    """
    if acc is None:
        if not isinstance(tau, Mapping):
            raise ValueError("tau must be a tensor dict")
        return clone(tau)
    _check_like(acc, tau, "acc", "tau")
    return {k: torch.where(tau[k].detach().abs() >= acc[k].detach().abs(),
                           tau[k].detach(), acc[k].detach())
            for k in acc}


def magmax_task_vector(task_vectors: Sequence[TensorDictLike]) -> TensorDict:
    """tau_MM: per entry the task-vector value of largest magnitude (latest wins ties)."""
    tvs = _check_list(task_vectors, None, "")
    acc: TensorDict | None = None
    for tau in tvs:
        acc = running_max_abs(acc, tau)
    return acc


def magmax(theta0: TensorDictLike, task_vectors: Sequence[TensorDictLike],
           lam: float = 0.5) -> TensorDict:
    """MagMax: maximum-magnitude selection of task vectors (baseline ``magmax``).

    Source: Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual
    Learning", ECCV 2024, arXiv 2407.06322; reference code danielm1405/magmax
    (``merge_max_abs``).

    Rule, per parameter entry j::

        i*_j      = argmax_i |tau_i,j|       (ties: the latest task, as the reference)
        tau_MM,j  = tau_{i*_j, j}
        theta_hat = theta_0 + lam * tau_MM

    Default lam = 0.5 (the paper's setting). The keep-all form here folds
    :func:`running_max_abs` over the list, which is the streaming form
    (:class:`MaxAbsAccumulator`) that keeps one vector instead of all tau_i; both give
    identical tensors. Note MagMax's protocol starts task t from the previous
    fine-tuned model, which is the pipeline's concern, not this function's.
    """
    lam_f = _check_finite(lam, "lam")
    tvs = _check_list(task_vectors, theta0, "theta0")
    return axpy(theta0, lam_f, magmax_task_vector(tvs))


class MaxAbsAccumulator(StreamingTaskVector):
    """Streaming MagMax: the running max-abs-selected task vector
    (:func:`running_max_abs`), one task vector instead of all of them; ``lam``
    defaults to 0.5 (the paper's)."""

    fold = staticmethod(running_max_abs)
    default_lam = 0.5
