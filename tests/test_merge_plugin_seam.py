"""The merge driver at its seam: what ``MergePlugin`` hands a merger, what it writes back.

A tiny model and a stand-in for the strategy (``experience``, ``model``) replace the
Avalanche loop: per task the test calls ``before_training_exp``, moves the weights as
training would (full fine-tuning: the weights themselves; LoRA: the adapter's A and B),
and calls ``after_training_exp``. It checks the context the merger sees (t, theta_0, the
previous merged model, the start, theta*_t formed independently as base + scaling B A),
that the model holds theta*_t densely while the merger runs, that the live weight
objects hold exactly what the merger returned afterwards, that the LoRA adapter is reset
to a no-op after the merge, the ``finetuned`` start protocol, and what is recorded.
Real mergers through the driver are checked against their rules after every task.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clmerge.backbones.lora import LoRAAdapter
from clmerge.mergers.average import RunningAverage
from clmerge.mergers.base import Merger, Observations
from clmerge.mergers.coma import CoMA
from clmerge.mergers.sequential import Sequential
from clmerge.mergers.task_arithmetic import TaskArithmetic
from clmerge.mergers.ties import Ties, TiesOptions
from clmerge.plugins.merge import MergePlugin

RANK, ALPHA = 2, 6.0


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def setup(finetune):
    model = Tiny()
    lora = None
    if finetune == "lora":
        lora = LoRAAdapter(model, ["fc1", "fc2"], rank=RANK, alpha=ALPHA)
        weights = lora.base_weights()
    else:
        weights = {"fc1.weight": model.fc1.weight, "fc2.weight": model.fc2.weight,
                   "fc2.bias": model.fc2.bias}
    theta0 = {k: w.detach().clone() for k, w in weights.items()}
    return model, lora, weights, theta0


def lora_pairs(model):
    """(A, B) of each adapted layer, by the base weight's key."""
    return {f"{name}.weight": (m.lora_A["default"].weight, m.lora_B["default"].weight)
            for name, m in model.named_children()}


def train(model, lora, weights, t):
    """What a task's training leaves behind; returns theta*_t formed independently."""
    g = torch.Generator().manual_seed(40 + t)
    with torch.no_grad():
        if lora is None:
            for w in weights.values():
                w.add_(0.5 * torch.randn(w.shape, generator=g))
            return {k: w.detach().clone() for k, w in weights.items()}
        out = {}
        for k, (A, B) in lora_pairs(model).items():
            A.copy_(torch.randn(A.shape, generator=g))
            B.copy_(torch.randn(B.shape, generator=g))
            out[k] = weights[k].detach().clone() + (ALPHA / RANK) * (B @ A)
        return out


def strategy(model, t):
    return SimpleNamespace(model=model, experience=SimpleNamespace(
        current_experience=t, dataset=SimpleNamespace(targets=[0, 1, 1])))


class Spy(Merger):
    """Records what it is given and what the model holds while it runs; returns a
    combination distinct from every input."""

    def __init__(self, model, lora, weights):
        super().__init__()
        self.model, self.lora, self.weights = model, lora, weights
        self.seen = []

    def merge(self, ctx):
        dense = {k: w.detach().clone() for k, w in self.weights.items()}
        adapter = ({k: float(B.detach().abs().sum()) for k, (A, B) in lora_pairs(self.model).items()}
                   if self.lora is not None else {})
        self.seen.append({"t": ctx.t, "seed": context_seed(ctx), "theta0": ctx.theta0, "merged": ctx.merged,
                          "start": ctx.start, "finetuned": ctx.finetuned, "dense": dense,
                          "adapter_B": adapter, "model": ctx.model, "weights": ctx.weights})
        return {k: 0.5 * ctx.merged[k] + 0.25 * ctx.finetuned[k] + 0.125 * ctx.theta0[k] + 0.1
                for k in ctx.merged}

    def state_bytes(self):
        return 7 * len(self.seen)


def context_seed(ctx):
    """The run's seed as the merger reads it from its context."""
    return ctx.task.seed


class Source:
    def __init__(self, n):
        self.n = n

    def state_bytes(self):
        return self.n


def same(a, b, tol=0.0):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k].detach(), b[k].detach(), rtol=tol, atol=tol)


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("start", ["merged", "finetuned"])
def test_the_driver_hands_over_the_right_weights_and_writes_back_the_merge(finetune, start):
    model, lora, weights, theta0 = setup(finetune)
    ids = {k: id(w) for k, w in weights.items()}
    spy = Spy(model, lora, weights)
    plugin = MergePlugin(spy, weights, theta0, lora=lora, start=start,
                         state_sources=[Source(5), Source(11)], seed=17)
    previous = {k: w.detach().clone() for k, w in weights.items()}
    finetuned_prev = None
    for t in range(3):
        s = strategy(model, t)
        plugin.before_training_exp(s)
        at_start = {k: w.detach().clone() for k, w in weights.items()}
        if start == "finetuned" and finetuned_prev is not None:
            same(at_start, finetuned_prev, tol=1e-6)     # theta*_{t-1} written back
        else:
            same(at_start, previous)
        finetuned = train(model, lora, weights, t)
        t0 = time.perf_counter()
        plugin.after_training_exp(s)
        elapsed = time.perf_counter() - t0
        seen = spy.seen[t]
        assert seen["t"] == t and seen["model"] is model and seen["weights"] is weights
        assert seen["seed"] == 17
        same(seen["theta0"], theta0)
        same(seen["merged"], previous)
        same(seen["start"], at_start)
        same(seen["finetuned"], finetuned, tol=1e-6)
        same(seen["dense"], finetuned, tol=1e-6)        # theta*_t held densely while merging
        assert all(v == 0.0 for v in seen["adapter_B"].values())
        want = {k: 0.5 * previous[k] + 0.25 * seen["finetuned"][k] + 0.125 * theta0[k] + 0.1
                for k in previous}
        same({k: w for k, w in weights.items()}, want)  # written back exactly
        same(plugin.merged, want)
        assert {k: id(w) for k, w in weights.items()} == ids   # in place
        if lora is not None:                             # the adapter is a no-op again
            assert all(float(B.abs().sum()) == 0.0 for _, B in lora_pairs(model).values())
            assert all(float(d.abs().sum()) == 0.0 for d in lora.delta().values())
            x = torch.randn(5, 3)
            manual = torch.relu(x @ want["fc1.weight"].T + model.fc1.base_layer.bias)
            manual = manual @ want["fc2.weight"].T + model.fc2.base_layer.bias
            torch.testing.assert_close(model(x), manual, rtol=1e-5, atol=1e-6)
        rec = plugin.records[t]
        assert rec["state_bytes"] == 7 * (t + 1) + 16
        assert rec["distance_from_pretrained"] == pytest.approx(
            float(torch.sqrt(sum(((want[k] - theta0[k]).double() ** 2).sum() for k in want))))
        assert rec["task_vector_norm"] == pytest.approx(float(torch.sqrt(sum(
            ((seen["finetuned"][k] - at_start[k]).double() ** 2).sum() for k in want))),
            rel=1e-5)
        assert 0 <= rec["merge_seconds"] <= elapsed
        previous, finetuned_prev = want, seen["finetuned"]


def test_the_driver_returns_copies_the_merger_cannot_reach():
    """What the driver keeps as theta_hat_t is a copy: a merger that later changes the
    tensors it returned does not change the next context's ``merged``."""
    model, lora, weights, theta0 = setup("full")

    class Leaky(Merger):
        def __init__(self):
            super().__init__()
            self.last, self.merged_seen = None, []

        def merge(self, ctx):
            if self.last is not None:
                for v in self.last.values():
                    v.add_(100.0)
            self.merged_seen.append({k: v.clone() for k, v in ctx.merged.items()})
            self.last = {k: v.clone() + 1.0 for k, v in ctx.finetuned.items()}
            return self.last

    leaky = Leaky()
    plugin = MergePlugin(leaky, weights, theta0)
    written = []
    for t in range(2):
        s = strategy(model, t)
        plugin.before_training_exp(s)
        train(model, lora, weights, t)
        plugin.after_training_exp(s)
        written.append({k: w.detach().clone() for k, w in weights.items()})
    same(leaky.merged_seen[1], written[0])


def test_the_seed_defaults_to_0():
    model, lora, weights, theta0 = setup("full")
    spy = Spy(model, lora, weights)
    plugin = MergePlugin(spy, weights, theta0)
    s = strategy(model, 0)
    plugin.before_training_exp(s)
    train(model, lora, weights, 0)
    plugin.after_training_exp(s)
    assert spy.seen[0]["seed"] == 0


def test_the_merge_data_of_task_t_is_gone_after_its_merge():
    model, lora, weights, theta0 = setup("full")
    observed = Observations(trajectory=[{"w": torch.ones(1)}],
                            recent_batches=[(torch.ones(1), torch.zeros(1))], g0_series=[2.0])
    seen = []

    class Spy(Sequential):
        def merge(self, ctx):
            seen.append(ctx.task)
            return super().merge(ctx)

    plugin = MergePlugin(Spy(), weights, theta0, observations=observed, seed=3)
    s = strategy(model, 0)
    plugin.before_training_exp(s)
    train(model, lora, weights, 0)
    plugin.after_training_exp(s)
    (task,) = seen       # the merger saw the observations and the seed
    assert len(task.trajectory) == 1 and len(task.recent_batches) == 1
    assert list(task.g0_series) == [2.0] and task.seed == 3
    assert plugin.observations is observed
    assert vars(observed) == {"trajectory": [], "recent_batches": [], "g0_series": []}


def mean_of(fts, theta0, prev, t):
    return {k: torch.stack([f[k] for f in fts]).mean(0) for k in theta0}


def coma_of(fts, theta0, prev, t):
    if t == 0:
        return fts[-1]
    return {k: 0.6 * prev[k] + 0.4 * fts[-1][k] for k in theta0}


def ta_of(fts, theta0, prev, t):
    return {k: theta0[k] + 0.5 * sum(f[k] - theta0[k] for f in fts) for k in theta0}


def ties_k1_of(fts, theta0, prev, t):
    """TIES without trimming (k = 1), lam = 1: per entry, the mean of the task-vector
    entries whose sign is that of their sum."""
    out = {}
    for k in theta0:
        taus = torch.stack([f[k] - theta0[k] for f in fts])
        sign = torch.sign(taus.sum(0))
        agree = (torch.sign(taus) == sign) & (taus != 0)
        out[k] = theta0[k] + (taus * agree).sum(0) / agree.sum(0).clamp(min=1)
    return out


REAL = [("seq", Sequential, lambda fts, theta0, prev, t: fts[-1]),
        ("average", RunningAverage, mean_of), ("coma", CoMA, coma_of),
        ("task_arithmetic", TaskArithmetic, ta_of),
        ("ties", lambda: Ties(TiesOptions(k=1.0, lam=1.0)), ties_k1_of)]


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("name,factory,rule", REAL, ids=[r[0] for r in REAL])
def test_real_mergers_through_the_driver(finetune, name, factory, rule):
    model, lora, weights, theta0 = setup(finetune)
    plugin = MergePlugin(factory(), weights, theta0, lora=lora)
    fts, prev = [], theta0
    for t in range(3):
        s = strategy(model, t)
        plugin.before_training_exp(s)
        fts.append(train(model, lora, weights, t))
        plugin.after_training_exp(s)
        want = rule(fts, theta0, prev, t)
        same({k: w for k, w in weights.items()}, want, tol=1e-5)
        prev = want
