"""Every merger at its own seam: ``Merger.merge(ctx)`` over a short stream of tasks.

Each table row runs one merger over four tasks of small weight dicts, the way the merge
driver calls it (task t starts from the merged model, theta*_t = start + an update), and
after every task compares what it returns with the published rule written out here
again, independently of :mod:`clmerge.tensormath`; it also checks the coefficient the
merger records and the bytes it keeps across tasks. The Fisher-based mergers get their
Fishers from a stand-in for the task's data, and once from a tiny model whose Fisher is
computed by brute force. TRM, a reconstruction, is held to what can be derived: the
merged model lies in the subspace its directions span, its coefficients stay in their
bound, it reduces to a closed form without optimisation, and it is a function of the
seed. No Avalanche stream is built.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from clmerge.mergers import cofima as cofima_module
from clmerge.mergers import pm as pm_module
from clmerge.mergers.average import RunningAverage
from clmerge.mergers.base import MergeContext, TaskData
from clmerge.mergers.cofima import CoFiMA, CoFiMAOptions
from clmerge.mergers.coma import CoMA, CoMAOptions
from clmerge.mergers.dare import Dare, DareOptions
from clmerge.mergers.magmax import MagMax, MagMaxOptions
from clmerge.mergers.pm import PerturbAndMergeMerger, PMOptions
from clmerge.mergers.sequential import Sequential
from clmerge.mergers.task_arithmetic import TaskArithmetic, TaskArithmeticOptions
from clmerge.mergers.ties import Ties, TiesOptions
from clmerge.mergers.trm import TRMOptions, TrajectoryRegularizedMerger
from clmerge.tensormath.trajectory_subspace import random_direction

SHAPES = {"enc.weight": (4, 3), "enc.bias": (4,), "dec.weight": (2, 4)}
NUMEL = sum(math.prod(s) for s in SHAPES.values())          # 24 entries
BYTES64 = NUMEL * 8                                         # one float64 tensor dict
T = 4


# ------------------------------------------------------------------ the one context helper
def make_ctx(t, theta0, merged, start, finetuned, *, model=None, weights=None,
             batches=None, targets=None, logits_fn=None, seed=0, trajectory=(),
             recent_batches=(), g0_series=()):
    """The merge context of task ``t`` (0-based) as the merge driver builds it."""
    task = TaskData(batches=batches, targets=targets, logits_fn=logits_fn, seed=seed,
                    trajectory=list(trajectory), recent_batches=list(recent_batches),
                    g0_series=list(g0_series))
    return MergeContext(t=t, theta0=theta0, merged=merged, start=start, finetuned=finetuned,
                        model=model, weights=weights or {}, task=task)


def task_fields(ctx):
    """What the context carries of the task besides weights."""
    return {"batches": ctx.task.batches, "targets": ctx.task.targets,
            "logits_fn": ctx.task.logits_fn, "seed": ctx.task.seed}


def test_a_context_without_task_data_carries_none():
    ctx = MergeContext(t=0, theta0={}, merged={}, start={}, finetuned={})
    assert task_fields(ctx) == {"batches": None, "targets": None, "logits_fn": None, "seed": 0}
    assert ctx.model is None and ctx.weights == {}


# ------------------------------------------------------------------ options
DOCUMENTED_DEFAULTS = [
    (TaskArithmeticOptions, {"lam": 0.5, "scale": "fixed"}),
    (TiesOptions, {"k": 0.2, "lam": 0.55, "trim_scope": "model"}),
    (DareOptions, {"p": 0.3, "seed": -1}),
    (MagMaxOptions, {"lam": 0.5, "form": "streaming"}),
    (CoMAOptions, {"alpha": 0.4}),
    (CoFiMAOptions, {"alpha": 0.4, "fisher_max": 1e-4, "fisher_floor": 1e-12,
                     "fisher": "per_sample", "fisher_samples": 1024}),
    (PMOptions, {"eps": 0.5, "p0": 1 / 3, "p_plus": 1 / 3, "p_minus": 1 / 3,
                 "perturbation": "delta", "alpha": "global", "fisher": "per_sample",
                 "fisher_samples": 128, "fisher_estimator": "empirical",
                 "fisher_normalize": "none", "fisher_sampling": "stratified",
                 "fisher_engine": "hooks", "fisher_batch_size": 0, "storage": "running",
                 "clip": True}),
    (TRMOptions, {"snapshots": 4, "trajectory": True, "accumulated": True,
                  "random_directions": 0, "normalise": "norm", "coefficients": "per_module",
                  "init_last": 0.5, "bound": 1.0, "ta": 1.0, "pc": 1.0, "gr": 1.0, "tau": 2.0,
                  "pc_inputs": "augmented", "invert_steps": 5, "invert_step": 0.05,
                  "g0_scale": 1.0, "g0_stat": "median", "gr_head": "fresh", "gr_every": 5,
                  "gr_samples": 0, "steps": 50, "lr": 0.02, "eval_every": 10,
                  "keep_best": True, "batches": 4, "seed": 0}),
]


@pytest.mark.parametrize("options,documented", DOCUMENTED_DEFAULTS,
                         ids=[o.__name__ for o, _ in DOCUMENTED_DEFAULTS])
def test_option_defaults_are_the_documented_ones(options, documented):
    assert dataclasses.asdict(options()) == documented


# (options class, values, accepted): each range check just inside and just outside
BOUNDS = [
    (TiesOptions, {"k": 1.0}, True), (TiesOptions, {"k": 1.0 + 1e-9}, False),
    (TiesOptions, {"k": 1e-9}, True), (TiesOptions, {"k": 0.0}, False),
    (TiesOptions, {"lam": float("nan")}, False), (TiesOptions, {"trim_scope": "tensor"}, True),
    (TiesOptions, {"trim_scope": "layer"}, False),
    (TaskArithmeticOptions, {"lam": float("inf")}, False),
    (TaskArithmeticOptions, {"scale": "median"}, False),
    (MagMaxOptions, {"lam": float("nan")}, False), (MagMaxOptions, {"form": "all"}, False),
    (DareOptions, {"p": 0.0}, True), (DareOptions, {"p": 0.999}, True),
    (DareOptions, {"p": 1.0}, False), (DareOptions, {"p": -1e-9}, False),
    (DareOptions, {"seed": 0}, True), (DareOptions, {"seed": -2}, False),
    (CoMAOptions, {"alpha": 0.0}, True), (CoMAOptions, {"alpha": 1.0}, True),
    (CoMAOptions, {"alpha": -1e-9}, False), (CoMAOptions, {"alpha": 1.0 + 1e-9}, False),
    (CoFiMAOptions, {"alpha": 0.0}, True), (CoFiMAOptions, {"alpha": 1.0}, True),
    (CoFiMAOptions, {"alpha": -1e-9}, False), (CoFiMAOptions, {"alpha": 1.0 + 1e-9}, False),
    (CoFiMAOptions, {"fisher_floor": 0.0}, False),
    (CoFiMAOptions, {"fisher_max": 0.0}, True),
    (CoFiMAOptions, {"fisher_max": 1e-12}, True),
    (CoFiMAOptions, {"fisher_max": 0.9e-12}, False),
    (CoFiMAOptions, {"fisher": "per_batch"}, True), (CoFiMAOptions, {"fisher": "x"}, False),
    (CoFiMAOptions, {"fisher_samples": 1}, True), (CoFiMAOptions, {"fisher_samples": 0}, False),
    (PMOptions, {"eps": 0.0}, True), (PMOptions, {"eps": -1e-9}, False),
    (PMOptions, {"p0": 1.0, "p_plus": 0.0, "p_minus": 0.0}, True),
    (PMOptions, {"p0": 0.0, "p_plus": 0.0, "p_minus": 1.0}, True),
    (PMOptions, {"p0": 0.5, "p_plus": 0.5, "p_minus": 0.1}, False),
    (PMOptions, {"p0": 0.5, "p_plus": 0.4, "p_minus": 0.0}, False),
    (PMOptions, {"p0": 1.1, "p_plus": -0.1, "p_minus": 0.0}, False),
    (PMOptions, {"perturbation": "gaussian"}, True), (PMOptions, {"perturbation": "x"}, False),
    (PMOptions, {"alpha": "per_module"}, True), (PMOptions, {"alpha": "x"}, False),
    (PMOptions, {"storage": "stored"}, True), (PMOptions, {"storage": "x"}, False),
    (PMOptions, {"fisher_estimator": "true"}, True),
    (PMOptions, {"fisher_estimator": "true", "fisher_engine": "vmap"}, False),
    (PMOptions, {"fisher_estimator": "true", "fisher": "per_batch"}, False),
    (PMOptions, {"fisher_batch_size": 0}, True), (PMOptions, {"fisher_batch_size": -1}, False),
    (PMOptions, {"fisher_samples": 1}, True), (PMOptions, {"fisher_samples": 0}, False),
    (PMOptions, {"fisher_normalize": "trace"}, True),
    (PMOptions, {"fisher_normalize": "x"}, False),
    (PMOptions, {"fisher_sampling": "x"}, False), (PMOptions, {"fisher_engine": "x"}, False),
    (TRMOptions, {"snapshots": 1, "batches": 1, "gr_every": 1, "eval_every": 1}, True),
    (TRMOptions, {"snapshots": 0}, False), (TRMOptions, {"batches": 0}, False),
    (TRMOptions, {"gr_every": 0}, False), (TRMOptions, {"eval_every": 0}, False),
    (TRMOptions, {"random_directions": 0, "steps": 0, "ta": 0.0, "pc": 0.0, "gr": 0.0,
                  "lr": 0.0, "g0_scale": 0.0, "gr_samples": 0, "bound": 0.0,
                  "invert_steps": 0, "invert_step": 0.0}, True),
    (TRMOptions, {"random_directions": -1}, False), (TRMOptions, {"steps": -1}, False),
    (TRMOptions, {"lr": -1e-9}, False), (TRMOptions, {"bound": -1e-9}, False),
    (TRMOptions, {"invert_step": -1e-9}, False),
    (TRMOptions, {"tau": 1e-9}, True), (TRMOptions, {"tau": 0.0}, False),
    (TRMOptions, {"coefficients": "x"}, False), (TRMOptions, {"gr_head": "x"}, False),
    (TRMOptions, {"normalise": "x"}, False), (TRMOptions, {"pc_inputs": "x"}, False),
    (TRMOptions, {"g0_stat": "x"}, False),
]


@pytest.mark.parametrize("options,values,accepted", BOUNDS,
                         ids=[f"{o.__name__}-{v}" for o, v, _ in BOUNDS])
def test_option_ranges(options, values, accepted):
    if accepted:
        o = options(**values)
        assert all(getattr(o, k) == v for k, v in values.items())
    else:
        with pytest.raises(ValueError):
            options(**values)


# ------------------------------------------------------------------ data
def randn(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {k: scale * torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}


def plus(a, b, c=1.0):
    return {k: a[k] + c * b[k] for k in a}


def assert_dict_close(got, want, tol=1e-12):
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k].double(), want[k].double(), rtol=tol, atol=tol,
                                   msg=lambda m: f"{k}: {m}")


def run_stream(merger, *, fishers=None, T=T, seed=0):
    """Drive ``merger`` over T tasks; task t starts from the merged model and moves by a
    random update. Yields (ctx, returned) after each task's merge."""
    theta0 = randn(100 + seed)
    merged = {k: v.clone() for k, v in theta0.items()}
    for t in range(T):
        start = merged
        finetuned = plus(start, randn(200 + 10 * seed + t, scale=0.5 + 0.3 * t))
        ctx = make_ctx(t, theta0, merged, start, finetuned, seed=seed)
        returned = merger.merge(ctx)
        yield ctx, returned
        merged = returned


# ------------------------------------------------------------------ oracles (the rules)
def stack(dicts, k):
    return torch.stack([d[k] for d in dicts])


def oracle_seq(theta0, fts, prev, t):
    return fts[-1]


def oracle_average(theta0, fts, prev, t):
    """Uniform average of the fine-tuned models (P&M's "Model Averaging" row)."""
    return {k: stack(fts, k).mean(0) for k in theta0}


def oracle_task_arithmetic(lam, mean=False):
    """theta_0 + lam * sum_i (theta*_i - theta_0), lam / t with scale=mean (arXiv 2212.04089)."""
    def rule(theta0, fts, prev, t):
        c = lam / len(fts) if mean else lam
        return {k: theta0[k] + c * (stack(fts, k) - theta0[k]).sum(0) for k in theta0}
    return rule


def oracle_ties(k_frac, lam, scope):
    """TIES (arXiv 2306.01708): trim each tau_i to its top-k fraction by magnitude,
    elect the sign of the summed trimmed values per entry (a zero sum takes the sign of
    the sum of the elected signs over the model), average the entries that agree."""
    def trim(tau):
        groups = [list(tau)] if scope == "model" else [[k] for k in tau]
        out = {k: torch.zeros_like(v) for k, v in tau.items()}
        for keys in groups:
            flat = torch.cat([tau[k].reshape(-1) for k in keys])
            m = max(1, math.floor(k_frac * flat.numel() + 1e-9))
            keep = torch.zeros(flat.numel(), dtype=torch.bool)
            keep[torch.argsort(flat.abs(), descending=True)[:m]] = True
            i = 0
            for k in keys:
                n = tau[k].numel()
                out[k] = torch.where(keep[i:i + n].reshape(tau[k].shape), tau[k], 0.0)
                i += n
        return out

    def rule(theta0, fts, prev, t):
        trimmed = [trim({k: ft[k] - theta0[k] for k in theta0}) for ft in fts]
        flat = torch.stack([torch.cat([tr[k].reshape(-1) for k in theta0]) for tr in trimmed])
        signs = [0 if s == 0 else (1 if s > 0 else -1) for s in flat.sum(0).tolist()]
        majority = sum(signs)
        majority = (majority > 0) - (majority < 0)
        merged_tau = []
        for j, s in enumerate(signs):
            s = s or majority
            agree = [v for v in flat[:, j].tolist() if v != 0 and (v > 0) == (s > 0) and s != 0]
            merged_tau.append(sum(agree) / len(agree) if agree else 0.0)
        merged_tau = torch.tensor(merged_tau, dtype=torch.float64)
        out, i = {}, 0
        for k in theta0:
            n = theta0[k].numel()
            out[k] = theta0[k] + lam * merged_tau[i:i + n].reshape(theta0[k].shape)
            i += n
        return out
    return rule


def oracle_magmax(lam):
    """MagMax (arXiv 2407.06322): per entry the task vector of largest magnitude, the
    latest on ties; theta_0 + lam * it."""
    def rule(theta0, fts, prev, t):
        out = {}
        for k in theta0:
            taus = stack(fts, k) - theta0[k]
            latest_first = taus.flip(0)
            idx = latest_first.abs().argmax(0, keepdim=True)   # first max = latest task
            out[k] = theta0[k] + lam * latest_first.gather(0, idx)[0]
        return out
    return rule


def oracle_coma(alpha):
    """CoMA (arXiv 2312.08977): theta_hat_1 = theta*_1, then (1 - alpha) prev + alpha theta*_t."""
    def rule(theta0, fts, prev, t):
        if t == 0:
            return fts[-1]
        return {k: (1 - alpha) * prev[k] + alpha * fts[-1][k] for k in theta0}
    return rule


def dare_mask(seed, t, like):
    """DARE's drop mask of task t, drawn as documented: a generator seeded with
    seed * 1000003 + t, one Bernoulli(p) tensor per key in key order (1 = drop)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + t) % 2**63)
    return {k: torch.bernoulli(torch.full_like(v, like[1]), generator=g)
            for k, v in like[0].items()}


def oracle_dare(p, seed):
    """DARE (arXiv 2311.03099) on Delta_t = theta*_t - prev: drop each entry with
    probability p, rescale the kept ones by 1 / (1 - p); then the running average:
    prev + dare(Delta_t) / t."""
    def rule(theta0, fts, prev, t):
        delta = {k: fts[-1][k] - prev[k] for k in prev}
        mask = dare_mask(seed, t, (delta, p))
        return {k: prev[k] + (1 - mask[k]) * delta[k] / (1 - p) / (t + 1) for k in prev}
    return rule


# ------------------------------------------------------------------ the weight-only table
# name, merger factory, oracle, coefficient recorded after task t (0-based), state bytes
WEIGHT_ONLY = [
    ("seq", lambda: Sequential(), oracle_seq, None, lambda t: 0),
    ("average", lambda: RunningAverage(), oracle_average, lambda t: 1 / (t + 1), lambda t: 0),
    ("task_arithmetic", lambda: TaskArithmetic(TaskArithmeticOptions(lam=0.5)),
     oracle_task_arithmetic(0.5), lambda t: 0.5, lambda t: BYTES64),
    ("task_arithmetic_mean", lambda: TaskArithmetic(TaskArithmeticOptions(lam=1.3, scale="mean")),
     oracle_task_arithmetic(1.3, mean=True), lambda t: 1.3 / (t + 1), lambda t: BYTES64),
    ("ties", lambda: Ties(TiesOptions(k=0.3, lam=0.55)), oracle_ties(0.3, 0.55, "model"),
     lambda t: 0.55, lambda t: (t + 1) * BYTES64),
    ("ties_tensor", lambda: Ties(TiesOptions(k=0.5, lam=1.2, trim_scope="tensor")),
     oracle_ties(0.5, 1.2, "tensor"), lambda t: 1.2, lambda t: (t + 1) * BYTES64),
    ("magmax", lambda: MagMax(MagMaxOptions(lam=0.5)), oracle_magmax(0.5), lambda t: 0.5,
     lambda t: BYTES64),
    ("magmax_keep_all", lambda: MagMax(MagMaxOptions(lam=0.7, form="keep_all")),
     oracle_magmax(0.7), lambda t: 0.7, lambda t: (t + 1) * BYTES64),
    ("coma", lambda: CoMA(CoMAOptions(alpha=0.4)), oracle_coma(0.4),
     lambda t: 1.0 if t == 0 else 0.4, lambda t: 0),
    ("coma_0.8", lambda: CoMA(CoMAOptions(alpha=0.8)), oracle_coma(0.8),
     lambda t: 1.0 if t == 0 else 0.8, lambda t: 0),
    ("dare", lambda: Dare(DareOptions(p=0.3, seed=5)), oracle_dare(0.3, 5),
     lambda t: 1 / (t + 1), lambda t: 0),
    ("dare_0.6", lambda: Dare(DareOptions(p=0.6, seed=11)), oracle_dare(0.6, 11),
     lambda t: 1 / (t + 1), lambda t: 0),
    # seed * 1000003 + t beyond 2**63: the generator's seed wraps modulo 2**63
    ("dare_large_seed", lambda: Dare(DareOptions(p=0.3, seed=2**62 + 3)),
     oracle_dare(0.3, 2**62 + 3), lambda t: 1 / (t + 1), lambda t: 0),
]


@pytest.mark.parametrize("name,factory,oracle,coefficient,state",
                         WEIGHT_ONLY, ids=[r[0] for r in WEIGHT_ONLY])
def test_weight_only_merger_follows_its_rule_after_every_task(name, factory, oracle,
                                                              coefficient, state):
    merger = factory()
    fts, prev = [], None
    for t, (ctx, got) in enumerate(run_stream(merger)):
        fts.append(ctx.finetuned)
        want = oracle(ctx.theta0, fts, ctx.merged, t)
        assert_dict_close(got, want)
        assert merger.state_bytes() == state(t), f"state after task {t}"
        if coefficient is not None:
            assert merger.records[t]["coefficient"] == pytest.approx(coefficient(t), rel=1e-12)
        prev = got
    assert len(merger.records) == (T if coefficient is not None else 0)
    assert prev is not None


@pytest.mark.parametrize("name,factory,oracle,coefficient,state",
                         WEIGHT_ONLY, ids=[r[0] for r in WEIGHT_ONLY])
def test_merge_leaves_its_inputs_alone(name, factory, oracle, coefficient, state):
    """The context's tensors are the pipeline's: a merger never writes into them."""
    merger = factory()
    for ctx, got in run_stream(merger):
        pass
    theta0 = randn(7)
    merged, finetuned = randn(8), randn(9)
    copies = [{k: v.clone() for k, v in d.items()} for d in (theta0, merged, finetuned)]
    got = merger.merge(make_ctx(T, theta0, merged, merged, finetuned))
    assert set(got) == set(theta0)
    for d, c in zip((theta0, merged, finetuned), copies):
        assert all(torch.equal(d[k], c[k]) for k in d)


def test_the_ties_oracle_trims_and_elects():
    """The TIES rows above are not vacuous: on their data trimming drops entries, some
    entries have signs that disagree across tasks, and the merge is neither theta*_t
    nor the plain task-arithmetic sum."""
    ctxs = [ctx for ctx, _ in run_stream(Sequential())]
    fts, theta0 = [c.finetuned for c in ctxs], ctxs[0].theta0
    ties = oracle_ties(0.3, 1.0, "model")(theta0, fts, None, T - 1)
    ta = oracle_task_arithmetic(1.0)(theta0, fts, None, T - 1)
    assert any(not torch.allclose(ties[k], ta[k]) for k in theta0)
    assert any(not torch.allclose(ties[k], fts[-1][k]) for k in theta0)
    taus = torch.stack([torch.cat([ft[k].reshape(-1) - theta0[k].reshape(-1) for k in theta0])
                        for ft in fts])
    assert bool(((taus > 0).any(0) & (taus < 0).any(0)).any())


def test_ties_zero_sum_entry_takes_the_model_majority_sign():
    """Two tasks whose trimmed values cancel on one entry: that entry keeps the values of
    the majority sign over the model (arXiv 2306.01708's resolution), by hand."""
    theta0 = {"w": torch.zeros(4, dtype=torch.float64)}
    fts = [{"w": torch.tensor([2.0, 3.0, 5.0, 0.0], dtype=torch.float64)},
           {"w": torch.tensor([-2.0, 1.0, 4.0, 0.0], dtype=torch.float64)}]
    merger = Ties(TiesOptions(k=1.0, lam=1.0))
    merged = theta0
    for t, ft in enumerate(fts):
        merged = merger.merge(make_ctx(t, theta0, merged, merged, ft))
    # entry 0: +2 and -2 cancel; the majority sign over the model is + (entries 1, 2)
    assert merged["w"].tolist() == [2.0, 2.0, 4.5, 0.0]


def test_magmax_latest_task_wins_a_magnitude_tie():
    theta0 = {"w": torch.zeros(3, dtype=torch.float64)}
    fts = [{"w": torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)},
           {"w": torch.tensor([-1.0, 2.0, -0.25], dtype=torch.float64)}]
    for form in ("streaming", "keep_all"):
        merger, merged = MagMax(MagMaxOptions(lam=1.0, form=form)), theta0
        for t, ft in enumerate(fts):
            merged = merger.merge(make_ctx(t, theta0, merged, merged, ft))
        assert merged["w"].tolist() == [-1.0, 2.0, 0.5]


@pytest.mark.parametrize("p,seed", [(0.3, 5), (0.6, 11)])
def test_dare_each_entry_is_dropped_or_rescaled(p, seed):
    """Without re-drawing the mask: every entry of the DARE merge is either the previous
    merged value (dropped) or prev + Delta / ((1 - p) t) (kept), masks differ between
    tasks, and a drop rate near p over all tasks."""
    merger = Dare(DareOptions(p=p, seed=seed))
    dropped, masks = 0, []
    for t, (ctx, got) in enumerate(run_stream(merger, T=T)):
        mask = {}
        for k in got:
            delta = ctx.finetuned[k] - ctx.merged[k]
            kept_value = ctx.merged[k] + delta / ((1 - p) * (t + 1))
            is_drop = torch.isclose(got[k], ctx.merged[k], rtol=0, atol=1e-12)
            is_kept = torch.isclose(got[k], kept_value, rtol=0, atol=1e-12)
            assert bool((is_drop | is_kept).all())
            mask[k] = is_drop
            dropped += int(is_drop.sum())
        masks.append(torch.cat([m.reshape(-1) for m in mask.values()]))
    assert any(not torch.equal(masks[0], m) for m in masks[1:])
    assert abs(dropped / (T * NUMEL) - p) < 0.2


def test_dare_default_seed_is_the_run_seed():
    """seed = -1 takes torch's seed at construction (the run seeds torch first)."""
    torch.manual_seed(3)
    merger = Dare(DareOptions(p=0.4))
    for t, (ctx, got) in enumerate(run_stream(merger, T=2)):
        want = oracle_dare(0.4, 3)(ctx.theta0, [ctx.finetuned], ctx.merged, t)
        assert_dict_close(got, want)



@pytest.mark.parametrize("seed", [5, 2**62 + 3, 2**63 - 1])
def test_dare_generator_seed_is_the_documented_one(seed):
    """Task t's mask generator is seeded with (seed * 1000003 + t) mod 2**63, read back
    from the generator itself (torch's CPU generator keeps only the low 32 bits for its
    draws, so the masks alone cannot tell a modulus of 2**63 from 2**64; a CUDA
    generator draws from all 64)."""
    merger = Dare(DareOptions(p=0.3, seed=seed))
    for t in range(4):
        got = merger.generator(t, "cpu").initial_seed()
        assert got == (seed * 1_000_003 + t) % 2**63


# ------------------------------------------------------------------ Fisher-based mergers
def fisher_stream(seed=0, zeros_at=None):
    """Per-task diagonal Fishers (float64, non-negative, spread over decades so the
    CoFiMA cap and floor bite on some entries)."""
    out = []
    for t in range(T):
        g = torch.Generator().manual_seed(300 + seed + t)
        f = {k: torch.exp(torch.empty(s, dtype=torch.float64).uniform_(-12, -6, generator=g))
             for k, s in SHAPES.items()}
        if zeros_at is not None:
            f["enc.bias"][zeros_at] = 0.0
        out.append(f)
    return out


class FakeFisher:
    """Stands in for :func:`clmerge.mergers.fisher_context.task_fisher`: returns task t's
    prescribed Fisher and records how it was asked for."""

    def __init__(self, fishers):
        self.fishers = fishers
        self.calls = []

    def __call__(self, ctx, mode="per_sample", max_samples=None, **kwargs):
        self.calls.append({"t": ctx.t, "mode": mode, "max_samples": max_samples, **kwargs})
        return {k: v.clone() for k, v in self.fishers[ctx.t].items()}


def oracle_cofima(alpha, floor, cap):
    """CoFiMA (arXiv 2312.08977): theta_hat_1 = theta*_1, then per entry
    ((1-a) F_p prev + a F_n theta*_t) / ((1-a) F_p + a F_n), F clamped to [floor, cap]."""
    def rule(fishers, fts, prev, t):
        if t == 0:
            return fts[-1]
        out = {}
        for k in prev:
            fp = torch.clamp(fishers[t - 1][k], min=floor)
            fn = torch.clamp(fishers[t][k], min=floor)
            if cap:
                fp, fn = torch.clamp(fp, max=cap), torch.clamp(fn, max=cap)
            out[k] = ((1 - alpha) * fp * prev[k] + alpha * fn * fts[-1][k]) / (
                (1 - alpha) * fp + alpha * fn)
        return out
    return rule


COFIMA = [
    ("released", CoFiMAOptions(), 0.4, 1e-12, 1e-4),
    ("floor_reading", CoFiMAOptions(alpha=0.7, fisher_floor=1e-8, fisher_max=0,
                                    fisher="per_batch", fisher_samples=64), 0.7, 1e-8, 0),
]


@pytest.mark.parametrize("name,options,alpha,floor,cap", COFIMA, ids=[c[0] for c in COFIMA])
def test_cofima_follows_its_rule_with_the_previous_tasks_fisher(monkeypatch, name, options,
                                                               alpha, floor, cap):
    fishers = fisher_stream(zeros_at=1)
    fake = FakeFisher(fishers)
    monkeypatch.setattr(cofima_module, "task_fisher", fake)
    merger = CoFiMA(options)
    fts = []
    for t, (ctx, got) in enumerate(run_stream(merger)):
        fts.append(ctx.finetuned)
        assert_dict_close(got, oracle_cofima(alpha, floor, cap)(fishers, fts, ctx.merged, t))
        assert merger.state_bytes() == BYTES64          # F_t kept for the next task
        assert merger.records[t]["coefficient"] == (1.0 if t == 0 else alpha)
        capped = (sum(int((f > cap).sum()) for f in fishers[t].values()) / NUMEL) if cap else 0.0
        assert merger.records[t]["fisher_capped_fraction"] == pytest.approx(capped)
    assert [c["t"] for c in fake.calls] == list(range(T))
    assert all(c["mode"] == options.fisher and c["max_samples"] == options.fisher_samples
               for c in fake.calls)
    if cap:
        assert 0 < sum(r["fisher_capped_fraction"] for r in merger.records) < T


def test_cofima_keeps_nothing_before_the_first_task():
    assert CoFiMA().state_bytes() == 0


def oracle_pm(fts, fishers, prev, per_module, clip, normalize):
    """P&M's coefficient (arXiv 2505.22389): a_t minimises
    sum_{i<=t} 0.5 (prev + a Delta - theta*_i)^T F_i (prev + a Delta - theta*_i),
    a_t = -sum_i (prev - theta*_i)^T F_i Delta / sum_i Delta^T F_i Delta, clipped to
    [0, 1], 1 where the denominator is 0; theta_hat_t = prev + a_t Delta."""
    if normalize:
        fishers = [{k: v / sum(float(w.sum()) for w in f.values()) for k, v in f.items()}
                   for f in fishers]
    delta = {k: fts[-1][k] - prev[k] for k in prev}
    groups = [[k] for k in prev] if per_module else [list(prev)]
    a = {}
    for keys in groups:
        num = sum(float(((prev[k] - ft[k]) * f[k] * delta[k]).sum())
                  for ft, f in zip(fts, fishers) for k in keys)
        den = sum(float((delta[k] * f[k] * delta[k]).sum()) for f in fishers for k in keys)
        value = 1.0 if den == 0 else -num / den
        if clip:
            value = min(1.0, max(0.0, value))
        for k in keys:
            a[k] = value
    return {k: prev[k] + a[k] * delta[k] for k in prev}, a


PM = [
    ("global_running", PMOptions(), False, True, False),
    ("per_module_stored", PMOptions(alpha="per_module", storage="stored"), True, True, False),
    ("trace_unclipped", PMOptions(fisher_normalize="trace", clip=False,
                                  fisher="per_batch", fisher_samples=32,
                                  fisher_sampling="sequential", fisher_engine="vmap",
                                  fisher_batch_size=8), False, False, True),
]


def pm_stream(merger, fishers):
    """A stream where later tasks partly undo earlier ones, so that a_t leaves (0, 1)
    on some tasks and not on others."""
    theta0 = randn(100)
    merged = {k: v.clone() for k, v in theta0.items()}
    first = None
    for t in range(T):
        step = randn(200 + t, scale=0.5)
        if t == 2:                       # back towards where task 1 came from
            step = plus(step, first, -1.5)
            step = plus(step, merged, 1.5)
        finetuned = plus(merged, step)
        first = finetuned if first is None else first
        ctx = make_ctx(t, theta0, merged, merged, finetuned)
        got = merger.merge(ctx)
        yield ctx, got
        merged = got


@pytest.mark.parametrize("name,options,per_module,clip,normalize", PM, ids=[c[0] for c in PM])
def test_pm_follows_its_closed_form_coefficient(monkeypatch, name, options, per_module, clip,
                                                normalize):
    fishers = fisher_stream(seed=1)        # traces below 1 (normalising changes them)
    assert all(0 < sum(float(v.sum()) for v in f.values()) < 1 for f in fishers)
    fake = FakeFisher(fishers)
    monkeypatch.setattr(pm_module, "task_fisher", fake)
    merger = PerturbAndMergeMerger(options)
    fts, coefficients = [], []
    for t, (ctx, got) in enumerate(pm_stream(merger, fishers)):
        fts.append(ctx.finetuned)
        want, a = oracle_pm(fts, fishers[:t + 1], ctx.merged, per_module, clip, normalize)
        assert_dict_close(got, want, tol=1e-9)
        rec = merger.records[t]
        if per_module:
            assert rec["coefficients"] == pytest.approx(a, rel=1e-9)
            assert rec["coefficient"] == pytest.approx(sum(a.values()) / len(a), rel=1e-9)
        else:
            assert rec["coefficient"] == pytest.approx(a["enc.weight"], rel=1e-9)
        delta = {k: ctx.finetuned[k] - ctx.merged[k] for k in ctx.merged}
        assert rec["fisher_trace"] == pytest.approx(sum(float(f.sum()) for f in fishers[t].values()))
        assert rec["delta_F_delta"] == pytest.approx(
            sum(float((delta[k] ** 2 * fishers[t][k]).sum()) for k in delta))
        per_task = (2 * BYTES64) if options.storage == "running" else (t + 1) * 2 * BYTES64
        assert merger.state_bytes() == per_task
        coefficients += list(a.values())
    assert coefficients[0] == 1.0
    # the stream exercises the rule: some a_t strictly inside (0, 1), some outside or at
    # a bound (clipped, or beyond it without the clip)
    assert any(0.0 < c < 1.0 for c in coefficients)
    assert any(not 0.0 < c < 1.0 for c in coefficients[1:])
    call = fake.calls[0]
    assert {k: call[k] for k in ("mode", "max_samples", "engine", "estimator", "sampling",
                                 "batch_size")} == {
        "mode": options.fisher, "max_samples": options.fisher_samples,
        "engine": options.fisher_engine, "estimator": options.fisher_estimator,
        "sampling": options.fisher_sampling, "batch_size": options.fisher_batch_size or None}


def test_pm_zero_fisher_takes_the_fine_tuned_model(monkeypatch):
    """Q is flat in a when every Fisher is 0: a = 1 (theta*_t)."""
    zero = [{k: torch.zeros(s, dtype=torch.float64) for k, s in SHAPES.items()}] * T
    monkeypatch.setattr(pm_module, "task_fisher", FakeFisher(zero))
    merger = PerturbAndMergeMerger()
    for ctx, got in pm_stream(merger, zero):
        assert_dict_close(got, ctx.finetuned)


# the Fisher itself, from a tiny model, by brute force
class Tiny(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.enc = nn.Linear(3, 4)
        self.dec = nn.Linear(4, 3)

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


def tiny_data(t, n=24):
    g = torch.Generator().manual_seed(50 + t)
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def brute_force_fisher(model, weights, x, y):
    """1/N sum_n (d log softmax(model(x_n))[y_n] / d w)^2, one sample at a time."""
    acc = {k: torch.zeros_like(w, dtype=torch.float64) for k, w in weights.items()}
    for xi, yi in zip(x, y):
        logp = torch.log_softmax(model(xi[None]).double(), dim=1)[0, yi]
        grads = torch.autograd.grad(logp, list(weights.values()))
        for k, gr in zip(weights, grads):
            acc[k] += gr.double() ** 2
    return {k: v / len(x) for k, v in acc.items()}


def tiny_fisher_stream(merger):
    """The merge driver's contract for Fisher-based mergers: while merging, the model
    holds theta*_t; ``batches`` yields task t's training data."""
    model = Tiny()
    weights = {"enc.weight": model.enc.weight, "dec.weight": model.dec.weight}
    theta0 = {k: w.detach().clone() for k, w in weights.items()}
    merged = {k: v.clone() for k, v in theta0.items()}
    seen = []
    for t in range(3):
        g = torch.Generator().manual_seed(70 + t)
        finetuned = {k: merged[k] + 0.4 * torch.randn(v.shape, generator=g)
                     for k, v in merged.items()}
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(finetuned[k])
        x, y = tiny_data(t)

        def batches(indices=None, batch_size=None, x=x, y=y):
            idx = list(range(len(y))) if indices is None else list(indices)
            bs = batch_size or 8
            for s in range(0, len(idx), bs):
                sel = torch.tensor(idx[s:s + bs])
                yield x[sel], y[sel]

        fisher = brute_force_fisher(model, weights, x, y)
        ctx = make_ctx(t, theta0, merged, merged, finetuned, model=model, weights=weights,
                       batches=batches, targets=lambda y=y: y.tolist(),
                       logits_fn=lambda m, xx: m(xx), seed=4)
        got = merger.merge(ctx)
        seen.append((ctx, fisher, got))
        merged = got
    return seen


def test_cofima_uses_the_fisher_of_the_fine_tuned_model_on_the_tasks_data():
    merger = CoFiMA(CoFiMAOptions(fisher_max=0, fisher_floor=1e-12))
    fishers, fts = [], []
    for t, (ctx, fisher, got) in enumerate(tiny_fisher_stream(merger)):
        fishers.append(fisher)
        fts.append(ctx.finetuned)
        assert_dict_close(got, oracle_cofima(0.4, 1e-12, 0)(fishers, fts, ctx.merged, t),
                          tol=1e-5)


@pytest.mark.parametrize("engine", ["hooks", "vmap"])
def test_pm_uses_the_fisher_of_the_fine_tuned_model_on_the_tasks_data(engine):
    merger = PerturbAndMergeMerger(PMOptions(fisher_engine=engine))
    fishers, fts = [], []
    for t, (ctx, fisher, got) in enumerate(tiny_fisher_stream(merger)):
        fishers.append(fisher)
        fts.append(ctx.finetuned)
        want, a = oracle_pm(fts, fishers, ctx.merged, False, True, False)
        assert_dict_close(got, want, tol=1e-5)


# ------------------------------------------------------------------ TRM (reconstruction)
class HeadNet(nn.Module):
    """A backbone and one linear head per task, as TRM reads a model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.heads = nn.ModuleList([nn.Linear(5, 2) for _ in range(3)])
        self.classes_per_exp = [[0, 1], [2, 3], [4, 5]]


def trm_stream(options, *, seed=0, T=3):
    """TRM over T tasks of a tiny model: task t trains from the merged model along a
    recorded trajectory of K - 1 snapshots to theta*_t. Returns [(ctx, returned, raw
    directions)]."""
    model = HeadNet()
    weights = {"enc.weight": model.backbone[0].weight, "enc.bias": model.backbone[0].bias}
    theta0 = {k: w.detach().clone() for k, w in weights.items()}
    merged = {k: v.clone() for k, v in theta0.items()}
    merger = TrajectoryRegularizedMerger(options)
    out = []
    for t in range(T):
        g = torch.Generator().manual_seed(900 + t)
        steps = [{k: 0.3 * torch.randn(v.shape, generator=g) for k, v in merged.items()}
                 for _ in range(options.snapshots)]
        trajectory, acc = [], {k: torch.zeros_like(v) for k, v in merged.items()}
        for s in steps[:-1]:
            acc = plus(acc, s)
            trajectory.append(dict(acc))
        finetuned = plus(merged, plus(acc, steps[-1]))
        with torch.no_grad():
            for k, w in weights.items():
                w.copy_(finetuned[k])
        cls = model.classes_per_exp[t]
        batches = []
        for b in range(5):
            x = torch.randn(8, 4, generator=g)
            y = torch.tensor(cls)[torch.randint(0, 2, (8,), generator=g)]
            batches.append((x, y))
        ctx = make_ctx(t, theta0, merged, merged, finetuned, model=model, weights=weights,
                       seed=seed, trajectory=trajectory, recent_batches=batches,
                       g0_series=[0.5, 2.0, 1.0])
        dirs = [plus(merged, snap, 1.0) for snap in trajectory]
        dirs = [{k: d[k] - merged[k] for k in d} for d in dirs] + [
            {k: finetuned[k] - merged[k] for k in merged}]
        if options.accumulated and t > 0:
            dirs.append({k: merged[k] - theta0[k] for k in merged})
        if options.random_directions:       # drawn as documented: kind 0 of merge t
            gen = torch.Generator().manual_seed(
                ((seed * 1_000_003 + options.seed) * 1009 + t) * 8 + 0)
            d_last = {k: finetuned[k] - merged[k] for k in merged}
            dirs += [random_direction(d_last, gen) for _ in range(options.random_directions)]
        got = merger.merge(ctx)
        assert merger.state_bytes() == 0
        out.append((ctx, got, dirs, merger.records[-1]))
        merged = {k: v.detach().clone() for k, v in got.items()}
    return out


def span_residual(vectors, target):
    """Relative distance of ``target`` from the span of ``vectors`` (least squares)."""
    A = torch.stack([v.reshape(-1).double() for v in vectors], dim=1)
    b = target.reshape(-1).double()
    coef = torch.linalg.lstsq(A, b[:, None]).solution
    return float((A @ coef - b[:, None]).norm() / max(float(b.norm()), 1e-30)), coef[:, 0]


TRM_FAST = dict(steps=12, lr=0.1, eval_every=4, gr_every=2, batches=3)


@pytest.mark.parametrize("normalise,coefficients,randoms", [
    ("norm", "per_module", 0), ("orthonormal", "per_module", 0), ("none", "per_module", 0),
    ("norm", "global", 0), ("orthonormal", "global", 0), ("none", "global", 0),
    ("norm", "per_module", 2)])
def test_trm_merge_lies_in_the_span_of_its_directions(normalise, coefficients, randoms):
    options = TRMOptions(normalise=normalise, coefficients=coefficients,
                         random_directions=randoms, seed=1, **TRM_FAST)
    for ctx, got, dirs, rec in trm_stream(options, seed=2):
        for k in got:
            res, coef = span_residual([d[k] for d in dirs], got[k] - ctx.merged[k])
            assert res < 1e-5, (k, res)
            if randoms:                   # the random directions take part
                assert float(coef[-randoms:].abs().max()) > 1e-4
        if normalise == "none":
            # global: one coefficient per direction on every weight together
            flat = [torch.cat([d[k].reshape(-1) for k in got]) for d in dirs]
            res, _ = span_residual(flat, torch.cat([(got[k] - ctx.merged[k]).reshape(-1)
                                                    for k in got]))
            assert (res < 1e-5) == (coefficients == "global"), res
        assert set(rec["coefficients"]) == {"d1", "d2", "d3", "dK"} | (
            {"acc"} if ctx.t > 0 else set()) | {f"r{j + 1}" for j in range(randoms)}


def test_trm_coefficients_stay_within_their_bound():
    """normalise=none: the coefficients on the raw directions are the merge's own, and
    with a large step every one of them is held in [-bound, bound]; some reach it."""
    bound = 0.6
    options = TRMOptions(normalise="none", bound=bound, lr=0.5, steps=10, keep_best=False,
                         eval_every=5, gr_every=2, batches=3)
    at_bound = 0
    for ctx, got, dirs, rec in trm_stream(options):
        for k in got:
            res, coef = span_residual([d[k] for d in dirs], got[k] - ctx.merged[k])
            assert res < 1e-5
            assert float(coef.abs().max()) <= bound + 1e-4
            at_bound += int((coef.abs() > bound - 1e-4).sum())
        assert all(abs(v) <= bound + 1e-6 for v in rec["coefficients"].values())
    assert at_bound > 0


@pytest.mark.parametrize("normalise", ["norm", "orthonormal", "none"])
@pytest.mark.parametrize("init", [0.5, 1.0])
def test_trm_without_optimisation_is_the_point_on_d_K(normalise, init):
    """steps = 0: theta_hat_t = theta_hat_{t-1} + init_last (theta*_t - theta_hat_{t-1})
    whatever the rescaling (d_K is its reference) and the other directions (they start at
    0); init 1 gives theta*_t."""
    options = TRMOptions(steps=0, init_last=init, normalise=normalise, random_directions=1)
    for ctx, got, dirs, rec in trm_stream(options):
        want = {k: ctx.merged[k] + init * (ctx.finetuned[k] - ctx.merged[k]) for k in got}
        assert_dict_close(got, want, tol=1e-6)
        assert rec["coefficient"] == init


@pytest.mark.parametrize("terms", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.0), (1.0, 0.0, 3.0),
                                   (0.0, 1.0, 1.0)])
def test_trm_objective_at_its_start_is_the_three_terms(terms):
    """The objective recorded at the start point theta_hat_{t-1} + 0.5 d_K, from the
    stated terms: L_TA the cross-entropy of head t on the fitting minibatches (labels
    local to the task), L_PC tau^2 KL(teacher || student) of the old heads on the same
    inputs (pc_inputs=current; the teacher is theta_hat_{t-1}), L_GR max(0, g0 - |grad|)
    of a fresh head's loss on the held-out minibatch (g0 the median first-step norm)."""
    import copy

    ta_w, pc_w, gr_w = terms
    options = TRMOptions(steps=0, pc_inputs="current", batches=3, tau=1.5, ta=ta_w, pc=pc_w,
                         gr=gr_w, seed=4)
    seed = 6
    for ctx, got, dirs, rec in trm_stream(options, seed=seed):
        t, model = ctx.t, ctx.model
        theta = {k: (ctx.merged[k] + 0.5 * (ctx.finetuned[k] - ctx.merged[k])).requires_grad_()
                 for k in ctx.merged}

        def features(w, x):
            return torch.tanh(x @ w["enc.weight"].T + w["enc.bias"])

        def local(y):
            return torch.tensor([model.classes_per_exp[t].index(int(v)) for v in y])

        batches = list(ctx.task.recent_batches)
        fit, (xh, yh) = batches[1:4], batches[4]
        x = torch.cat([b[0] for b in fit])
        y = torch.cat([b[1] for b in fit])
        want = {}
        if ta_w:
            want["ta"] = float(nn.functional.cross_entropy(model.heads[t](features(theta, x)),
                                                          local(y)))
        if pc_w and t > 0:
            old = lambda f: torch.cat([model.heads[h](f) for h in range(t)], dim=1)  # noqa: E731
            teacher = torch.softmax(old(features(ctx.merged, x)) / 1.5, dim=1)
            student = torch.log_softmax(old(features(theta, x)) / 1.5, dim=1)
            kl = (teacher * (teacher.log() - student)).sum(1).mean()
            want["pc"] = float(kl) * 1.5 ** 2
        if gr_w:
            head = copy.deepcopy(model.heads[t])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(((seed * 1_000_003 + 4) * 1009 + t) * 8 + 1)
                head.reset_parameters()
            loss = nn.functional.cross_entropy(head(features(theta, xh)), local(yh))
            grads = torch.autograd.grad(loss, list(theta.values()))
            want["grad_norm"] = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
            want["gr"] = max(0.0, 1.0 - want["grad_norm"])      # median of [0.5, 2, 1]
        want["total"] = sum(w * want.get(k, 0.0)
                            for k, w in (("ta", ta_w), ("pc", pc_w), ("gr", gr_w)))
        assert rec["objectives_start"] == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert rec["best_step"] == 0


def test_trm_without_recorded_gradient_norms_has_no_hinge_reference():
    ctx = make_ctx(0, {}, {}, {}, {})
    assert TrajectoryRegularizedMerger().g0(ctx) == 0.0


def test_trm_with_every_term_off_does_not_move():
    options = TRMOptions(ta=0.0, pc=0.0, gr=0.0, steps=5, init_last=0.25)
    for ctx, got, dirs, rec in trm_stream(options):
        want = {k: ctx.merged[k] + 0.25 * (ctx.finetuned[k] - ctx.merged[k]) for k in got}
        assert_dict_close(got, want, tol=1e-6)


def test_trm_never_ends_worse_on_its_own_objective_and_moves():
    options = TRMOptions(**TRM_FAST)
    moved = 0
    for ctx, got, dirs, rec in trm_stream(options):
        assert rec["objectives_end"]["total"] <= rec["objectives_start"]["total"]
        start = {k: ctx.merged[k] + 0.5 * (ctx.finetuned[k] - ctx.merged[k]) for k in got}
        moved += any(not torch.allclose(got[k], start[k]) for k in got)
    assert moved > 0


def test_trm_is_a_function_of_the_seed():
    options = TRMOptions(random_directions=1, pc_inputs="augmented", **TRM_FAST)
    a = trm_stream(options, seed=3)
    b = trm_stream(options, seed=3)
    c = trm_stream(options, seed=4)
    for (_, ga, _, ra), (_, gb, _, _) in zip(a, b):
        assert all(torch.equal(ga[k], gb[k]) for k in ga)
        assert "r1" in ra["coefficients"]
    assert any(not torch.allclose(ga[k], gc[k]) for (_, ga, _, _), (_, gc, _, _) in zip(a, c)
               for k in ga)


# ------------------------------------------------------------------ pinned random streams
def test_the_fisher_sample_stream_is_pinned():
    """The Fisher sample of task t in a run with seed s comes from numpy's generator seeded
    with [s, t, 0xF15E] (a stream of its own): committed results depend on these draws."""
    import numpy as np

    from clmerge.mergers.fisher_context import fisher_rng

    for seed, t in [(0, 0), (3, 2), (11, 5)]:
        want = np.random.default_rng([seed, t, 0xF15E]).random(4)
        assert np.array_equal(fisher_rng(seed, t).random(4), want)


def test_the_trm_draws_are_pinned_and_apart():
    """TRM's draw of kind p (0 random directions, 1 the fresh head, 2 augmented inputs,
    3 inverted inputs) at merge t: a generator seeded with
    ((run_seed * 1000003 + offset) * 1009 + t) * 8 + p; committed results depend on it,
    and no two (t, p) of a run share a seed."""
    from clmerge.mergers.trm import _generator

    seeds = set()
    for run_seed, offset in [(0, 0), (5, 2)]:
        for t in range(4):
            for purpose in range(4):
                ctx = make_ctx(t, {}, {}, {}, {}, seed=run_seed)
                got = _generator(ctx, offset, purpose).initial_seed()
                assert got == ((run_seed * 1_000_003 + offset) * 1009 + t) * 8 + purpose
                seeds.add(got)
    assert len(seeds) == 2 * 4 * 4
    bare = MergeContext(t=1, theta0={}, merged={}, start={}, finetuned={})   # no task data
    assert _generator(bare, 0, 2).initial_seed() == (0 * 1009 + 1) * 8 + 2


@pytest.mark.parametrize("counts,n,quotas", [
    ([10, 7, 3], 8, [4, 3, 1]),       # exact 4.0, 2.8, 1.2: the one left over to 0.8
    ([10, 7, 3], 13, [6, 5, 2]),      # exact 6.5, 4.55, 1.95: to 0.95 and 0.55
    ([1, 8, 11], 10, [0, 4, 6]),      # exact 0.5, 4.0, 5.5: a tie of 0.5, then check sum
])
def test_the_fisher_sample_gives_the_largest_remainders_the_extra_samples(counts, n, quotas):
    """Class c gets floor(n N_c / N), and the samples left over go to the classes with
    the largest remainders (Hamilton's method)."""
    from collections import Counter

    from clmerge.mergers.fisher_context import fisher_rng, stratified_order

    y = [c for c, k in enumerate(counts) for _ in range(k)]
    for seed in range(3):
        got = Counter(y[i] for i in stratified_order(y, n, fisher_rng(seed, 0)))
        if counts == [1, 8, 11]:          # 0.5 and 0.5 tie: either class gets it
            assert got[1] == 4 and got[0] + got[2] == 6 and got[2] in (5, 6)
        else:
            assert [got[c] for c in range(len(counts))] == quotas


def test_the_fisher_sample_spreads_a_single_item_class_evenly():
    """Item i of class c sits at key (i + u) / q_c, u ~ U[0, 1): a class with one item
    in the sample (key u) is equally likely at each of the positions among the nine
    items of a class with q = 9 (keys (j + u_j) / 9), so over 300 seeds each of the ten
    positions occurs (expected 30 times each; a key of (i - u) / q_c would put it first
    or second almost always)."""
    from collections import Counter

    from clmerge.mergers.fisher_context import fisher_rng, stratified_order

    y = [0] + [1] * 9
    where = Counter(stratified_order(y, 10, fisher_rng(seed, 0)).index(0) for seed in range(300))
    assert sorted(where) == list(range(10))
    assert min(where.values()) >= 10, where


@pytest.mark.parametrize("sampling", ["stratified", "sequential"])
def test_task_fisher_asks_for_the_sample_and_batch_size_it_is_given(sampling):
    """``max_samples`` of a task's samples (stratified: exactly that many indices, each
    class in proportion), at the batch size asked for (none: the loader's own)."""
    from clmerge.mergers.fisher_context import task_fisher

    model = Tiny()
    weights = {"enc.weight": model.enc.weight}
    x, y = tiny_data(0, n=40)
    calls = []

    def batches(**kw):
        calls.append(kw)
        idx = list(kw.get("indices", range(len(y))))
        bs = kw.get("batch_size") or 8
        for s in range(0, len(idx), bs):
            sel = torch.tensor(idx[s:s + bs])
            yield x[sel], y[sel]

    for batch_size in (None, 5):
        calls.clear()
        ctx = make_ctx(0, {}, {}, {}, {}, model=model, weights=weights, batches=batches,
                       targets=lambda: y.tolist(), logits_fn=lambda m, xx: m(xx), seed=1)
        task_fisher(ctx, max_samples=10, sampling=sampling, batch_size=batch_size)
        assert len(calls) == 1
        assert calls[0].get("batch_size") == batch_size
        if batch_size is None:
            assert "batch_size" not in calls[0]
        if sampling == "stratified":
            assert len(calls[0]["indices"]) == 10 and len(set(calls[0]["indices"])) == 10
        else:
            assert "indices" not in calls[0]
