"""The Fisher's sample, its float64 log-likelihood, the hooks engine and the estimators.

Oracles: closed-form logit gradients (binary: sigmoid of the margin), a per-sample
loop in float64 whose logit gradient is written out in closed form (no cancellation),
the exact expectation over classes for the true Fisher, and class counts of the drawn
sample against the task's class proportions.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from clmerge.mergers.base import MergeContext, TaskData
from clmerge.mergers.fisher_context import fisher_rng, stratified_order, task_fisher
from clmerge.tensormath.fisher import diagonal_fisher, hookable, log_likelihood


# ------------------------------------------------------------------ stratified sample

def blocked(counts):
    """Labels stored class by class, as the streams store a task."""
    return [c for c, n in enumerate(counts) for _ in range(n)]


SAMPLE_CASES = [   # (class counts of the task, cap, batch size)
    ([400, 400], 256, 32),                 # split_mnist5k-like task
    ([500] * 10, 1024, 32),                # CIFAR-100-like task: 10 classes of 500
    ([700, 100, 200], 100, 10),            # unbalanced
    ([30, 3, 67], 1000, 8),                # cap above the task size: everything
    ([5, 5, 5], 4, 2),                     # fewer samples than classes
]


@pytest.mark.parametrize("counts,cap,bs", SAMPLE_CASES)
def test_stratified_sample_covers_classes_in_proportion(counts, cap, bs):
    y = blocked(counts)
    order = stratified_order(y, cap, fisher_rng(0, 0))
    n = min(cap, len(y))
    assert len(order) == n and len(set(order)) == n
    assert all(0 <= i < len(y) for i in order)
    got = Counter(y[i] for i in order)
    for c, n_c in enumerate(counts):
        assert abs(got.get(c, 0) - n * n_c / len(y)) < 1        # each class in proportion
    if n >= len(counts):
        assert len(got) == len(counts)                          # every class covered
    # every full batch is mixed: each class within 2 of its share of the batch
    for start in range(0, n - bs + 1, bs):
        window = Counter(y[i] for i in order[start:start + bs])
        for c, n_c in enumerate(counts):
            assert abs(window.get(c, 0) - bs * got.get(c, 0) / n) <= 2


def test_stratified_sample_is_seeded_by_run_and_task():
    y = blocked([400, 400])
    a = stratified_order(y, 256, fisher_rng(0, 1))
    assert a == stratified_order(y, 256, fisher_rng(0, 1))       # reproducible
    assert set(a) != set(stratified_order(y, 256, fisher_rng(1, 1)))   # another seed
    assert set(a) != set(stratified_order(y, 256, fisher_rng(0, 2)))   # another task
    with pytest.raises(ValueError):
        stratified_order(y, 0, fisher_rng(0, 0))


def test_task_fisher_sees_a_stratified_sample_of_the_task():
    """Through the merge context, as P&M draws it: the labels the Fisher sees."""
    torch.manual_seed(0)
    x = torch.randn(800, 6)
    y = torch.tensor(blocked([400, 400]))
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    seen = []

    def batches(indices=None, batch_size=None):
        idx = list(range(len(y))) if indices is None else list(indices)
        bs = batch_size or 32
        for s in range(0, len(idx), bs):
            sel = torch.tensor(idx[s:s + bs])
            seen.append(y[sel])
            yield x[sel], y[sel]

    weights = {"0.weight": model[0].weight}
    ctx = MergeContext(t=3, theta0={}, merged={}, start={}, finetuned={}, model=model,
                       weights=weights,
                       task=TaskData(batches=batches, targets=lambda: y.tolist(), seed=5))
    f = task_fisher(ctx, max_samples=256, engine="hooks", sampling="stratified")
    labels = torch.cat(seen)
    assert len(labels) == 256 and int((labels == 0).sum()) == 128
    assert all(0 < int((b == 0).sum()) < len(b) for b in seen)    # every batch mixed
    assert f["0.weight"].shape == (5, 6) and float(f["0.weight"].sum()) > 0
    seen.clear()
    task_fisher(ctx, max_samples=256, sampling="sequential")      # the stored order
    assert set(torch.cat(seen).tolist()) == {0}                   # one class only


# ------------------------------------------------------------------ log-likelihood

@pytest.mark.parametrize("margin", [0.0, 5.0, 17.0, 20.0, 30.0, 50.0, 100.0, 300.0])
def test_log_likelihood_gradient_keeps_precision_at_large_margins(margin):
    z = torch.tensor([[margin, 0.0]], dtype=torch.float64, requires_grad=True)
    ll = log_likelihood(z, torch.tensor([0]))
    (g,) = torch.autograd.grad(ll.sum(), z)
    exact = 1.0 / (1.0 + math.exp(margin))              # d log sigmoid(m) / dm
    assert g[0, 0].item() == pytest.approx(exact, rel=1e-12)
    assert g[0, 1].item() == pytest.approx(-exact, rel=1e-12)
    assert ll.item() == pytest.approx(-math.log1p(math.exp(-margin)), rel=1e-12, abs=1e-300)
    # float32 log_softmax: the true class' gradient rounds to 0 once exp(-m) < 2^-24
    # while the other class' does not (until exp(-m) underflows float32 too)
    z32 = torch.tensor([[margin, 0.0]], requires_grad=True)
    (g32,) = torch.autograd.grad(torch.log_softmax(z32, -1)[0, 0], z32)
    if 17 <= margin <= 80:
        assert g32[0, 0].item() == 0.0 and g32[0, 1].item() < 0    # no longer sums to 0


def test_log_likelihood_masked_classes():
    z = torch.tensor([[2.0, -math.inf, 0.5], [1.0, -math.inf, 3.0]], dtype=torch.float64)
    ref = torch.log_softmax(z, -1).gather(1, torch.tensor([[0], [2]])).squeeze(1)
    torch.testing.assert_close(log_likelihood(z, torch.tensor([0, 2])), ref)
    single = torch.tensor([[1.0, -math.inf]], dtype=torch.float64, requires_grad=True)
    ll = log_likelihood(single, torch.tensor([0]))
    (g,) = torch.autograd.grad(ll.sum(), single)
    assert ll.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    assert not torch.isfinite(log_likelihood(z, torch.tensor([1, 2]))).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_vmap_engines_log_likelihood_is_taken_in_float32(dtype):
    """The vmap engine's sum of log softmax(z)[y] takes half-precision logits up to
    float32 first: the value is the float32 one of the same logits."""
    from clmerge.tensormath.fisher import _log_likelihood_f32

    g = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(16, 7, generator=g)).to(dtype)
    y = torch.randint(0, 7, (16,), generator=g)
    got = _log_likelihood_f32(z, y)
    want = sum(float(torch.log_softmax(z[i].float(), -1)[y[i]]) for i in range(16))
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ hooks engine

class Mixed(nn.Module):
    """Every case of the hooks engine: Linear on [N, in] and on tokens [N, L, in], 1x1,
    strided 1x1 and padded 3x3 convolutions, and fallbacks (depthwise conv, BatchNorm);
    an in-place ReLU after a hooked layer; one Linear used twice."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pw = nn.Conv2d(6, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw2 = nn.Conv2d(8, 5, 1, stride=2, bias=False)
        self.tok = nn.Linear(5, 7)
        self.shared = nn.Linear(7, 7)
        self.head = nn.Linear(7, n_classes)

    def forward(self, x):
        h = torch.relu_(self.stem(x))
        h = self.bn(h)
        h = torch.relu(self.pw(h))
        h = self.pw2(self.dw(h))                                  # [N, 5, 3, 3]
        t = torch.relu(self.tok(h.flatten(2).transpose(1, 2)))    # tokens [N, 9, 7]
        t = torch.tanh(self.shared(torch.tanh(self.shared(t))))   # shared weights
        return self.head(t.mean(1))


def confident_model(dtype, margin=30.0, n=12, seed=0):
    """A Mixed net whose every sample has a logit margin of about ``margin`` (at least
    ``margin - 3``) for its label: the head's weights give logits of order 1, its bias
    lifts class 0 by ``margin`` (logits stay small, so float32 resolves the margin)."""
    torch.manual_seed(seed)
    model = Mixed().to(dtype).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 3, 6, 6, generator=gen).to(dtype)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.head.bias.copy_(torch.tensor([margin, 0.0, 0.0]))
        z = model(x)
    y = z.argmax(1)
    top2 = z.topk(2, dim=1).values
    assert (y == 0).all() and float((top2[:, 0] - top2[:, 1]).min()) >= margin - 3
    return model, x, y


def closed_form_logit_grad(z: torch.Tensor, k: int) -> torch.Tensor:
    """d log p(k|z) / dz without cancellation: -p_j (j != k), sum_{j != k} p_j (j = k)."""
    z = z.double()
    w = torch.exp(z - z[k])
    w[k] = 0.0
    s = w.sum()
    g = -w / (1 + s)
    g[k] = s / (1 + s)
    return g


def loop_fisher(model, names, x, y=None, estimator="empirical"):
    """Per-sample loop in float64: one backward pass per sample (and class)."""
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    for xi, yi in zip(x, y):
        z = model(xi[None])[0]
        p = torch.softmax(z.detach().double(), -1)
        cases = [(int(yi), 1.0)] if estimator == "empirical" else \
            [(k, float(p[k])) for k in range(len(z))]
        for k, w in cases:
            e = closed_form_logit_grad(z.detach(), k).to(z.dtype)
            grads = torch.autograd.grad(z, [params[n] for n in names], grad_outputs=e,
                                        retain_graph=True)
            for n, g in zip(names, grads):
                acc[n] += w * g.double() ** 2
    return {n: v / len(x) for n, v in acc.items()}


ALL = None   # every parameter of the model


class Kernels(nn.Module):
    """Convolutions the hooks engine must read through their input columns: unpadded
    3x3, unpadded 2x1 and 1x2, and 1x1 ones padded on both axes, on rows only and on
    columns only."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Conv2d(3, 3, (2, 1)),
                                   nn.Tanh(), nn.Conv2d(3, 3, (1, 2)), nn.Tanh(),
                                   nn.Conv2d(3, 4, 1, padding=1), nn.Tanh(),
                                   nn.Conv2d(4, 4, 1, padding=(1, 0)), nn.Tanh(),
                                   nn.Conv2d(4, 4, 1, padding=(0, 1)))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.convs(x)).mean((2, 3)))


class Uses(nn.Module):
    """Linears the hooks engine must sum over all their calls and positions: one on two
    tokens [N, 2, in], one used twice on [N, in]."""

    def __init__(self):
        super().__init__()
        self.pair = nn.Linear(3, 4)
        self.twice = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.pair(x)).mean(1)
        return self.head(torch.tanh(self.twice(torch.tanh(self.twice(h)))))


@pytest.mark.parametrize("model_cls,shape", [
    (lambda: Uses(), (6, 2, 3)),          # every call and position of a Linear, summed
    (lambda: Kernels(), (6, 2, 6, 5)),    # every kernel shape, read through its columns
], ids=["linear calls and positions", "kernel shapes"])
def test_hooks_fisher_matches_the_per_sample_loop(model_cls, shape):
    torch.manual_seed(0)
    model = model_cls().double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)
    names = [n for n, _ in model.named_parameters()]
    ref = loop_fisher(model, names, x, y)
    got = diagonal_fisher(model, names, [(x[:4], y[:4]), (x[4:], y[4:])], engine="hooks")
    for n in names:
        assert float(ref[n].sum()) > 0, n
        torch.testing.assert_close(got[n].double(), ref[n], rtol=1e-6, atol=0)


@pytest.mark.parametrize("estimator", ["empirical", "true"])
def test_hooks_fisher_matches_per_sample_loop_on_confident_model(estimator):
    """Margin 30: float64 hooks engine = float64 loop to rounding; the float32 network
    still agrees to float32 precision; the float32 log_softmax path returns a Fisher of
    the wrong size."""
    model, x, y = confident_model(torch.float64)
    names = [n for n, _ in model.named_parameters()]
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    ref = loop_fisher(model, names, x, y, estimator)
    got = diagonal_fisher(model, names, batches, engine="hooks", estimator=estimator)
    for n in names:
        assert float(ref[n].sum()) > 0, n
        torch.testing.assert_close(got[n].double(), ref[n], rtol=1e-6, atol=0)
    # float32 network, logits' gradient from float64: the loop on the same float32
    # network (the network's own float32 rounding is not the Fisher's to fix)
    m32 = confident_model(torch.float32)[0]
    ref32 = loop_fisher(m32, names, x.float(), y, estimator)
    got32 = diagonal_fisher(m32, names, [(x.float(), y)], engine="hooks", estimator=estimator)
    for n in names:
        torch.testing.assert_close(got32[n].double(), ref32[n], rtol=1e-4, atol=0)
    if estimator == "empirical":   # the float32 log_softmax path is off by orders
        old = diagonal_fisher(m32, names, [(x.float(), y)], engine="vmap")
        for n in ("head.weight", "tok.weight"):
            rel = float((old[n].double() - ref32[n]).norm() / ref32[n].norm())
            assert rel > 0.5, n


def test_true_fisher_does_not_vanish_with_the_fit():
    """At margin 30 the empirical Fisher is ~(1-p)^2 ~ 1e-26, the true one ~(1-p) ~ 1e-13."""
    model, x, y = confident_model(torch.float64)
    names = ["head.weight"]
    emp = diagonal_fisher(model, names, [(x, y)], engine="hooks")["head.weight"].double()
    true = diagonal_fisher(model, names, [(x, y)], engine="hooks",
                           estimator="true")["head.weight"].double()
    assert float(true.sum()) > 1e6 * float(emp.sum()) > 0


@pytest.mark.parametrize("mode", ["per_sample", "per_batch"])
def test_hooks_engine_equals_vmap_engine_at_moderate_margins(mode):
    """Where float32 log_softmax is accurate the two engines compute the same Fisher."""
    torch.manual_seed(3)
    model = Mixed().double().eval()
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 3, 6, 6, generator=gen, dtype=torch.float64),
                torch.randint(0, 3, (6,), generator=gen)) for _ in range(2)]
    names = [n for n, _ in model.named_parameters()]
    a = diagonal_fisher(model, names, batches, mode=mode, engine="hooks")
    b = diagonal_fisher(model, names, batches, mode=mode, engine="vmap")
    for n in names:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-9)


def test_hooks_engine_leaves_model_unchanged_and_restores_flags():
    model, x, y = confident_model(torch.float32, margin=3.0)
    model.train()
    model.bn.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.head.bias.requires_grad_(True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    diagonal_fisher(model, ["pw.weight", "head.bias", "bn.weight"], [(x, y)], engine="hooks")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.bias"]
    assert model.training and model.pw.training and not model.bn.training
    assert not model.stem._forward_hooks and not model.pw._forward_hooks


def test_hookable_modules():
    assert hookable(nn.Linear(2, 3)) and hookable(nn.Conv2d(2, 3, 1))
    assert hookable(nn.Conv2d(2, 3, 3, stride=2, padding=1))
    assert not hookable(nn.Conv2d(4, 4, 3, groups=4))
    assert not hookable(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"))
    assert not hookable(nn.BatchNorm2d(3)) and not hookable(nn.LayerNorm(3))


def test_estimator_argument_checks():
    model = nn.Linear(3, 2)
    data = [(torch.randn(2, 3), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="engine='hooks'"):
        diagonal_fisher(model, ["weight"], data, engine="vmap", estimator="true")
    with pytest.raises(ValueError, match="per_sample"):
        diagonal_fisher(model, ["weight"], data, engine="hooks", estimator="true",
                        mode="per_batch")
    with pytest.raises(ValueError, match="engine"):
        diagonal_fisher(model, ["weight"], data, engine="jit")


def test_true_fisher_is_label_free_and_matches_its_expectation():
    """F_true does not depend on the given labels; with one sample it is the exact
    expectation sum_k p_k g_k^2 (checked against the loop)."""
    model, x, y = confident_model(torch.float64, margin=1.0)
    names = ["tok.weight", "head.bias", "bn.bias"]
    a = diagonal_fisher(model, names, [(x, y)], engine="hooks", estimator="true")
    b = diagonal_fisher(model, names, [(x, (y + 1) % 3)], engine="hooks", estimator="true")
    for n in names:
        assert torch.equal(a[n], b[n])
    ref = loop_fisher(model, names, x[:1], y[:1], "true")
    one = diagonal_fisher(model, names, [(x[:1], y[:1])], engine="hooks", estimator="true")
    for n in names:
        torch.testing.assert_close(one[n].double(), ref[n], rtol=1e-6, atol=0)
    assert np.isfinite(float(a["head.bias"].sum()))


def test_hooks_engine_refuses_a_weight_used_outside_its_module():
    """nn.MultiheadAttention reads out_proj.weight without calling out_proj."""
    torch.manual_seed(0)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 1, batch_first=True)
            self.head = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.mha(x, x, x, need_weights=False)[0].mean(1))

    model = Attn().eval()
    data = [(torch.randn(3, 5, 4), torch.tensor([0, 1, 0]))]
    f = diagonal_fisher(model, ["head.weight", "unused.weight"], data, engine="hooks")
    assert float(f["head.weight"].sum()) > 0 and float(f["unused.weight"].abs().sum()) == 0
    with pytest.raises(ValueError, match="out_proj.weight"):
        diagonal_fisher(model, ["mha.out_proj.weight"], data, engine="hooks")
    ref = diagonal_fisher(model, ["mha.out_proj.weight"], data, engine="vmap")
    assert float(ref["mha.out_proj.weight"].sum()) > 0
