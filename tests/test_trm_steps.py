"""TRM's merge step by step (clmerge/mergers/trm.py): the problem it sets up, the terms
on a minibatch and on the fixed set, the total, the optimisation and the returned point,
each against a formula written here on a one-layer backbone f(x) = tanh(W x + b) with one
linear head per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clmerge.mergers.base import MergeContext, TaskData
from clmerge.mergers.trm import TRMOptions, TrajectoryRegularizedMerger
from test_merger_seams import HeadNet

KEYS = ("enc.weight", "enc.bias")


Net = HeadNet   # a backbone and one linear head per task (the seam tests' model)


def context(t=1, n_batches=5, batch=8, seed=0):
    """Merge context of task t on ``Net``: merged, 3 trajectory snapshots, theta*_t and
    ``n_batches`` recorded minibatches (the last of full size is held out)."""
    model = Net()
    weights = {"enc.weight": model.backbone[0].weight, "enc.bias": model.backbone[0].bias}
    g = torch.Generator().manual_seed(10 + t)
    theta0 = {k: w.detach().clone() for k, w in weights.items()}
    merged = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
    traj = [{k: 0.3 * (j + 1) * torch.randn(v.shape, generator=g) for k, v in merged.items()}
            for j in range(3)]
    finetuned = {k: merged[k] + 0.5 * torch.randn(v.shape, generator=g)
                 for k, v in merged.items()}
    with torch.no_grad():
        for k, w in weights.items():
            w.copy_(finetuned[k])
    cls = torch.tensor(model.classes_per_exp[t])
    batches = [(torch.randn(batch, 4, generator=g), cls[torch.randint(0, 2, (batch,), generator=g)])
               for _ in range(n_batches)]
    task = TaskData(seed=seed, trajectory=traj, recent_batches=batches,
                    g0_series=[0.5, 3.0, 1.0])
    return MergeContext(t=t, theta0=theta0, merged=merged, start=merged, finetuned=finetuned,
                        model=model, weights=weights, task=task)


def feats(theta, x):
    return torch.tanh(x @ theta["enc.weight"].T + theta["enc.bias"])


def logits(model, f, heads):
    return torch.cat([f @ model.heads[h].weight.T + model.heads[h].bias for h in heads], 1)


def local(y, cls):
    return torch.tensor([cls.index(int(v)) for v in y])


def theta_at(ctx, p, c):
    """base + sum_j c_j D_j written out (per-module coefficients)."""
    return {k: ctx.merged[k] + sum(c[j, m] * p.space.directions[j][k]
                                   for j in range(c.shape[0]))
            for m, k in enumerate(p.space.keys)}


def kl(student, teacher, tau):
    pt = F.softmax(teacher / tau, 1)
    return tau ** 2 * (pt * (F.log_softmax(teacher / tau, 1)
                             - F.log_softmax(student / tau, 1))).sum(1).mean()


def problem(options, **kw):
    ctx = context(**kw)
    m = TrajectoryRegularizedMerger(options)
    ctx.model.eval()
    return ctx, m, m.problem(ctx)


def test_directions_are_the_recorded_ones_from_where_training_started():
    """d_k = theta_start + s_k - theta_hat_{t-1} for the recorded snapshots s_k (offsets
    from where task t's training started), d_K = theta*_t - theta_hat_{t-1} and
    acc = theta_hat_{t-1} - theta_0, named d1.., dK, acc; every coefficient starts at 0
    but d_K's (init_last). The start differs from theta_hat_{t-1} here, as under the
    fine-tuned start protocol."""
    import dataclasses

    ctx = context(t=1)
    g = torch.Generator().manual_seed(5)
    start = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in ctx.merged.items()}
    ctx = dataclasses.replace(ctx, start=start)
    dirs, names, init = TrajectoryRegularizedMerger(TRMOptions(init_last=0.7)).directions(ctx)
    want = [{k: start[k] + s[k] - ctx.merged[k] for k in KEYS} for s in ctx.task.trajectory]
    want += [{k: ctx.finetuned[k] - ctx.merged[k] for k in KEYS},
             {k: ctx.merged[k] - ctx.theta0[k] for k in KEYS}]
    assert names == ["d1", "d2", "d3", "dK", "acc"] and init == [0.0, 0.0, 0.0, 0.7, 0.0]
    assert len(dirs) == len(want)
    for d, w in zip(dirs, want):
        for k in KEYS:
            torch.testing.assert_close(d[k], w[k])


def test_problem_holds_the_split_batches_the_start_and_the_teacher():
    ctx, m, p = problem(TRMOptions(batches=3, pc_inputs="current", gr_samples=5))
    batches = list(ctx.task.recent_batches)
    assert [b[0] for b in p.fit] == [b[0] for b in batches[1:4]]
    assert torch.equal(p.held_out[0], batches[4][0][:5])
    assert p.directions == ["d1", "d2", "d3", "dK", "acc"]
    assert p.c0.shape == (5, 2)
    assert torch.equal(p.c0[3], torch.full((2,), 0.5)) and float(p.c0[[0, 1, 2, 4]].abs().sum()) == 0
    assert p.g0 == 1.0                       # the median of the series
    for x, z in zip(p.pc_x, p.teacher):
        torch.testing.assert_close(z, logits(ctx.model, feats(ctx.merged, x), [0]))


@pytest.mark.parametrize("step", [0, 1, 2, 3, 4])
def test_terms_on_a_minibatch_are_the_written_out_losses(step):
    o = TRMOptions(batches=3, pc_inputs="current", gr_every=2, tau=2.0)
    ctx, m, p = problem(o)
    c = (p.c0 + 0.1 * torch.randn(p.c0.shape, generator=torch.Generator().manual_seed(step))
         ).requires_grad_(True)
    got = m.terms_on_minibatch(p, c, step)
    th = theta_at(ctx, p, c.detach())
    x, y = p.fit[step % 3]
    want_ta = F.cross_entropy(logits(ctx.model, feats(th, x), [1]), local(y, [2, 3]))
    torch.testing.assert_close(got["ta"], want_ta)
    want_pc = kl(logits(ctx.model, feats(th, x), [0]),
                 logits(ctx.model, feats(ctx.merged, x), [0]), o.tau)
    torch.testing.assert_close(got["pc"], want_pc)
    assert ("gr" in got) == (step % 2 == 0)
    if "gr" in got:
        tw = {k: v.clone().requires_grad_(True) for k, v in th.items()}
        xh, yh = p.held_out
        loss = F.cross_entropy(feats(tw, xh) @ p.gr_head.weight.T + p.gr_head.bias,
                               local(yh, [2, 3]))
        grads = torch.autograd.grad(loss, list(tw.values()))
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        torch.testing.assert_close(got["grad_norm"], norm)
        torch.testing.assert_close(got["gr"], torch.relu(torch.tensor(p.g0) - norm))
        assert got["gr"].requires_grad     # the hinge is descended through the gradient


def test_terms_on_the_fixed_set_are_the_losses_over_all_fitting_data():
    o = TRMOptions(batches=3, pc_inputs="current", g0_scale=100.0)
    ctx, m, p = problem(o)
    c = p.c0 + 0.2
    got = m.terms_on_fixed_set(p, c)
    th = theta_at(ctx, p, c)
    x = torch.cat([b[0] for b in p.fit])
    y = torch.cat([b[1] for b in p.fit])
    torch.testing.assert_close(got["ta"], F.cross_entropy(logits(ctx.model, feats(th, x), [1]),
                                                           local(y, [2, 3])))
    torch.testing.assert_close(got["pc"], kl(logits(ctx.model, feats(th, x), [0]),
                                             logits(ctx.model, feats(ctx.merged, x), [0]), o.tau))
    assert float(got["gr"]) == pytest.approx(p.g0 - float(got["grad_norm"]), rel=1e-6)
    assert not got["ta"].requires_grad and not got["pc"].requires_grad


@pytest.mark.parametrize("ta,pc,gr", [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0)])
def test_a_term_of_weight_zero_is_not_computed(ta, pc, gr):
    """A term whose weight is 0 adds nothing to the total and is not evaluated (no
    forward spent on it), on a minibatch and on the fixed set."""
    ctx, m, p = problem(TRMOptions(batches=3, pc_inputs="current", gr_every=1, ta=ta, pc=pc,
                                   gr=gr))
    c = p.c0.clone().requires_grad_(True)
    want = {k for k, w in (("ta", ta), ("pc", pc), ("gr", gr)) if w > 0}
    for got in (m.terms_on_minibatch(p, c, 0), m.terms_on_fixed_set(p, c)):
        assert set(got) - {"grad_norm"} == want


@pytest.mark.parametrize("weights,terms,want", [
    ((1.0, 1.0, 1.0), {"ta": 2.0, "pc": 3.0, "gr": 5.0}, 10.0),
    ((0.5, 2.0, 0.0), {"ta": 2.0, "pc": 3.0, "gr": 5.0}, 7.0),
    ((1.0, 1.0, 3.0), {"ta": 2.0, "grad_norm": 9.0}, 2.0),
    ((0.0, 0.0, 0.0), {"ta": 2.0, "pc": 3.0}, None),
])
def test_total_is_the_weighted_sum_of_the_present_terms(weights, terms, want):
    ta, pc, gr = weights
    m = TrajectoryRegularizedMerger(TRMOptions(ta=ta, pc=pc, gr=gr))
    got = m.total({k: torch.tensor(v) for k, v in terms.items()})
    assert (got is None) if want is None else float(got) == want


@pytest.mark.parametrize("t,ta,pc,gr,want", [
    (1, 1.0, 0.0, 0.0, True), (0, 0.0, 1.0, 0.0, False), (1, 0.0, 1.0, 0.0, True),
    (0, 0.0, 0.0, 1.0, True), (0, 0.0, 0.0, 0.0, False)])
def test_has_objective_says_whether_a_step_has_a_term(t, ta, pc, gr, want):
    ctx, m, p = problem(TRMOptions(ta=ta, pc=pc, gr=gr), t=t)
    assert m.has_objective(p) is want
    if want:   # the step's total exists exactly when has_objective says so
        assert m.total(m.terms_on_minibatch(p, p.c0.clone().requires_grad_(True), 0)) is not None


@pytest.mark.parametrize("keep_best", [True, False])
def test_optimise_evaluates_on_schedule_stays_bounded_and_keeps_the_best(keep_best):
    o = TRMOptions(steps=7, eval_every=3, lr=0.3, bound=0.6, keep_best=keep_best,
                   pc_inputs="current")
    ctx, m, p = problem(o)
    r = m.optimise(p)
    assert r.curve["step"] == [0, 3, 6, 7]
    assert float(r.c.abs().max()) <= float(torch.tensor(0.6))  # the bound in float32
    totals = r.curve["total"]
    assert r.start["total"] == totals[0]
    if keep_best:
        assert r.end["total"] == min(totals) and r.curve["step"][totals.index(min(totals))] == r.step
    else:
        assert r.step == 7 and r.end["total"] == totals[-1]


def test_optimise_clamps_both_ends_and_bound_zero_is_unbounded():
    """Each step clamps c to [-bound, bound]: with a large step (lr 0.5, 10 Adam steps of
    about lr each) coefficients end at both ends; bound = 0 clamps nothing, and the same
    steps carry some coefficient beyond 1."""
    o = dict(steps=10, eval_every=5, lr=0.5, keep_best=False, pc_inputs="current", gr=0.0)
    ctx, m, p = problem(TRMOptions(bound=0.3, **o))
    c = m.optimise(p).c
    assert float(c.max()) == pytest.approx(0.3) and float(c.min()) == pytest.approx(-0.3)
    ctx, m, p = problem(TRMOptions(bound=0.0, **o))
    assert float(m.optimise(p).c.abs().max()) > 1.0


def test_augmented_consistency_inputs_are_drawn_as_documented():
    """pc_inputs = augmented: each fitting minibatch x becomes lam x_i + (1 - lam) x_perm(i)
    + 0.1 std(x) N(0, 1), with perm, lam ~ U(0, 1) per sample and the noise drawn in that
    order from the run's draw of kind 2; the teacher's logits are on those inputs."""
    from clmerge.mergers.trm import _generator

    ctx, m, p = problem(TRMOptions(batches=3, pc_inputs="augmented", seed=2))
    gen = _generator(ctx, 2, 2)
    for (x, _), got, teacher in zip(p.fit, p.pc_x, p.teacher):
        perm = torch.randperm(len(x), generator=gen)
        lam = torch.rand((len(x), 1), generator=gen)
        eps = torch.randn(x.shape, generator=gen)
        want = lam * x + (1 - lam) * x[perm] + 0.1 * x.std() * eps
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(teacher, logits(ctx.model, feats(ctx.merged, want), [0]))


@pytest.mark.parametrize("steps,step_size", [(3, 0.05), (2, 0.2)])
def test_inverted_consistency_inputs_are_drawn_as_documented(steps, step_size):
    """pc_inputs = inverted: each fitting minibatch x is moved by ``invert_steps``
    signed-gradient steps of ``invert_step`` std(x) towards old classes drawn uniformly
    from the run's draw of kind 3 (targets over the old tasks' classes, one per input),
    within x's range, under the teacher theta_hat_{t-1} and the old heads."""
    from clmerge.mergers.trm import _generator

    o = TRMOptions(batches=3, pc_inputs="inverted", invert_steps=steps, invert_step=step_size,
                   seed=2)
    ctx, m, p = problem(o)
    gen = _generator(ctx, 2, 3)
    for (x, _), got in zip(p.fit, p.pc_x):
        targets = torch.randint(0, 2, (len(x),), generator=gen)
        lo, hi, scale = x.min(), x.max(), float(x.std()) * step_size
        want = x.clone()
        for _ in range(steps):
            want.requires_grad_(True)
            loss = F.cross_entropy(logits(ctx.model, feats(ctx.merged, want), [0]), targets)
            (g,) = torch.autograd.grad(loss, want)
            want = (want.detach() - scale * g.sign()).clamp(lo, hi)
        torch.testing.assert_close(got, want)
        assert not torch.equal(got, x)


def test_optimise_with_one_step_takes_it():
    """steps = 1: one Adam step from c0 (every coefficient moves by lr, Adam's first step
    being lr times the gradient's sign where it is not 0), evaluated at 0 and 1."""
    o = TRMOptions(steps=1, lr=0.05, bound=0.0, pc_inputs="current")
    ctx, m, p = problem(o)
    r = m.optimise(p)
    assert r.curve["step"] == [0, 1]
    moved = (r.c - p.c0).abs()
    torch.testing.assert_close(moved[moved > 0], torch.full_like(moved[moved > 0], 0.05))
    assert int((moved > 0).sum()) > 0


def test_evaluate_without_any_term_gives_a_total_of_zero():
    ctx, m, p = problem(TRMOptions(ta=0.0, pc=0.0, gr=0.0))
    curve = {"step": []}
    values = m.evaluate(p, p.c0, 0, curve)
    assert values == {"total": 0.0} and curve == {"step": [0], "total": [0.0]}


def test_optimise_without_steps_returns_the_start():
    ctx, m, p = problem(TRMOptions(steps=0))
    r = m.optimise(p)
    assert torch.equal(r.c, p.c0) and r.step == 0 and r.curve["step"] == [0]


def test_finish_returns_the_point_of_the_coefficients_and_records_them():
    ctx, m, p = problem(TRMOptions(steps=3))
    r = m.optimise(p)
    got = m.finish(p, r)
    want = theta_at(ctx, p, r.c)
    for k in KEYS:
        torch.testing.assert_close(got[k], want[k])
    rec = m.records[-1]
    assert rec["coefficient"] == pytest.approx(float(r.c[3].mean()))
    assert rec["best_step"] == r.step and rec["objectives_end"] == r.end


def test_merge_restores_the_model_mode_and_gradient_flags():
    ctx = context()
    ctx.model.train()
    ctx.model.heads[1].weight.requires_grad_(True)
    ctx.model.backbone[0].bias.requires_grad_(False)
    flags = [p.requires_grad for p in ctx.model.parameters()]
    TrajectoryRegularizedMerger(TRMOptions(steps=2)).merge(ctx)
    assert ctx.model.training
    assert [p.requires_grad for p in ctx.model.parameters()] == flags
    assert all(p.grad is None for p in ctx.model.parameters())


@pytest.mark.parametrize("mode", ["norm", "orthonormal"])
@pytest.mark.parametrize("scale,zero", [(0.5, False), (1e-15, True)])
def test_rescaling_treats_only_norms_up_to_eps_as_zero(mode, scale, zero):
    """A direction of norm 0.5 (below 1, far above eps = 1e-12) is rescaled to the
    reference's norm along itself; one of norm 1e-15 (below eps) becomes zero."""
    from clmerge.tensormath.trajectory_subspace import rescale_directions
    ref = {"w": torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)}
    other = {"w": torch.tensor([0.0, scale, 0.0], dtype=torch.float64)}
    out = rescale_directions([ref, other], reference=0, mode=mode)
    want = torch.zeros(3, dtype=torch.float64) if zero else torch.tensor(
        [0.0, 2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out[1]["w"], want, rtol=1e-12, atol=0)
    torch.testing.assert_close(out[0]["w"], ref["w"], rtol=0, atol=0)
