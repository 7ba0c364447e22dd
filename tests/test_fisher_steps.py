"""The named steps of :func:`clmerge.tensormath.fisher.diagonal_fisher`, one by one,
each against what it must do written out here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clmerge.tensormath import fisher as F


@pytest.mark.parametrize("mode,engine,estimator,max_samples,needle", [
    ("sum", "hooks", "empirical", None, "mode must be"),
    ("per_sample", "jit", "empirical", None, "engine must be"),
    ("per_sample", "hooks", "fancy", None, "estimator must be"),
    ("per_sample", "vmap", "true", None, "needs engine='hooks'"),
    ("per_batch", "hooks", "true", None, "needs engine='hooks'"),
    ("per_sample", "hooks", "empirical", 0, "max_samples must be positive"),
    ("per_sample", "hooks", "empirical", -3, "max_samples must be positive"),
])
def test_check_options_refuses(mode, engine, estimator, max_samples, needle):
    with pytest.raises(ValueError, match=needle):
        F._check_options(mode, engine, estimator, max_samples)


@pytest.mark.parametrize("mode,engine,estimator", [
    ("per_sample", "hooks", "empirical"), ("per_sample", "hooks", "true"),
    ("per_batch", "vmap", "empirical"), ("per_batch", "hooks", "empirical")])
def test_check_options_accepts(mode, engine, estimator):
    F._check_options(mode, engine, estimator, 5)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(4))
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.norm(self.lin(x)) * self.scale)


@pytest.mark.parametrize("engine,hooked,rest", [
    ("hooks", {"lin": {"weight": "lin.weight", "bias": "lin.bias"},
               "out": {"weight": "out.weight"}}, ["norm.weight", "scale"]),
    ("vmap", {}, ["lin.weight", "lin.bias", "norm.weight", "scale", "out.weight"]),
])
def test_split_by_engine(engine, hooked, rest):
    net = _Net()
    names = ["lin.weight", "lin.bias", "norm.weight", "scale", "out.weight"]
    got_hooked, got_rest = F._split_by_engine(net, names, engine)
    by_name = {dict(net.named_modules())[k]: v for k, v in hooked.items()}
    assert got_hooked == by_name and got_rest == rest


def _counted(sizes):
    """Batches of the given sizes (x = the sample indices), and a list of how many
    batches were drawn."""
    drawn = []

    def gen():
        start = 0
        for b in sizes:
            drawn.append(b)
            x = torch.arange(start, start + b, dtype=torch.float32)[:, None]
            yield x, torch.zeros(b, dtype=torch.long)
            start += b
    return gen(), drawn


@pytest.mark.parametrize("sizes,cap,expected,drawn", [
    ([3, 3, 3, 3], 7, [3, 3, 1], 3),       # cut at the cap, the 4th batch never drawn
    ([3, 3, 3], 6, [3, 3], 2),             # exactly at a batch's end
    ([3, 0, 2], None, [3, 2], 3),          # empty batches left out, no cap: all
    ([5], 2, [2], 1),
])
def test_capped_cuts_and_draws_nothing_after_the_cap(sizes, cap, expected, drawn):
    batches, pulled = _counted(sizes)
    out = list(F._capped(batches, cap, torch.device("cpu")))
    assert [len(x) for x, _ in out] == expected and len(pulled) == drawn
    flat = torch.cat([x for x, _ in out])[:, 0]
    assert flat.tolist() == list(range(sum(expected)))    # the first samples, in order


def _per_sample_squares(net, x, y, names):
    """Oracle: sum over samples of the squared gradient of log p(y_i | x_i), one
    backward pass per sample."""
    params = dict(net.named_parameters())
    out = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    for xi, yi in zip(x, y):
        ll = torch.log_softmax(net(xi[None]), -1)[0, yi]
        gs = torch.autograd.grad(ll, [params[n] for n in names])
        for n, g in zip(names, gs):
            out[n] += g.double() ** 2
    return out


@pytest.mark.parametrize("per_sample", [True, False])
def test_vmap_fisher_adds_squared_gradients(per_sample):
    torch.manual_seed(0)
    net = _Net().eval()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    names = ["norm.weight", "scale", "lin.bias"]
    params = dict(net.named_parameters())
    acc = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    v = F._VmapFisher(net, F._Call(net, F._default_logits), params, names,
                      F._log_likelihood_f32, chunk_size=2, per_sample=per_sample)
    v.add(x, [(y, None)], acc, None)
    if per_sample:
        expected = _per_sample_squares(net, x, y, names)
    else:   # the squared gradient of the batch's summed log-likelihood
        ll = torch.log_softmax(net(x), -1)[torch.arange(5), y].sum()
        gs = torch.autograd.grad(ll, [params[n] for n in names])
        expected = {n: g.double() ** 2 for n, g in zip(names, gs)}
    for n in names:
        torch.testing.assert_close(acc[n], expected[n], rtol=1e-5, atol=1e-9)


def test_vmap_fisher_weights_each_sample_and_silences_the_hooks():
    torch.manual_seed(1)
    net = _Net().eval()
    x, y = torch.randn(4, 3), torch.tensor([1, 0, 1, 1])
    w = torch.tensor([0.5, 0.0, 2.0, 1.0])
    names = ["scale"]
    params = dict(net.named_parameters())
    acc = {"scale": torch.zeros(4, dtype=torch.float64)}
    states = []

    class Captures:
        active = True

    caps = Captures()
    v = F._VmapFisher(net, F._Call(net, F._default_logits), params, names,
                      F._log_likelihood_f32, chunk_size=None, per_sample=True)
    original = v.add_labels

    def spy(*args):
        states.append(caps.active)
        return original(*args)

    v.add_labels = spy
    v.add(x, [(y, w)], acc, caps)
    per = [_per_sample_squares(net, x[i:i + 1], y[i:i + 1], names)["scale"] for i in range(4)]
    expected = sum(wi.double() * p for wi, p in zip(w, per))
    torch.testing.assert_close(acc["scale"], expected, rtol=1e-5, atol=1e-9)
    assert states == [False] and caps.active is True


def test_fisher_state_restores_modes_flags_and_hooks_even_on_error():
    net = _Net()
    net.train()
    net.norm.eval()
    net.lin.weight.requires_grad_(False)
    selected = {"lin.weight": net.lin.weight, "scale": net.scale}
    caps = F._Captures([net.lin])
    with pytest.raises(RuntimeError, match="boom"):
        with F._fisher_state(net, selected, ["lin.weight"], caps):
            assert not any(m.training for m in net.modules())
            assert net.lin.weight.requires_grad
            raise RuntimeError("boom")
    assert net.training and net.lin.training and not net.norm.training
    assert net.lin.weight.requires_grad is False and net.scale.requires_grad is True
    assert len(net.lin._forward_hooks) == 0


@pytest.mark.parametrize("seen", [1, 4])
def test_mean_fisher_divides_by_the_sample_count(seen):
    acc = {"a": torch.tensor([2.0, 6.0], dtype=torch.float64),
           "b": torch.tensor([[4.0]], dtype=torch.float64)}
    out = F._mean_fisher(acc, seen, ["b", "a"])
    assert list(out) == ["b", "a"] and all(v.dtype == torch.float32 for v in out.values())
    assert out["a"].tolist() == [2.0 / seen, 6.0 / seen] and out["b"].item() == 4.0 / seen


@pytest.mark.parametrize("acc,seen,needle", [
    ({"a": torch.tensor([1.0], dtype=torch.float64)}, 0, "no samples"),
    ({"a": torch.tensor([float("inf")], dtype=torch.float64)}, 2, "non-finite Fisher for a"),
    ({"a": torch.tensor([float("nan")], dtype=torch.float64)}, 2, "non-finite Fisher for a"),
])
def test_mean_fisher_refuses(acc, seen, needle):
    with pytest.raises(ValueError, match=needle):
        F._mean_fisher(acc, seen, ["a"])
