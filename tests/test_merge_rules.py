"""Tests of clmerge.tensormath.merge_rules against independent oracles.

The oracles below are written afresh from the published equations and in the style
of the reference implementations (mlfoundations/task_vectors and danielm1405/magmax
for task arithmetic and ``merge_max_abs``, prateeky2806/ties-merging for TIES,
yule-BUAA/MergeLM for DARE). They deliberately take a different route from the
library code: TIES flattens all task vectors into one (n_tasks, D) matrix, MagMax
uses argmax over a stacked tensor plus gather instead of a pairwise fold, DARE
multiplies by (1 - mask) instead of selecting.

Equality standard: ``torch.equal`` (bitwise) wherever both sides perform the same
floating-point operations in the same order, which holds for task arithmetic, TIES,
MagMax, DARE and the alpha = 0/1 edge cases. Where the summation order genuinely
differs (running mean vs plain mean, CoFiMA with equal Fishers vs CoMA) the
comparison is done in float64 with rtol = atol = 1e-12 and says so.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch

from clmerge.tensormath import tensordict as td
from clmerge.tensormath.merge_rules import (
    MaxAbsAccumulator,
    RunningSum,
    cofima,
    coma,
    dare,
    magmax,
    magmax_task_vector,
    running_average,
    running_max_abs,
    running_sum,
    task_arithmetic,
    task_arithmetic_from_sum,
    ties_keep_count,
    ties_merge,
    ties_task_vector,
    ties_trim,
)

# Several keys and shapes, including a 4-D conv-like weight and a 0-d scalar.
SHAPES = {
    "conv.weight": (4, 3, 3, 3),
    "conv.bias": (4,),
    "fc.weight": (5, 7),
    "fc.bias": (5,),
    "logit_scale": (),
}
NUMEL = sum(math.prod(s) for s in SHAPES.values())  # 108 + 4 + 35 + 5 + 1 = 153


def rand_td(seed: int, dtype=torch.float32, shapes=SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}


def rand_tvs(n: int, seed: int, dtype=torch.float32) -> list[dict[str, torch.Tensor]]:
    return [rand_td(seed * 1000 + i, dtype) for i in range(n)]


def assert_td_equal(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())


def assert_td_close64(a, b):
    """float64 comparison, rtol = atol = 1e-12 (summation order differs)."""
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == torch.float64
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12)


# =============================================================== oracles


def oracle_task_arithmetic(theta0, tvs, lam):
    """mlfoundations/task_vectors style: sum the vectors, then pretrained + coef * sum."""
    out = {}
    for key in theta0:
        total = tvs[0][key]
        for tv in tvs[1:]:
            total = total + tv[key]
        out[key] = theta0[key] + lam * total
    return out


def _flatten(d, names):
    return torch.cat([d[n].reshape(-1) for n in names])


def _unflatten(vec, like, names):
    out, i = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vec[i:i + size].reshape(like[n].shape)
        i += size
    return out


def oracle_ties_task_vector(tvs, k, scope):
    """prateeky2806/ties-merging style on a (n_tasks, D) matrix.

    Trim: per row, kthvalue of |.|, keep entries >= it. The index is chosen to keep
    m = max(1, floor(k * d)) entries (computed exactly with Fraction); the reference
    uses kthvalue(d - int(d*k)), which keeps one more and fails for k = 1.
    Sign: sign of the column sums, zeros resolved to the majority sign.
    Merge: disjoint mean over entries agreeing with the elected sign.
    """
    names = list(tvs[0])
    M = torch.stack([_flatten(tv, names) for tv in tvs])  # (n, D)
    n_rows, D = M.shape
    if scope == "model":
        segments = [(0, D)]
    else:
        segments, i = [], 0
        for n in names:
            segments.append((i, i + tvs[0][n].numel()))
            i += tvs[0][n].numel()
    trimmed = M.clone()
    for a, b in segments:
        seg = M[:, a:b]
        d = b - a
        m = max(1, math.floor(Fraction(str(k)) * d))
        kth = seg.abs().kthvalue(d - m + 1, dim=1, keepdim=True).values
        trimmed[:, a:b] = seg * (seg.abs() >= kth)
    sign = torch.sign(trimmed.sum(dim=0))
    majority = torch.sign(sign.sum())
    sign[sign == 0] = majority
    rows_to_keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    selected = trimmed * rows_to_keep
    counts = (selected != 0).sum(dim=0).float()
    merged = selected.sum(dim=0) / torch.clamp(counts, min=1)
    return _unflatten(merged, tvs[0], names)


def oracle_ties(theta0, tvs, k, lam, scope):
    names = list(theta0)
    merged = _flatten(oracle_ties_task_vector(tvs, k, scope), names)
    return _unflatten(_flatten(theta0, names) + lam * merged, theta0, names)


def oracle_magmax_task_vector(tvs):
    """Keep-all form: argmax of |.| over the stacked vectors, then gather.

    The reference merge_max_abs lets the later vector win ties (``>=``); argmax
    returns the first maximum, so it runs over the reversed stack.
    """
    n = len(tvs)
    out = {}
    for key in tvs[0]:
        stacked = torch.stack([tv[key] for tv in tvs])
        idx_rev = stacked.flip(0).abs().argmax(dim=0, keepdim=True)
        out[key] = torch.gather(stacked, 0, (n - 1) - idx_rev).squeeze(0)
    return out


def oracle_dare(delta, p, seed):
    """yule-BUAA/MergeLM style: mask = bernoulli(p); x * (1 - mask) / (1 - p)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, v in delta.items():
        mask = torch.bernoulli(torch.full_like(v, p), generator=g)
        out[key] = v * (1 - mask) / (1 - p)
    return out


def oracle_cofima(prev, ft, fp, fn, alpha, floor):
    out = {}
    for key in prev:
        a = torch.maximum(fp[key], torch.full_like(fp[key], floor))
        b = torch.maximum(fn[key], torch.full_like(fn[key], floor))
        out[key] = ((1 - alpha) * a * prev[key] + alpha * b * ft[key]) / (
            (1 - alpha) * a + alpha * b)
    return out


# ======================================================= task arithmetic


@pytest.mark.parametrize("n_tasks", [1, 2, 5])
@pytest.mark.parametrize("lam", [1.0, 0.3, -0.5])
def test_task_arithmetic_matches_oracle(n_tasks, lam):
    theta0, tvs = rand_td(1), rand_tvs(n_tasks, 2)
    assert_td_equal(task_arithmetic(theta0, tvs, lam), oracle_task_arithmetic(theta0, tvs, lam))


@pytest.mark.parametrize("n_tasks", [1, 3, 6])
def test_task_arithmetic_streaming_identical(n_tasks):
    theta0, tvs = rand_td(3), rand_tvs(n_tasks, 4)
    acc = None
    rs = RunningSum()
    for tv in tvs:
        acc = running_sum(acc, tv)
        rs.update(tv)
    expected = task_arithmetic(theta0, tvs, 0.7)
    assert_td_equal(task_arithmetic_from_sum(theta0, acc, 0.7), expected)
    assert_td_equal(rs.merged(theta0, 0.7), expected)
    assert rs.count == n_tasks
    assert rs.state_bytes() == td.nbytes(theta0) == NUMEL * 4


def test_task_arithmetic_negation_returns_theta0():
    theta0, tau = rand_td(5), rand_td(6)
    neg = td.scale(tau, -1.0)
    assert_td_equal(task_arithmetic(theta0, [tau, neg], 1.0), theta0)


# =================================================================== TIES


@pytest.mark.parametrize("scope", ["model", "tensor"])
@pytest.mark.parametrize("k", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("n_tasks", [1, 2, 3, 6])
def test_ties_matches_reference_style_oracle(n_tasks, k, scope):
    """Trim masks exact; merged values to rtol 1e-6, atol 0.

    The per-task sums run over a (n, D) matrix in the oracle and over
    (n, *shape) tensors in the library, and torch's vectorised reduction may add
    the rows in a different order (observed: 1 ulp at n = 6). Every summand of a
    disjoint mean has the same sign, so there is no cancellation and a relative
    tolerance is tight. Trimming and the final theta_0 + lam * tau_m are exact.
    """
    theta0, tvs = rand_td(10), rand_tvs(n_tasks, 11 + n_tasks)
    o_trimmed = [oracle_ties_task_vector([tv], k, scope) for tv in tvs]  # 1 task: trim only
    for tv, o in zip(tvs, o_trimmed):
        assert_td_equal(ties_trim(tv, k, scope), o)
    tau_m = ties_task_vector(tvs, k, scope)
    o_tau_m = oracle_ties_task_vector(tvs, k, scope)
    for key in tau_m:
        assert torch.equal(tau_m[key] == 0, o_tau_m[key] == 0), key
        assert torch.equal(torch.sign(tau_m[key]), torch.sign(o_tau_m[key])), key
        torch.testing.assert_close(tau_m[key], o_tau_m[key], rtol=1e-6, atol=0)
    got = ties_merge(theta0, tvs, k=k, lam=0.55, trim_scope=scope)
    assert_td_equal(got, {key: theta0[key] + 0.55 * tau_m[key] for key in theta0})
    if n_tasks <= 2:  # a sum of at most two terms has one order: whole oracle bitwise
        assert_td_equal(got, oracle_ties(theta0, tvs, k, 0.55, scope))


@pytest.mark.parametrize("lam", [0.55, 1.0])
def test_ties_one_task_k1_is_theta0_plus_lam_tau(lam):
    theta0, tau = rand_td(20), rand_td(21)
    tau["fc.bias"][1] = 0.0  # a zero entry stays zero
    got = ties_merge(theta0, [tau], k=1.0, lam=lam)
    assert_td_equal(got, td.axpy(theta0, lam, tau))


@pytest.mark.parametrize("k, expected", [
    (0.2, 30),    # floor(0.2 * 153) = 30
    (0.05, 7),    # floor(7.65)
    (0.001, 1),   # floor(0.153) = 0 -> at least one entry
    (1.0, 153),
])
def test_ties_trim_keeps_floor_k_d_entries_model_scope(k, expected):
    tau = rand_td(30)  # continuous values: no ties in magnitude
    assert ties_keep_count(NUMEL, k) == expected
    kept = ties_trim(tau, k, "model")
    assert sum(int((v != 0).sum()) for v in kept.values()) == expected
    # what survives are the largest magnitudes, unchanged
    flat = torch.cat([v.reshape(-1) for v in tau.values()])
    flat_kept = torch.cat([v.reshape(-1) for v in kept.values()])
    top = flat.abs().topk(expected).indices
    assert torch.equal(flat_kept[top], flat[top])


def test_ties_trim_tensor_scope_counts_per_tensor():
    tau = rand_td(31)
    kept = ties_trim(tau, 0.2, "tensor")
    for key, v in kept.items():
        n = tau[key].numel()
        assert int((v != 0).sum()) == max(1, math.floor(0.2 * n)), key


def test_ties_keep_count_absorbs_float_error():
    assert 0.29 * 100 < 29  # the float product falls just short of 29
    assert ties_keep_count(100, 0.29) == 29
    assert ties_keep_count(0, 0.2) == 0


def test_ties_trim_ties_at_threshold_are_all_kept():
    # |values| sorted: 3,3,2,2,2,1,1,0 ; k = 3/8 -> m = 3 -> threshold = 3rd largest = 2
    tau = {"w": torch.tensor([3.0, -3.0, 2.0, 2.0, -2.0, 1.0, -1.0, 0.0])}
    kept = ties_trim(tau, 3 / 8, "model")
    assert torch.equal(kept["w"], torch.tensor([3.0, -3.0, 2.0, 2.0, -2.0, 0.0, 0.0, 0.0]))
    assert_td_equal(ties_task_vector([tau], 3 / 8), oracle_ties_task_vector([tau], 3 / 8, "model"))


def test_ties_sign_election_and_disjoint_mean_by_hand():
    taus = [{"w": torch.tensor([1.0, -2.0, 0.0, 4.0])},
            {"w": torch.tensor([3.0, 1.0, -1.0, -1.0])},
            {"w": torch.tensor([-1.0, -1.0, 0.0, 2.0])}]
    # column sums 3, -2, -1, 5 -> signs +, -, -, +
    # agreeing entries: {1,3} {-2,-1} {-1} {4,2}; zeros never count
    merged = ties_task_vector(taus, k=1.0)
    assert torch.equal(merged["w"], torch.tensor([2.0, -1.5, -1.0, 3.0]))
    theta0 = {"w": torch.ones(4)}
    assert torch.equal(ties_merge(theta0, taus, k=1.0, lam=0.5)["w"],
                       torch.tensor([2.0, 0.25, 0.5, 2.5]))


def test_ties_zero_sum_takes_majority_sign():
    taus = [{"a": torch.tensor([1.0, 2.0, 5.0]), "b": torch.tensor([-4.0])},
            {"a": torch.tensor([-1.0, 1.0, 3.0]), "b": torch.tensor([-4.0])}]
    # sums: a = [0, 3, 8], b = [-8] -> signs [0, +, +], [-]; majority = sign(1) = +
    # entry a0: the +1 agrees with the majority sign -> 1.0
    merged = ties_task_vector(taus, k=1.0)
    assert torch.equal(merged["a"], torch.tensor([1.0, 1.5, 4.0]))
    assert torch.equal(merged["b"], torch.tensor([-4.0]))
    assert_td_equal(merged, oracle_ties_task_vector(taus, 1.0, "model"))


def test_ties_zero_sum_with_zero_majority_merges_to_zero():
    # every column sums to 0 and so does the majority: no sign is elected, the
    # entries merge to 0 (the reference's torch.where(sign > 0, ...) would pick the
    # negative entries here; see ties_merge's docstring)
    taus = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([-1.0, -2.0])}]
    assert torch.equal(ties_task_vector(taus, k=1.0)["w"], torch.zeros(2))


def test_ties_float64_keeps_dtype():
    theta0, tvs = rand_td(40, torch.float64), rand_tvs(2, 41, torch.float64)
    assert_td_equal(ties_merge(theta0, tvs), oracle_ties(theta0, tvs, 0.2, 0.55, "model"))


# =================================================================== MagMax


@pytest.mark.parametrize("n_tasks", [1, 2, 4, 7])
def test_magmax_matches_stack_argmax_oracle(n_tasks):
    theta0, tvs = rand_td(50), rand_tvs(n_tasks, 51)
    tau_mm = oracle_magmax_task_vector(tvs)
    assert_td_equal(magmax_task_vector(tvs), tau_mm)
    assert_td_equal(magmax(theta0, tvs), {k: theta0[k] + 0.5 * tau_mm[k] for k in theta0})
    assert_td_equal(magmax(theta0, tvs, lam=0.8), {k: theta0[k] + 0.8 * tau_mm[k] for k in theta0})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_magmax_ties_latest_wins_and_streaming_equals_keep_all(seed):
    # small integers: many exact ties in |.|, including +x against -x
    g = torch.Generator().manual_seed(seed)
    tvs = [{k: torch.randint(-2, 3, s, generator=g).float() for k, s in SHAPES.items()}
           for _ in range(5)]
    keep_all = oracle_magmax_task_vector(tvs)
    acc, stream = None, MaxAbsAccumulator()
    for tv in tvs:
        acc = running_max_abs(acc, tv)
        stream.update(tv)
    assert_td_equal(acc, keep_all)
    assert_td_equal(stream.value, keep_all)
    assert_td_equal(magmax_task_vector(tvs), keep_all)
    theta0 = rand_td(52)
    assert_td_equal(stream.merged(theta0), magmax(theta0, tvs))
    assert stream.count == 5
    assert stream.state_bytes() == td.nbytes(tvs[0])


def test_magmax_tie_rule_by_hand():
    taus = [{"w": torch.tensor([1.0, -3.0, 2.0])},
            {"w": torch.tensor([-1.0, 3.0, 0.5])}]
    # |1| == |-1| and |-3| == |3|: the later vector wins; 2 > 0.5: the first wins
    assert torch.equal(magmax_task_vector(taus)["w"], torch.tensor([-1.0, 3.0, 2.0]))


# ===================================================================== DARE


def test_dare_p0_is_identity():
    delta = rand_td(60)
    out = dare(delta, 0.0, torch.Generator().manual_seed(0))
    assert_td_equal(out, delta)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 7])
def test_dare_matches_mergelm_style_oracle(p, seed):
    delta = rand_td(61)
    out = dare(delta, p, torch.Generator().manual_seed(seed))
    assert_td_equal(out, oracle_dare(delta, p, seed))
    # survivors are exactly delta / (1 - p)
    for k in delta:
        kept = out[k] != 0
        assert torch.equal(out[k][kept], delta[k][kept] / (1 - p))


def test_dare_same_seed_same_result():
    delta = rand_td(62)
    a = dare(delta, 0.3, torch.Generator().manual_seed(3))
    b = dare(delta, 0.3, torch.Generator().manual_seed(3))
    assert_td_equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dare_is_unbiased(p):
    """Mean of N independent draws -> delta.

    One call on a key holding N identical rows gives N independent draws of the
    same 64-entry delta. Each entry of the mean has standard deviation
    sigma_j = |delta_j| * sqrt(p / ((1 - p) N)), so |mean_j - delta_j| <= 5 sigma_j
    fails with probability < 6e-7 per entry (< 4e-5 over the 64 entries); with the
    seed fixed the test is deterministic anyway. The kept fraction is Binomial(N*64,
    1-p) / (N*64) and is checked within 5 of its standard deviations as well.
    """
    N, d = 20000, 64
    base = torch.randn(d, generator=torch.Generator().manual_seed(63), dtype=torch.float64)
    out = dare({"w": base.expand(N, d).clone()}, p, torch.Generator().manual_seed(64))["w"]
    mean = out.mean(dim=0)
    sigma = base.abs() * math.sqrt(p / ((1 - p) * N))
    assert bool(((mean - base).abs() <= 5 * sigma).all())
    kept_frac = float((out != 0).double().mean())
    assert abs(kept_frac - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / (N * d))


# ================================================================ averaging


def test_running_average_t1_returns_finetuned():
    ft = rand_td(70)
    assert_td_equal(running_average(None, ft, 1), ft)
    assert_td_equal(running_average(rand_td(71), ft, 1), ft)


@pytest.mark.parametrize("n_models", [1, 2, 5, 9])
def test_running_average_stream_equals_plain_mean(n_models):
    models = rand_tvs(n_models, 72, torch.float64)
    avg = None
    for t, m in enumerate(models, start=1):
        avg = running_average(avg, m, t)
    plain = {k: torch.stack([m[k] for m in models]).mean(dim=0) for k in models[0]}
    assert_td_close64(avg, plain)  # float64, rtol = atol = 1e-12


@pytest.mark.parametrize("t", [2, 3, 10])
def test_running_average_matches_formula(t):
    prev, ft = rand_td(73), rand_td(74)
    expected = {k: prev[k] * ((t - 1) / t) + ft[k] * (1 / t) for k in prev}
    assert_td_equal(running_average(prev, ft, t), expected)


def test_coma_endpoints_and_formula():
    prev, ft = rand_td(80), rand_td(81)
    assert_td_equal(coma(prev, ft, alpha=1.0), ft)
    assert_td_equal(coma(prev, ft, alpha=0.0), prev)
    expected = {k: prev[k] * 0.6 + ft[k] * 0.4 for k in prev}
    assert_td_equal(coma(prev, ft), expected)  # default alpha = 0.4


def _fishers(seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(s, generator=g, dtype=dtype) * 1e-2 for k, s in SHAPES.items()}


@pytest.mark.parametrize("alpha", [0.4, 0.1, 0.9])
def test_cofima_equal_fishers_equals_coma(alpha):
    prev, ft, f = rand_td(90, torch.float64), rand_td(91, torch.float64), _fishers(92)
    # float64, rtol = atol = 1e-12: F cancels only up to rounding
    assert_td_close64(cofima(prev, ft, f, f, alpha=alpha), coma(prev, ft, alpha=alpha))


@pytest.mark.parametrize("floor", [1e-4, 1e-8])
def test_cofima_matches_formula_oracle(floor):
    prev, ft = rand_td(93, torch.float64), rand_td(94, torch.float64)
    fp, fn = _fishers(95), _fishers(96)
    fp["fc.weight"][0] = 0.0  # below the floor
    fn["fc.weight"][0, :3] = 0.0
    assert_td_equal(cofima(prev, ft, fp, fn, 0.4, floor), oracle_cofima(prev, ft, fp, fn, 0.4, floor))


def test_cofima_zero_fishers_fall_back_to_coma_and_dominant_fisher_wins():
    prev, ft = rand_td(97, torch.float64), rand_td(98, torch.float64)
    zeros = td.zeros_like(prev)
    assert_td_close64(cofima(prev, ft, zeros, zeros), coma(prev, ft))
    huge = {k: torch.full_like(v, 1e12) for k, v in prev.items()}
    out = cofima(prev, ft, zeros, huge)  # F_new / F_prev = 1e16: theta* wins
    for k in prev:
        torch.testing.assert_close(out[k], ft[k], rtol=1e-12, atol=1e-12)


def test_cofima_fisher_max_caps_both():
    prev, ft = rand_td(99, torch.float64), rand_td(100, torch.float64)
    fp, fn = _fishers(101), _fishers(102)  # all entries in [0, 1e-2)
    capped = cofima(prev, ft, fp, fn, fisher_floor=1e-12, fisher_max=1e-12)
    assert_td_close64(capped, coma(prev, ft))  # all clamped to the same value
    fp_c = {k: v.clamp(max=1e-3) for k, v in fp.items()}
    fn_c = {k: v.clamp(max=1e-3) for k, v in fn.items()}
    assert_td_equal(cofima(prev, ft, fp, fn, fisher_floor=1e-6, fisher_max=1e-3),
                    cofima(prev, ft, fp_c, fn_c, fisher_floor=1e-6))


# ============================================== no mutation, no aliasing


def _inputs():
    return {
        "theta0": rand_td(110), "a": rand_td(111), "b": rand_td(112),
        "fa": {k: v.abs() for k, v in rand_td(113).items()},
        "fb": {k: v.abs() for k, v in rand_td(114).items()},
        "tvs": rand_tvs(3, 115),
    }


CALLS = {
    "running_average_t1": lambda d: running_average(d["a"], d["b"], 1),
    "running_average_t3": lambda d: running_average(d["a"], d["b"], 3),
    "coma": lambda d: coma(d["a"], d["b"]),
    "coma_alpha1": lambda d: coma(d["a"], d["b"], 1.0),
    "cofima": lambda d: cofima(d["a"], d["b"], d["fa"], d["fb"]),
    "task_arithmetic": lambda d: task_arithmetic(d["theta0"], d["tvs"], 1.0),
    "task_arithmetic_one": lambda d: task_arithmetic(d["theta0"], d["tvs"][:1], 0.0),
    "running_sum_first": lambda d: running_sum(None, d["a"]),
    "running_sum": lambda d: running_sum(d["a"], d["b"]),
    "ties_merge": lambda d: ties_merge(d["theta0"], d["tvs"]),
    "ties_trim_k1": lambda d: ties_trim(d["a"], 1.0),
    "ties_trim_tensor": lambda d: ties_trim(d["a"], 0.3, "tensor"),
    "ties_task_vector_one": lambda d: ties_task_vector(d["tvs"][:1], 1.0),
    "dare_p0": lambda d: dare(d["a"], 0.0, None),
    "dare": lambda d: dare(d["a"], 0.5, torch.Generator().manual_seed(0)),
    "magmax": lambda d: magmax(d["theta0"], d["tvs"]),
    "magmax_task_vector_one": lambda d: magmax_task_vector(d["tvs"][:1]),
    "running_max_abs_first": lambda d: running_max_abs(None, d["a"]),
    "running_max_abs": lambda d: running_max_abs(d["a"], d["b"]),
}


def _all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_tensors(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_tensors(v)


@pytest.mark.parametrize("name", list(CALLS))
def test_inputs_not_mutated_and_outputs_not_aliased(name):
    d = _inputs()
    snapshot = copy.deepcopy(d)
    out = CALLS[name](d)
    for key in d:
        for x, y in zip(_all_tensors(d[key]), _all_tensors(snapshot[key])):
            assert torch.equal(x, y), f"{name} mutated {key}"
    in_ptrs = {t.untyped_storage().data_ptr() for t in _all_tensors(d)}
    for k, v in out.items():
        assert v.untyped_storage().data_ptr() not in in_ptrs, f"{name}: output {k} aliases an input"


def test_accumulators_do_not_alias_inputs():
    tvs = rand_tvs(2, 120)
    snapshot = copy.deepcopy(tvs)
    for acc in (RunningSum(), MaxAbsAccumulator()):
        acc.update(tvs[0])
        acc.value["fc.bias"].add_(100.0)  # writing to the state must not reach the input
        acc.update(tvs[1])
    for x, y in zip(_all_tensors(tvs), _all_tensors(snapshot)):
        assert torch.equal(x, y)


# =============================================================== validation


def _bad_keys():
    d = rand_td(130)
    d.pop("fc.bias")
    return d


def _bad_shape():
    d = rand_td(131)
    d["fc.bias"] = torch.zeros(6)
    return d


T0, A, B = rand_td(132), rand_td(133), rand_td(134)
G = torch.Generator().manual_seed(0)

INVALID = [
    ("dare_p_neg", lambda: dare(A, -0.1, G), r"p \(DARE drop probability\) must be in \[0, 1\)"),
    ("dare_p_1", lambda: dare(A, 1.0, G), r"must be in \[0, 1\)"),
    ("dare_p_big", lambda: dare(A, 1.5, G), r"must be in \[0, 1\)"),
    ("dare_p_nan", lambda: dare(A, float("nan"), G), r"must be in \[0, 1\)"),
    ("ties_k0", lambda: ties_merge(T0, [A], k=0.0), r"k must be in \(0, 1\]"),
    ("ties_k_neg", lambda: ties_merge(T0, [A], k=-0.2), r"k must be in \(0, 1\]"),
    ("ties_k_percent", lambda: ties_merge(T0, [A], k=20), r"did you mean|fraction"),
    ("ties_trim_k", lambda: ties_trim(A, 1.01), r"k must be in \(0, 1\]"),
    ("ties_scope", lambda: ties_merge(T0, [A], trim_scope="layer"), r"trim_scope"),
    ("ties_empty", lambda: ties_merge(T0, []), r"task_vectors is empty"),
    ("ta_empty", lambda: task_arithmetic(T0, [], 1.0), r"task_vectors is empty"),
    ("mm_empty", lambda: magmax(T0, []), r"task_vectors is empty"),
    ("mm_tv_empty", lambda: magmax_task_vector([]), r"task_vectors is empty"),
    ("ta_single_dict", lambda: task_arithmetic(T0, A, 1.0), r"single tensor dict"),
    ("ta_keys", lambda: task_arithmetic(T0, [A, _bad_keys()], 1.0), r"different keys.*fc\.bias"),
    ("ta_shape", lambda: task_arithmetic(T0, [_bad_shape()], 1.0), r"shape mismatch.*fc\.bias"),
    ("ta_theta0_keys", lambda: task_arithmetic(_bad_keys(), [A], 1.0), r"different keys"),
    ("ta_lam_nan", lambda: task_arithmetic(T0, [A], float("nan")), r"lam must be finite"),
    ("ties_keys", lambda: ties_merge(T0, [A, _bad_keys()]), r"different keys"),
    ("mm_keys", lambda: magmax(T0, [_bad_keys()]), r"different keys"),
    ("mm_stream_keys", lambda: running_max_abs(A, _bad_keys()), r"different keys"),
    ("rs_keys", lambda: running_sum(A, _bad_keys()), r"different keys"),
    ("ra_keys", lambda: running_average(A, _bad_keys(), 2), r"different keys"),
    ("ra_t0", lambda: running_average(A, B, 0), r"int >= 1"),
    ("ra_t_float", lambda: running_average(A, B, 1.5), r"int >= 1"),
    ("ra_t_bool", lambda: running_average(A, B, True), r"int >= 1"),
    ("ra_prev_none", lambda: running_average(None, B, 2), r"prev is required"),
    ("coma_alpha", lambda: coma(A, B, alpha=1.2), r"alpha must be in \[0, 1\]"),
    ("coma_shape", lambda: coma(A, _bad_shape()), r"shape mismatch"),
    ("cofima_alpha", lambda: cofima(A, B, A, B, alpha=-0.1), r"alpha must be in \[0, 1\]"),
    ("cofima_floor", lambda: cofima(A, B, A, B, fisher_floor=0.0), r"fisher_floor must be > 0"),
    ("cofima_max", lambda: cofima(A, B, A, B, fisher_max=1e-6), r"fisher_max"),
    ("cofima_fisher_keys", lambda: cofima(A, B, _bad_keys(), B), r"fisher_prev.*different keys"),
    ("empty_running_sum", lambda: RunningSum().merged(T0, 1.0), r"empty"),
    ("empty_maxabs", lambda: MaxAbsAccumulator().merged(T0), r"empty"),
]


@pytest.mark.parametrize("name, call, match", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_arguments_raise_value_error(name, call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("scaling", [0.5, 2.0, 16.0 / 4])
@pytest.mark.parametrize("conv", [False, True])
def test_lora_delta_is_scaling_times_b_at_a_written_out(scaling, conv):
    """Oracle: entry (i, j) of a LoRA pair's dense update is scaling * sum_k B[i,k] A[k,j],
    summed in Python; a 1x1 convolution's update has the conv weight's shape."""
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, 3, generator=g), torch.randn(4, 2, generator=g)
    want = torch.tensor([[scaling * sum(float(B[i, k]) * float(A[k, j]) for k in range(2))
                          for j in range(3)] for i in range(4)])
    if conv:
        got = td.lora_delta(A[:, :, None, None], B[:, :, None, None], scaling)
        assert got.shape == (4, 3, 1, 1)
        got = got[:, :, 0, 0]
    else:
        got = td.lora_delta(A, B, scaling)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
