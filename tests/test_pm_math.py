"""Tests of the P&M closed form, its O(1) running-sum form, and the diagonal Fisher.

Oracles are written here from the equations of arXiv 2505.22389 (as in clmerge/mergers/pm.py):
the closed form must be the argmin of the Fisher-weighted quadratic, found by brute
force (fine grid + golden-section search), and the Fisher must equal a loop of one
backward pass per sample.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clmerge.tensormath import tensordict as td
from clmerge.tensormath.fisher import diagonal_fisher
from clmerge.tensormath.pm_coefficient import (
    RunningFisherSums,
    StoredTasks,
    pm_coefficient,
    quadratic_objective,
)

SHAPES = {"l1.weight": (4, 3), "l1.bias": (4,), "l2.weight": (2, 4)}


# ----------------------------------------------------------------------------- oracles

def brute_argmin(f, lo: float, hi: float, grid: int = 201, tol: float = 1e-12) -> float:
    """Minimiser of a 1-D function on [lo, hi]: fine grid, then golden section on the
    bracket around the best grid point."""
    xs = [lo + (hi - lo) * i / (grid - 1) for i in range(grid)]
    vals = [f(x) for x in xs]
    i = min(range(grid), key=vals.__getitem__)
    a, b = xs[max(i - 1, 0)], xs[min(i + 1, grid - 1)]
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = f(d)
    cand = [(f(x), x) for x in (a, b, xs[i])]
    return min(cand)[1]


def brute_argmin_per_key(prev, finetuned, fishers, delta, lo, hi, start):
    """Per-key minimiser of the (separable) per-module objective, other keys fixed."""
    out = {}
    for k in delta:
        def f(x, k=k):
            a = dict(start)
            a[k] = x
            return quadratic_objective(a, prev, finetuned, fishers, delta)
        out[k] = brute_argmin(f, lo, hi)
    return out


def rand_td(gen, scale=1.0, dtype=torch.float64):
    return {k: scale * torch.randn(s, generator=gen, dtype=dtype) for k, s in SHAPES.items()}


def rand_fisher(gen, scale=1.0, dtype=torch.float64):
    # positive, spread over ~2 orders of magnitude
    return {k: scale * torch.exp(torch.randn(s, generator=gen, dtype=dtype))
            for k, s in SHAPES.items()}


def make_problem(t: int, regime: str, seed: int):
    """prev, [theta*_1..theta*_t], [F_1..F_t], delta with a known regime of the
    unclipped optimum: 'interior' in (0,1), 'above' > 1, 'below' < 0."""
    gen = torch.Generator().manual_seed(seed)
    prev = rand_td(gen)
    delta = rand_td(gen, 0.5)
    finetuned, fishers = [], []
    for _ in range(t - 1):
        u = {k: torch.rand(s, generator=gen, dtype=torch.float64) for k, s in SHAPES.items()}
        if regime == "interior":      # old optima between prev and theta*_t
            c, fscale = td.scale(u, 0.9), 1.0
        elif regime == "above":       # old optima beyond theta*_t along delta
            c, fscale = td.apply(lambda v: 1.5 + v, u), 1.0
        elif regime == "below":       # old optima behind prev, with heavy Fishers
            c, fscale = td.apply(lambda v: -3.0 * (1.0 + v), u), 5.0
        else:
            raise ValueError(regime)
        theta = td.add(td.add(prev, td.apply(torch.mul, c, delta)), rand_td(gen, 0.05))
        finetuned.append(theta)
        fishers.append(rand_fisher(gen, fscale))
    finetuned.append(td.add(prev, delta))
    fishers.append(rand_fisher(gen))
    return prev, finetuned, fishers, delta


CASES = [(1, "interior")] + [(t, r) for t in (2, 3, 5) for r in ("interior", "above", "below")]


# ----------------------------------------------------------------------------- closed form

@pytest.mark.parametrize("t,regime", CASES)
def test_global_closed_form_is_argmin(t, regime):
    prev, finetuned, fishers, delta = make_problem(t, regime, seed=10 * t + len(regime))
    raw = pm_coefficient(prev, finetuned, fishers, delta, clip=False)
    clipped = pm_coefficient(prev, finetuned, fishers, delta)
    assert isinstance(raw, float) and isinstance(clipped, float)

    def q(a):
        return quadratic_objective(a, prev, finetuned, fishers, delta)

    if regime == "interior":
        assert 0.0 < raw <= 1.0 and clipped == raw
    elif regime == "above":
        assert raw > 1.0 and clipped == 1.0
    else:
        assert raw < 0.0 and clipped == 0.0
    assert clipped == pytest.approx(brute_argmin(q, 0.0, 1.0), abs=1e-5)
    assert raw == pytest.approx(brute_argmin(q, -20.0, 20.0), abs=1e-5)
    assert q(clipped) <= min(q(0.0), q(1.0), q(0.5)) + 1e-12


@pytest.mark.parametrize("t,regime", CASES)
def test_per_module_closed_form_is_argmin(t, regime):
    prev, finetuned, fishers, delta = make_problem(t, regime, seed=100 + 10 * t + len(regime))
    raw = pm_coefficient(prev, finetuned, fishers, delta, per_module=True, clip=False)
    clipped = pm_coefficient(prev, finetuned, fishers, delta, per_module=True)
    assert set(raw) == set(SHAPES) == set(clipped)
    for k in SHAPES:
        if regime == "interior":
            assert 0.0 < raw[k] <= 1.0 and clipped[k] == raw[k]
        elif regime == "above":
            assert raw[k] > 1.0 and clipped[k] == 1.0
        else:
            assert raw[k] < 0.0 and clipped[k] == 0.0
    start = {k: 0.3 for k in SHAPES}
    brute01 = brute_argmin_per_key(prev, finetuned, fishers, delta, 0.0, 1.0, start)
    brute_wide = brute_argmin_per_key(prev, finetuned, fishers, delta, -20.0, 20.0, start)
    for k in SHAPES:
        assert clipped[k] == pytest.approx(brute01[k], abs=1e-5)
        assert raw[k] == pytest.approx(brute_wide[k], abs=1e-5)
    # the per-module optimum is at least as good as the best global one
    g = pm_coefficient(prev, finetuned, fishers, delta)
    assert (quadratic_objective(clipped, prev, finetuned, fishers, delta)
            <= quadratic_objective(g, prev, finetuned, fishers, delta) + 1e-12)


def test_per_module_differs_from_global_when_keys_disagree():
    prev, finetuned, fishers, delta = make_problem(3, "interior", seed=7)
    # push one key's old optimum far beyond theta*_t: its per-key a rises to 1
    finetuned[0] = dict(finetuned[0])
    finetuned[0]["l1.bias"] = prev["l1.bias"] + 5.0 * delta["l1.bias"]
    per = pm_coefficient(prev, finetuned, fishers, delta, per_module=True)
    glob = pm_coefficient(prev, finetuned, fishers, delta)
    assert per["l1.bias"] == 1.0
    assert per["l1.weight"] < 1.0 and per["l2.weight"] < 1.0
    assert len({round(v, 9) for v in per.values()} | {round(glob, 9)}) > 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_module", [False, True])
def test_first_task_coefficient_is_exactly_one(seed, dtype, per_module):
    gen = torch.Generator().manual_seed(seed)
    prev = rand_td(gen, dtype=dtype)
    theta1 = rand_td(gen, dtype=dtype)
    delta = td.sub(theta1, prev)            # rounded in float32: identity still gives 1
    fisher = rand_fisher(gen, dtype=dtype)
    for clip in (False, True):
        a = pm_coefficient(prev, [theta1], [fisher], delta, per_module=per_module, clip=clip)
        values = list(a.values()) if per_module else [a]
        assert all(v == 1.0 for v in values), a
        r = RunningFisherSums().coefficient(prev, delta, fisher, per_module=per_module, clip=clip)
        assert (list(r.values()) if per_module else [r]) == [1.0] * len(values)


def test_zero_denominator_gives_one():
    prev, finetuned, fishers, delta = make_problem(3, "below", seed=3)
    zero = td.zeros_like(delta)
    assert pm_coefficient(prev, finetuned[:-1] + [prev], fishers, zero, clip=False) == 1.0
    zero_f = [td.zeros_like(f) for f in fishers]
    assert pm_coefficient(prev, finetuned, zero_f, delta, clip=False) == 1.0
    # per module: only the key with zero delta falls back to 1
    delta2 = dict(delta, **{"l1.bias": torch.zeros(4, dtype=torch.float64)})
    fin2 = finetuned[:-1] + [td.add(prev, delta2)]
    per = pm_coefficient(prev, fin2, fishers, delta2, per_module=True, clip=False)
    assert per["l1.bias"] == 1.0
    assert per["l1.weight"] < 0.0 and per["l2.weight"] < 0.0
    running = RunningFisherSums()
    running.update(fishers[0], finetuned[0])
    assert running.coefficient(prev, zero, fishers[1]) == 1.0


def test_input_validation():
    prev, finetuned, fishers, delta = make_problem(2, "interior", seed=5)
    with pytest.raises(ValueError, match="finetuned"):    # current task missing
        pm_coefficient(prev, finetuned[:1], fishers[:1], delta)
    with pytest.raises(ValueError):
        pm_coefficient(prev, finetuned, fishers[:1], delta)
    neg = dict(fishers[0], **{"l1.bias": -fishers[0]["l1.bias"]})
    with pytest.raises(ValueError, match="negative"):
        pm_coefficient(prev, finetuned, [neg, fishers[1]], delta)
    with pytest.raises(ValueError, match="negative"):
        RunningFisherSums().update(neg, finetuned[0])
    with pytest.raises(KeyError):
        bad = dict(delta)
        bad.pop("l1.bias")
        pm_coefficient(prev, finetuned, fishers, bad)


# ----------------------------------------------------------------------------- O(1) vs O(T)

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("per_module", [False, True])
def test_running_sums_equal_stored_tasks_over_stream(dtype, per_module):
    gen = torch.Generator().manual_seed(42)
    prev = rand_td(gen, dtype=dtype)
    running, stored = RunningFisherSums(), StoredTasks()
    thetas, fishers = [], []
    running_bytes, stored_bytes, coefs = [], [], []
    for t in range(1, 6):
        delta = rand_td(gen, 0.3 + 0.2 * t, dtype=dtype)
        theta_t = td.add(prev, delta)
        fisher_t = rand_fisher(gen, float(t), dtype=dtype)
        for clip in (False, True):
            a_run = running.coefficient(prev, delta, fisher_t, per_module=per_module, clip=clip)
            a_sto = stored.coefficient(prev, delta, fisher_t, per_module=per_module, clip=clip)
            a_ref = pm_coefficient(prev, thetas + [theta_t], fishers + [fisher_t], delta,
                                   per_module=per_module, clip=clip)
            for x, y in ((a_run, a_ref), (a_sto, a_ref)):
                if per_module:
                    assert set(x) == set(SHAPES)
                    for k in SHAPES:
                        assert x[k] == pytest.approx(y[k], abs=1e-10, rel=0)
                else:
                    assert x == pytest.approx(y, abs=1e-10, rel=0)
        coefs.append(a_run)
        inputs = td.clone(fisher_t), td.clone(theta_t)
        running.update(fisher_t, theta_t)
        stored.update(fisher_t, theta_t)
        for before, after in zip(inputs, (fisher_t, theta_t)):   # update never aliases inputs
            assert all(torch.equal(before[k], after[k]) for k in SHAPES)
        thetas.append(theta_t)
        fishers.append(fisher_t)
        running_bytes.append(running.state_bytes())
        stored_bytes.append(stored.state_bytes())
        prev = td.axpy(prev, a_run, delta)
    flat = [v for a in coefs for v in (a.values() if per_module else [a])]
    assert any(0.0 < v < 1.0 for v in flat[1:])  # the stream is not trivially clipped
    n = sum(math.prod(s) for s in SHAPES.values())
    assert running_bytes == [2 * 8 * n] * 5               # two float64 sums, constant in T
    per_task = 2 * n * torch.tensor([], dtype=dtype).element_size()
    assert stored_bytes == [per_task * t for t in range(1, 6)]
    assert RunningFisherSums().state_bytes() == 0 and running.num_tasks == 5


# ----------------------------------------------------------------------------- Fisher

def tiny_mlp(seed=0, dtype=torch.float64, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(dtype)


def make_batches(n_batches=3, bs=4, seed=1, dtype=torch.float64, n_classes=3):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, 5, generator=gen, dtype=dtype),
             torch.randint(0, n_classes, (bs,), generator=gen)) for _ in range(n_batches)]


def brute_fisher(model, names, batches, logits_fn=None, max_samples=None):
    """One backward pass per sample on a deep copy of the model (eval mode)."""
    import copy
    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    acc = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    count = 0
    for x, y in batches:
        for xi, yi in zip(x, y):
            if max_samples is not None and count >= max_samples:
                break
            m.zero_grad()
            logits = (logits_fn or (lambda mm, xx: mm(xx)))(m, xi[None])
            torch.log_softmax(logits, -1)[0, yi].backward()
            for n in names:
                acc[n] += params[n].grad.double() ** 2
            count += 1
    return {n: (v / count).float() for n, v in acc.items()}, count


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    now = model.state_dict()
    assert set(now) == set(snap)
    for k in snap:
        assert torch.equal(now[k], snap[k]), k
    assert all(p.grad is None for p in model.parameters())


NAME_SETS = [["0.weight", "0.bias", "2.weight", "2.bias"], ["0.weight"], ["2.bias", "0.bias"]]


ENGINES = ["vmap", "hooks"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("names", NAME_SETS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_fisher_per_sample_equals_brute_force(names, dtype, tol, engine):
    model = tiny_mlp(dtype=dtype).train()
    batches = make_batches(dtype=dtype)
    snap = snapshot(model)
    f = diagonal_fisher(model, names, batches, engine=engine)
    ref, _ = brute_fisher(model, names, batches)
    assert list(f) == names
    for n in names:
        assert f[n].dtype == torch.float32 and not f[n].requires_grad
        assert f[n].shape == dict(model.named_parameters())[n].shape
        torch.testing.assert_close(f[n], ref[n], atol=1e-6, rtol=tol)
        assert f[n].sum() > 0
    assert_unchanged(model, snap)
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("engine", ENGINES)
def test_fisher_with_masked_logits(engine):
    model = tiny_mlp()
    mask = torch.tensor([0.0, 0.0, -math.inf], dtype=torch.float64)

    def logits_fn(m, x):
        return m(x) + mask

    batches = make_batches(n_classes=2)
    names = ["0.weight", "2.weight", "2.bias"]
    f = diagonal_fisher(model, names, batches, logits_fn=logits_fn, engine=engine)
    ref, _ = brute_fisher(model, names, batches, logits_fn=logits_fn)
    for n in names:
        assert torch.isfinite(f[n]).all()
        torch.testing.assert_close(f[n], ref[n], atol=1e-6, rtol=1e-6)
    # the masked class' output row gets no gradient
    assert f["2.weight"][2].abs().max() == 0 and f["2.bias"][2] == 0
    bad = [(batches[0][0], torch.full((4,), 2))]       # true class masked
    with pytest.raises(ValueError, match="non-finite"):
        diagonal_fisher(model, names, bad, logits_fn=logits_fn, engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("max_samples,expect_pulled", [(1, 1), (7, 2), (8, 2), (9, 3), (100, 5)])
def test_fisher_max_samples(max_samples, expect_pulled, engine):
    model = tiny_mlp()
    batches = make_batches(n_batches=5, bs=4, seed=3)
    pulled = []

    def stream():
        for i, b in enumerate(batches):
            pulled.append(i)
            yield b

    names = ["0.weight", "2.bias"]
    f = diagonal_fisher(model, names, stream(), max_samples=max_samples, engine=engine)
    ref, count = brute_fisher(model, names, batches, max_samples=max_samples)
    assert count == min(max_samples, 20)
    assert len(pulled) == expect_pulled           # stops before pulling another batch
    for n in names:
        torch.testing.assert_close(f[n], ref[n], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("start_mode", ["eval", "train"])
def test_fisher_batchnorm(start_mode, engine):
    model = tiny_mlp(bn=True)
    with torch.no_grad():                       # give BN non-trivial running statistics
        model.train()
        for x, _ in make_batches(n_batches=5, bs=16, seed=9):
            model(x * 2.0 + 1.0)
    model.train(start_mode == "train")
    snap = snapshot(model)
    names = ["0.weight", "1.weight", "1.bias", "3.weight"]
    batches = make_batches()
    f = diagonal_fisher(model, names, batches, engine=engine)
    ref, _ = brute_fisher(model, names, batches)
    for n in names:
        torch.testing.assert_close(f[n], ref[n], atol=1e-6, rtol=1e-6)
    assert_unchanged(model, snap)                 # running stats untouched
    assert model.training == (start_mode == "train")
    assert model[1].training == (start_mode == "train")


def test_fisher_restores_mixed_submodule_modes():
    model = tiny_mlp(bn=True).train()
    model[1].eval()                              # frozen BN inside a training model
    diagonal_fisher(model, ["0.weight"], make_batches(n_batches=1))
    assert model.training and model[0].training and not model[1].training


@pytest.mark.parametrize("engine", ENGINES)
def test_fisher_per_batch(engine):
    model = tiny_mlp()
    names = ["0.weight", "2.weight", "2.bias"]
    batches = make_batches(n_batches=3, bs=4, seed=4)
    singles = [(x[i:i + 1], y[i:i + 1]) for x, y in batches for i in range(len(x))]
    per_sample = diagonal_fisher(model, names, batches, engine=engine)
    per_batch_1 = diagonal_fisher(model, names, singles, mode="per_batch", engine=engine)
    for n in names:
        torch.testing.assert_close(per_batch_1[n], per_sample[n], atol=1e-7, rtol=1e-6)
    # batch size > 1: sum_b B_b * (B_b * mean_grad_b^2) / sum_b B_b (unequal batches)
    uneven = [batches[0], (batches[1][0][:1], batches[1][1][:1]), batches[2]]
    got = diagonal_fisher(model, names, uneven, mode="per_batch", engine=engine)
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n]) for n in names}
    total = 0
    for x, y in uneven:
        model.zero_grad()
        torch.log_softmax(model(x), -1).gather(1, y[:, None]).mean().backward()
        for n in names:
            acc[n] += len(x) * len(x) * params[n].grad ** 2
        total += len(x)
    for n in names:
        torch.testing.assert_close(got[n], (acc[n] / total).float(), atol=1e-7, rtol=1e-6)
        assert not torch.allclose(got[n], per_sample[n], atol=1e-4)   # really a different estimator


def test_fisher_bad_arguments():
    model = tiny_mlp()
    with pytest.raises(KeyError):
        diagonal_fisher(model, ["nope.weight"], make_batches())
    with pytest.raises(ValueError):
        diagonal_fisher(model, ["0.weight"], make_batches(), mode="exact")
    with pytest.raises(ValueError):
        diagonal_fisher(model, ["0.weight"], [])


# ----------------------------------------------------------------------------- tiny real model

def two_task_data(seed=0, n=128):
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 4, generator=gen)
    y1 = (x1[:, 0] + 0.5 * x1[:, 1] > 0).long()
    x2 = torch.randn(n, 4, generator=gen) + torch.tensor([1.0, -1.0, 0.0, 0.5])
    y2 = (x2[:, 2] - x2[:, 3] > 0.3).long()
    return (x1, y1), (x2, y2)


def train(model, x, y, steps=60, lr=0.2):
    """Full-batch gradient descent (plain loop: constructing a torch.optim optimizer
    costs seconds of lazy imports on first use)."""
    for _ in range(steps):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    model.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("per_module", [False, True])
def test_closed_form_on_tiny_trained_mlp(per_module):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    (x1, y1), (x2, y2) = two_task_data()
    names = [n for n, _ in model.named_parameters()]

    def batches(x, y):
        return [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]

    theta1 = train(model, x1, y1)
    fisher1 = diagonal_fisher(model, names, batches(x1, y1))
    prev = dict(theta1)                              # a_1 = 1: theta_hat_1 = theta*_1
    theta2 = train(model, x2, y2)
    fisher2 = diagonal_fisher(model, names, batches(x2, y2))
    delta = td.sub(theta2, prev)
    finetuned, fishers = [theta1, theta2], [fisher1, fisher2]

    a = pm_coefficient(prev, finetuned, fishers, delta, per_module=per_module)
    if per_module:
        brute = brute_argmin_per_key(prev, finetuned, fishers, delta, 0.0, 1.0,
                                     {k: 0.5 for k in names})
        for k in names:
            assert 0.0 < a[k] < 1.0
            assert a[k] == pytest.approx(brute[k], abs=1e-5)
    else:
        assert 0.0 < a < 1.0
        q = lambda s: quadratic_objective(s, prev, finetuned, fishers, delta)  # noqa: E731
        assert a == pytest.approx(brute_argmin(q, 0.0, 1.0), abs=1e-5)
    running = RunningFisherSums()
    running.update(fisher1, theta1)
    a_run = running.coefficient(prev, delta, fisher2, per_module=per_module)
    if per_module:
        assert all(a_run[k] == pytest.approx(a[k], abs=1e-10) for k in names)
    else:
        assert a_run == pytest.approx(a, abs=1e-10)
