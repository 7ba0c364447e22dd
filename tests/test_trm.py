"""TRM (reconstructed): the subspace and objectives against brute force, the gradient of
the gradient-responsiveness hinge against finite differences, reduction to sequential
fine-tuning, the trajectory recorder, and that nothing of task t survives its merge."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from clmerge.avalanche_api import SupervisedPlugin
from clmerge.experiment.config import ConfigError, make_config
from clmerge.experiment.runner import Run, run_experiment
from clmerge.tensormath.trajectory_subspace import (CoefficientSubspace, gradient_hinge,
                                                    gradient_norm, prediction_consistency,
                                                    random_direction)


def smoke(method="trm", **overrides):
    return make_config(method, profile="smoke", overrides=overrides)


def _tensors(seed, shapes, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}


SHAPES = {"w1": (5, 3), "w2": (2, 5)}


# ------------------------------------------------------------------ subspace
@pytest.mark.parametrize("per_module", [True, False])
def test_combine_is_the_weighted_sum_of_directions(per_module):
    base = _tensors(0, SHAPES)
    dirs = [_tensors(s, SHAPES) for s in (1, 2, 3)]
    space = CoefficientSubspace(base, dirs, per_module=per_module)
    c = torch.randn(space.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = space.combine(c)
    for m, k in enumerate(base):
        expected = base[k].clone()
        for j, d in enumerate(dirs):
            expected += (c[j, m] if per_module else c[j]) * d[k]
        torch.testing.assert_close(out[k], expected, rtol=1e-12, atol=1e-12)


def test_initial_point_and_shape_checks():
    base = _tensors(0, SHAPES)
    space = CoefficientSubspace(base, [_tensors(1, SHAPES), _tensors(2, SHAPES)])
    c = space.initial([0.0, 0.5])
    assert c.shape == (2, 2) and torch.equal(c[1], torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="shape"):
        space.combine(torch.zeros(3))
    with pytest.raises(ValueError, match="directions"):
        space.initial([1.0])


def test_random_direction_has_the_reference_norm_on_every_weight():
    ref = _tensors(0, SHAPES, torch.float32)
    d = random_direction(ref, torch.Generator().manual_seed(1))
    for k in ref:
        assert d[k].norm().item() == pytest.approx(ref[k].norm().item(), rel=1e-5)
        assert not torch.allclose(d[k], ref[k])


def test_prediction_consistency_is_the_tempered_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    tau = 2.0
    p = torch.softmax(t / tau, 1)
    brute = (p * (torch.log(p) - torch.log_softmax(s / tau, 1))).sum(1).mean() * tau ** 2
    assert prediction_consistency(s, t, tau).item() == pytest.approx(brute.item(), rel=1e-5)
    assert prediction_consistency(t, t, tau).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ the hinge's gradient
def _hinge_of_coefficients(c, space, x, y, g0):
    theta = space.combine(c)
    if not c.requires_grad:  # finite differences: the inner gradient is still needed
        theta = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    logits = torch.tanh(x @ theta["w1"].T) @ theta["w2"].T
    loss = F.cross_entropy(logits, y)
    return gradient_hinge(loss, list(theta.values()), g0)


@pytest.mark.parametrize("per_module", [True, False])
def test_gradient_responsiveness_gradient_matches_finite_differences(per_module):
    base = _tensors(0, SHAPES)
    space = CoefficientSubspace(base, [_tensors(s, SHAPES) for s in (1, 2)], per_module)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (8,), generator=g)
    c0 = torch.full(space.shape, 0.3, dtype=torch.float64)
    _, norm = _hinge_of_coefficients(c0, space, x, y, 0.0)
    g0 = float(norm.detach()) * 3  # the hinge is active: g0 above the gradient norm
    c = c0.clone().requires_grad_(True)
    hinge, _ = _hinge_of_coefficients(c, space, x, y, g0)
    assert hinge.item() > 0
    (auto,) = torch.autograd.grad(hinge, c)
    fd = torch.zeros_like(c0)
    h = 1e-6
    for idx in itertools.product(*map(range, c0.shape)):
        cp, cm = c0.clone(), c0.clone()
        cp[idx] += h
        cm[idx] -= h
        fd[idx] = (_hinge_of_coefficients(cp, space, x, y, g0)[0]
                   - _hinge_of_coefficients(cm, space, x, y, g0)[0]) / (2 * h)
    torch.testing.assert_close(auto, fd, rtol=1e-6, atol=1e-8)
    # inactive hinge: zero value, zero gradient
    c = c0.clone().requires_grad_(True)
    hinge, _ = _hinge_of_coefficients(c, space, x, y, 0.0)
    assert hinge.item() == 0 and torch.autograd.grad(hinge, c)[0].abs().max() == 0


def test_gradient_norm_equals_the_norm_of_separate_gradients():
    w = _tensors(0, SHAPES)
    params = [v.clone().requires_grad_(True) for v in w.values()]
    x = torch.randn(4, 3, dtype=torch.float64)
    loss = (torch.tanh(x @ params[0].T) @ params[1].T).pow(2).sum()
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    brute = torch.sqrt(sum(gr.pow(2).sum() for gr in grads))
    assert gradient_norm(loss, params).item() == pytest.approx(brute.item(), rel=1e-12)


# ------------------------------------------------------------------ pipeline
SEQ_LIKE = {"trm.trajectory": False, "trm.accumulated": False, "trm.init_last": 1.0,
            "trm.pc": 0.0, "trm.gr": 0.0, "trm.steps": 0}


def test_only_task_alignment_on_d_K_at_one_reproduces_sequential_fine_tuning():
    seq = run_experiment(smoke("seq"), progress=False)
    trm = run_experiment(smoke(**SEQ_LIKE), progress=False)
    # theta_hat + 1 * (theta* - theta_hat) is theta* up to float rounding
    for key in ("R", "R_til"):
        flat = [(a, b) for ra, rb in zip(trm[key], seq[key]) for a, b in zip(ra, rb)]
        assert all((a is None) == (b is None) for a, b in flat)
        assert max(abs(a - b) for a, b in flat if a is not None) <= 0.005
    assert all(t["coefficients"] == {"dK": 1.0} for t in trm["tasks"])


def test_task_alignment_alone_lowers_its_loss():
    r = run_experiment(smoke(**{"trm.pc": 0.0, "trm.gr": 0.0, "trm.init_last": 0.0}),
                       progress=False)
    for t in r["tasks"]:
        assert t["objectives_end"]["ta"] < t["objectives_start"]["ta"]


class _Inspect(SupervisedPlugin):
    """At the start of every task after the first: what is left of the previous one."""

    def __init__(self, run):
        super().__init__()
        self.run = run
        self.seen = []

    def before_training_exp(self, strategy, **kwargs):
        if strategy.experience.current_experience == 0:
            return
        traj = next(p for p in strategy.plugins if type(p).__name__ == "TrajectoryPlugin")
        merger = self.run.merger
        tensors = [v for v in vars(merger).values() if torch.is_tensor(v)]
        tensors += [v for rec in merger.records for v in rec.values() if torch.is_tensor(v)]
        self.seen.append({"observed": dict(vars(self.run.merge.observations)),
                          "snapshots": len(traj.snapshots), "batches": len(traj.batches),
                          "merger_tensors": len(tensors),
                          "state_bytes": merger.state_bytes()})


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_nothing_of_task_t_survives_its_merge(finetune):
    run = Run(smoke(finetune=finetune, **{"trm.random_directions": 1}))
    probe = _Inspect(run)
    run.add_plugin(probe)
    _, _, tasks = run.execute()
    assert len(probe.seen) == run.stream.n_experiences - 1
    for s in probe.seen:
        assert s == {"observed": {"trajectory": [], "recent_batches": [], "g0_series": []},
                     "snapshots": 0, "batches": 0, "merger_tensors": 0,
                     "state_bytes": 0}
    assert all(t["state_bytes"] == 0 for t in tasks)
    # the merges used the trajectory: K - 1 intermediate directions, the accumulated
    # vector from task 1 on, and the random direction
    assert set(tasks[0]["coefficients"]) == {"d1", "d2", "d3", "dK", "r1"}
    assert set(tasks[1]["coefficients"]) == {"d1", "d2", "d3", "dK", "acc", "r1"}


def test_trajectory_hands_k_minus_1_snapshots_and_the_last_minibatches_to_the_merge():
    from clmerge.plugins.trajectory import TrajectoryPlugin

    run = Run(smoke(**{"trm.snapshots": 3, "trm.batches": 2}))
    seen = []
    from clmerge.mergers.trm import TrajectoryRegularizedMerger

    merge = TrajectoryRegularizedMerger.merge

    def spy(self, ctx):
        seen.append((len(ctx.task.trajectory), len(ctx.task.recent_batches),
                     [torch.equal(a[k], b[k]) for a, b in zip(ctx.task.trajectory,
                                                              ctx.task.trajectory[1:])
                      for k in a]))
        return merge(self, ctx)

    TrajectoryRegularizedMerger.merge = spy
    try:
        run.execute()
    finally:
        TrajectoryRegularizedMerger.merge = merge
    traj = next(p for p in run.strategy.plugins if isinstance(p, TrajectoryPlugin))
    steps = run.cfg.epochs * -(-len(run.stream.train_stream[-1].dataset) // run.cfg.batch_size)
    assert sorted(traj._at) == [round(steps / 3), round(2 * steps / 3)]
    assert [(k, b) for k, b, _ in seen] == [(2, 3)] * run.stream.n_experiences
    assert not any(any(eq) for *_, eq in seen)  # the snapshots are different points


@pytest.mark.parametrize("overrides,message", [
    ({"trm.coefficients": "diagonal"}, "coefficients must be one of per_module, global"),
    ({"trm.snapshots": 0}, "snapshots must be >= 1"),
    ({"trm.gr": -1}, "gr must be >= 0"),
    ({"trm.tau": 0}, "tau must be > 0"),
    ({"trm.gr_head": "old"}, "gr_head must be one of fresh, current"),
    ({"trm.stepz": 3}, "unknown option trm.stepz"),
])
def test_bad_trm_options_fail_with_the_valid_choices(overrides, message):
    with pytest.raises(ConfigError, match=message):
        smoke(**overrides)


def test_min_accuracy_trm():
    # smoke stream: chance is 1/2 task-incremental; seq reaches 0.875 at seed 0
    r = run_experiment(smoke(), progress=False)
    assert r["metrics"]["til"]["A_last"] >= 0.70


# ------------------------------------------------------------------ defects
class _WeightsAtSnapshots(SupervisedPlugin):
    """The mergeable weights right after each step the trajectory snapshots."""

    def __init__(self, run):
        super().__init__()
        self.run = run
        self.per_task = []

    def before_training_exp(self, strategy, **kwargs):
        self.per_task.append([])

    @torch.no_grad()
    def after_training_iteration(self, strategy, **kwargs):
        traj = next(p for p in strategy.plugins if type(p).__name__ == "TrajectoryPlugin")
        if traj._step in traj._at:
            self.per_task[-1].append({k: v.detach().clone() for k, v in self.run.weights.items()})


def _spy_merge(monkeypatch, seen):
    from clmerge.mergers.trm import TrajectoryRegularizedMerger

    merge = TrajectoryRegularizedMerger.merge

    def spy(self, ctx):
        extras = {"trajectory": list(ctx.task.trajectory),
                  "batches": list(ctx.task.recent_batches)}
        dirs = self.directions(ctx)
        head = self.responsiveness_head(ctx) if self.options.gr > 0 else None
        out = merge(self, ctx)
        seen.append({"ctx": ctx, "extras": extras, "out": out, "record": self.records[-1],
                     "directions": dirs, "head": head})
        return out

    monkeypatch.setattr(TrajectoryRegularizedMerger, "merge", spy)


@pytest.mark.parametrize("finetune,start", [("full", "finetuned"), ("full", "merged"),
                                            ("lora", "finetuned")])
def test_trajectory_directions_point_at_the_recorded_weights(monkeypatch, finetune, start):
    """start + snapshot_k is the weights at snapshot k, whatever the start protocol (under
    full fine-tuning from the fine-tuned start, the recorder once stored its start before
    the merge plugin wrote theta*_{t-1} back, offsetting every direction)."""
    run = Run(smoke(finetune=finetune, start=start, **{"trm.steps": 0}))
    watch = _WeightsAtSnapshots(run)
    seen = []
    _spy_merge(monkeypatch, seen)
    run.add_plugin(watch)
    run.execute()
    assert len(seen) == run.stream.n_experiences
    for t, s in enumerate(seen):
        snaps = s["extras"]["trajectory"]
        assert len(snaps) == len(watch.per_task[t]) == 3
        for snap, truth in zip(snaps, watch.per_task[t]):
            for k in truth:
                expected = truth[k]
                if finetune == "lora":  # LoRA snapshots are deltas on top of the start
                    continue
                torch.testing.assert_close(s["ctx"].start[k] + snap[k], expected,
                                           rtol=1e-5, atol=1e-6)


def _ta_at(model, weights, theta, batches, t):
    """L_TA of ``theta`` on the concatenated minibatches (the merge's fitting set)."""
    saved = {k: v.detach().clone() for k, v in weights.items()}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, v in theta.items():
                weights[k].copy_(v)
            x = torch.cat([b[0] for b in batches])
            y = torch.cat([b[1] for b in batches])
            cls = torch.tensor(model.classes_per_exp[t])
            local = (y[:, None] == cls[None, :]).float().argmax(1)
            return float(F.cross_entropy(model.heads[t](model.backbone(x)), local))
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                weights[k].copy_(v)
        model.train(was)


@pytest.mark.parametrize("steps", [1, 5])
def test_objectives_end_is_measured_at_the_returned_model(monkeypatch, steps):
    """The recorded end of the objective is the objective of the model the merge
    returns (it was once the value before the last update)."""
    cfg = smoke(**{"trm.pc": 0.0, "trm.gr": 0.0, "trm.steps": steps, "trm.batches": 2})
    run = Run(cfg)
    seen = []
    _spy_merge(monkeypatch, seen)
    run.execute()
    from clmerge.mergers.trm import TrajectoryRegularizedMerger

    for t, s in enumerate(seen):
        fit, _ = TrajectoryRegularizedMerger.split_batches(s["extras"]["batches"], 2)
        expected = _ta_at(run.model, run.weights, s["out"], fit, t)
        assert s["record"]["objectives_end"]["ta"] == pytest.approx(expected, rel=1e-4)


def _cosine(a, b):
    va = torch.cat([v.flatten() for v in a.values()])
    vb = torch.cat([b[k].flatten() for k in a])
    return float(va @ vb / (va.norm() * vb.norm()))


def test_random_directions_and_fresh_head_follow_the_run_seed(monkeypatch):
    """Two runs with different seeds draw different random directions and different fresh
    heads for L_GR (they once shared them: both were seeded by the option seed)."""
    draws = {}
    for seed in (0, 1):
        seen = []
        _spy_merge(monkeypatch, seen)
        cfg = make_config("trm", profile="smoke", seed=seed,
                          overrides={"trm.random_directions": 1, "trm.steps": 0})
        Run(cfg).execute()
        s = seen[0]
        dirs, names, _ = s["directions"]
        draws[seed] = {"r1": dirs[names.index("r1")], "head": s["head"].weight.detach().clone()}
    # the random draws of the two runs are unrelated: no more aligned than chance
    assert abs(_cosine(draws[0]["r1"], draws[1]["r1"])) < 0.5
    assert not torch.allclose(draws[0]["head"], draws[1]["head"])


# ------------------------------------------------------------------ the optimiser
@pytest.mark.parametrize("mode", ["norm", "orthonormal"])
def test_rescaled_directions_have_the_reference_norm_and_keep_the_span(mode):
    from clmerge.tensormath.trajectory_subspace import rescale_directions

    dirs = [_tensors(s, SHAPES) for s in (1, 2, 3)]
    dirs.append({k: 2.0 * dirs[0][k] - dirs[2][k] for k in SHAPES})   # in the span of 0 and 2
    dirs.append({k: torch.zeros(s, dtype=torch.float64) for k, s in SHAPES.items()})
    out = rescale_directions(dirs, reference=2, mode=mode)
    for k in SHAPES:
        ref = dirs[2][k].norm()
        torch.testing.assert_close(out[2][k], dirs[2][k])           # the reference is kept
        assert out[4][k].abs().max() == 0                           # zero stays zero
        for j in (0, 1):
            assert out[j][k].norm().item() == pytest.approx(ref.item(), rel=1e-10)
        if mode == "norm":
            for j in (0, 1, 3):  # same direction, new length
                a, b = out[j][k].reshape(-1), dirs[j][k].reshape(-1)
                assert float(a @ b / (a.norm() * b.norm())) == pytest.approx(1.0, abs=1e-10)
        else:
            live = [out[j][k].reshape(-1) for j in (2, 0, 1)]
            gram = torch.stack(live) @ torch.stack(live).T / ref ** 2
            torch.testing.assert_close(gram, torch.eye(3, dtype=gram.dtype), atol=1e-10, rtol=0)
            assert out[3][k].abs().max() == 0    # already in the span of earlier directions
            # same span as the originals: each original is a combination of the basis
            basis = torch.stack(live).T
            for j in (0, 1, 2):
                sol = torch.linalg.lstsq(basis, dirs[j][k].reshape(-1, 1)).solution
                torch.testing.assert_close(basis @ sol, dirs[j][k].reshape(-1, 1), atol=1e-9,
                                           rtol=0)


def test_rescale_none_is_the_identity():
    from clmerge.tensormath.trajectory_subspace import rescale_directions

    dirs = [_tensors(s, SHAPES) for s in (1, 2)]
    out = rescale_directions(dirs, 1, "none")
    assert all(torch.equal(out[j][k], dirs[j][k]) for j in (0, 1) for k in SHAPES)
    with pytest.raises(ValueError, match="mode must be one of"):
        rescale_directions(dirs, 0, "unit")


@pytest.mark.parametrize("sizes,held,fit", [
    ([32, 32, 32, 32, 8], 3, [0, 1, 2, 4]),     # an epoch's short last minibatch is not held out
    ([32, 32, 32, 32, 32], 4, [0, 1, 2, 3]),
    ([32, 8, 32], 2, [0, 1]),
])
def test_the_held_out_minibatch_has_the_training_batch_size(sizes, held, fit):
    from clmerge.mergers.trm import TrajectoryRegularizedMerger

    batches = [(torch.full((n, 1), float(i)), torch.zeros(n)) for i, n in enumerate(sizes)]
    got_fit, got_held = TrajectoryRegularizedMerger.split_batches(batches, 4)
    assert int(got_held[0][0]) == held
    assert [int(b[0][0]) for b in got_fit] == fit


@pytest.mark.parametrize("stat,series,expected", [
    ("median", [1.8e-8, 1.0, 2.0, 3.0, 246.0], 2.0),
    ("mean", [1.0, 2.0, 6.0], 3.0),
    ("median", [4.0, 1.0], 2.5),
])
def test_g0_is_the_chosen_statistic_of_the_first_steps(stat, series, expected):
    from clmerge.mergers.base import MergeContext, TaskData
    from clmerge.mergers.trm import TRMOptions, TrajectoryRegularizedMerger

    m = TrajectoryRegularizedMerger(TRMOptions(g0_stat=stat, g0_scale=2.0))
    ctx = MergeContext(t=0, theta0={}, merged={}, start={}, finetuned={},
                       task=TaskData(g0_series=series))
    assert m.g0(ctx) == pytest.approx(2.0 * expected)


def test_inverted_inputs_move_towards_their_targets_within_the_input_range():
    from clmerge.tensormath.trajectory_subspace import invert_inputs, mix_inputs

    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    x = torch.rand(16, 6, generator=g)
    targets = torch.randint(0, 4, (16,), generator=g)
    out = invert_inputs(x, lambda z: z @ w, targets, steps=10, step_size=0.1)
    assert F.cross_entropy(out @ w, targets) < F.cross_entropy(x @ w, targets)
    assert out.min() >= x.min() and out.max() <= x.max()
    assert torch.equal(invert_inputs(x, lambda z: z @ w, targets, steps=0), x)
    mixed = mix_inputs(x, torch.Generator().manual_seed(1), noise=0.0)
    assert mixed.shape == x.shape and mixed.min() >= x.min() and mixed.max() <= x.max()


@pytest.mark.parametrize("overrides", [
    {},
    {"trm.normalise": "orthonormal", "trm.pc_inputs": "augmented"},
    {"trm.pc_inputs": "current", "trm.lr": 0.5, "trm.steps": 20, "trm.eval_every": 5},
    {"finetune": "full", "start": "finetuned", "trm.steps": 20},
])
def test_the_merge_never_ends_worse_on_its_own_objective(overrides):
    """On every merge of a smoke run: the objective at the returned coefficients is at
    most the objective at the start, the curve is recorded from the start to the end,
    and every coefficient stays within its bound."""
    cfg = smoke(**overrides)
    o = cfg.method_args
    r = run_experiment(cfg, progress=False)
    assert r["metrics"]["til"]["A_last"] > 0.5   # the run learns (chance: 0.5)
    for t, rec in enumerate(r["tasks"]):
        start, end, curve = rec["objectives_start"], rec["objectives_end"], rec["objective_curve"]
        assert end["total"] <= start["total"]
        assert curve["step"][0] == 0 and curve["step"][-1] == o["steps"]
        assert len(curve["step"]) == o["steps"] // o["eval_every"] + 1
        assert curve["total"][0] == start["total"] and min(curve["total"]) == end["total"]
        assert curve["step"][curve["total"].index(end["total"])] == rec["best_step"]
        assert set(curve) >= {"ta", "total"} | ({"pc"} if t > 0 else set()) | {"gr", "grad_norm"}
        assert all(abs(c) <= o["bound"] + 1e-6 for c in rec["coefficients"].values())


@pytest.mark.parametrize("method,start", [("trm", "merged"), ("magmax", "finetuned"),
                                          ("magmax", "merged")])
def test_full_fine_tuning_runs_for_trm_and_magmax(method, start):
    from clmerge.experiment.runner import variant_label

    cfg = make_config(method, profile="smoke", overrides={"finetune": "full", "start": start})
    r = run_experiment(cfg, progress=False)
    assert r["variant"] == variant_label(cfg) and r["variant"].startswith(f"{method}_full")
    assert r["metrics"]["til"]["A_last"] > 0.5
    assert all(t["distance_from_pretrained"] > 0 for t in r["tasks"])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_fresh_responsiveness_head_is_a_new_head_of_the_same_kind(kind):
    """L_GR's fresh head: the class and shape of the trained head t, the random draw of a
    new head from the run's seed (for linear heads, exactly ``nn.Linear(in, out)``),
    fixed, and the trained head untouched."""
    from clmerge.backbones.heads import make_head
    from clmerge.mergers.base import MergeContext, TaskData
    from clmerge.mergers.trm import TRMOptions, TrajectoryRegularizedMerger, _generator

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = torch.nn.ModuleList([make_head(kind, 12, 5), make_head(kind, 12, 5)])

    model = Model()
    trained = {k: v.clone() for k, v in model.heads[1].state_dict().items()}
    ctx = MergeContext(t=1, theta0={}, merged={}, start={}, finetuned={}, model=model,
                       task=TaskData(seed=3))
    m = TrajectoryRegularizedMerger(TRMOptions())
    head = m.responsiveness_head(ctx)
    torch.manual_seed(_generator(ctx, m.options.seed, 1).initial_seed())
    expected = make_head(kind, 12, 5)
    assert type(head) is type(model.heads[1]) and head is not model.heads[1]
    assert torch.equal(head.weight, expected.weight)
    assert not any(p.requires_grad for p in head.parameters())
    assert all(torch.equal(v, model.heads[1].state_dict()[k]) for k, v in trained.items())
    if kind == "linear":
        assert torch.equal(head.bias, expected.bias)


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_trm_merges_an_attention_backbone(head):
    """L_GR's second derivative goes through attention (the fused CPU attention kernels
    have none; the merge runs attention in its plain kernel), with either head protocol."""
    cfg = make_config("trm", "split_digits", profile="smoke", overrides={
        "backbone": "vit_letters", "n_experiences": 2, "head": head,
        "trm.steps": 2, "trm.eval_every": 1, "trm.gr_every": 1})
    r = run_experiment(cfg, progress=False)
    assert all(t["objectives_end"]["total"] <= t["objectives_start"]["total"] for t in r["tasks"])
    assert all(t["objectives_start"]["grad_norm"] > 0 for t in r["tasks"])
