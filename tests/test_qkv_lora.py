"""peft's LoRA on the K and V Linears of a split fused qkv (ViT-B/16 and the small ViT).

Oracles: the fused Linear itself (bit-equal forward), the closed form
x W^T + b + s [0; B_k A_k x; B_v A_v x]; parameter counts 2 r (d_in + d) per block; rank
of the stacked [dK; dV] against 2r; Q rows bit-equal; the documented draw order of the
initial factors, replayed by hand; peft's own state-dict functions; the Fisher of a plain
(unsplit) ViT holding the folded weights, and the vmap engine against the hooks engine.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from clmerge.backbones.lora import ADAPTER, LoRAAdapter
from clmerge.backbones.qkv import RowSlice, SplitQKV
from clmerge.backbones.vit import SmallViT, build_small_vit
from clmerge.backbones.vit_b16 import build_vit_b16
from clmerge.tensormath.fisher import diagonal_fisher


def _vit_b16():
    return build_vit_b16(pretrained=False, depth=1), torch.rand(2, 3, 224, 224), 768


def _small_vit():
    return SmallViT(embed_dim=32, depth=2, num_heads=2), torch.rand(4, 1, 28, 28), 32


BACKBONES = {"vit_b16": _vit_b16, "small_vit": _small_vit}


def _build(name, rank):
    torch.manual_seed(0)
    bb, x, d = BACKBONES[name]()
    return bb, LoRAAdapter(bb, bb.lora_targets, rank=rank, alpha=2 * rank), x, d


def _train(bb, lora, x, steps=3):
    bb.train()
    opt = torch.optim.AdamW(lora.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        bb(x).pow(2).mean().backward()
        opt.step()


def _randomise(lora, std=0.1):
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_(std=std)


def _factors(part):
    return part.lora_A[ADAPTER].weight, part.lora_B[ADAPTER].weight


class _Fused(nn.Module):
    """A bare fused qkv Linear, the target of a K/V adapter."""

    def __init__(self, d_in, d):
        super().__init__()
        self.qkv = nn.Linear(d_in, 3 * d)

    def forward(self, x):
        return self.qkv(x)


@pytest.mark.parametrize("name,rank,per_block", [
    ("vit_b16", 10, 30_720),           # 2 x 10 x (768 + 768)
    ("vit_b16", 4, 12_288),
    ("small_vit", 4, 2 * 4 * (32 + 32)),
])
def test_parameter_count_per_block(name, rank, per_block):
    bb, lora, _, d = _build(name, rank)
    assert lora.kv_only
    assert lora.n_parameters() == per_block * len(lora.layers)
    for key, m in lora.layers.items():
        assert isinstance(m, SplitQKV) and key.endswith("attn.qkv.weight")
        assert [tuple(w.shape) for part in lora.parts[key] for w in _factors(part)] == \
            [(rank, d), (d, rank), (rank, d), (d, rank)]
        assert isinstance(m.q, RowSlice)          # Q is never adapted
    trainable = {n for n, p in bb.named_parameters() if "lora_" in n}
    assert trainable == {f"{n}.{p}.lora_{f}.{ADAPTER}.weight" for n in
                         (k.removesuffix(".weight") for k in lora.layers)
                         for p in ("k", "v") for f in ("A", "B")}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_split_forward_is_the_fused_forward_bit_for_bit(name):
    torch.manual_seed(0)
    bb, x, d = BACKBONES[name]()
    fused = copy.deepcopy(bb).eval()
    lora = LoRAAdapter(bb, bb.lora_targets, rank=2, alpha=4)
    bb.eval()
    with torch.no_grad():
        assert torch.equal(bb(x), fused(x))       # fresh adapter: B = 0
        _randomise(lora)
        key, m = next(iter(lora.layers.items()))
        h = torch.randn(2, 5, m.in_features)
        ref = F.linear(h, m.weight, m.bias)
        out = m(h)
        assert torch.equal(out[..., :d], ref[..., :d])
        s = lora.base_scaling[key]
        for i, part in enumerate(lora.parts[key], start=1):
            A, B = _factors(part)
            rows = slice(i * d, (i + 1) * d)
            assert torch.allclose(out[..., rows], ref[..., rows] + s * (h @ A.T @ B.T),
                                  rtol=1e-5, atol=1e-5)
        # the three Linears alone: three products instead of one
        alone = torch.cat([m.q(h), m.k(h), m.v(h)], dim=-1)
        assert torch.allclose(alone, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_trained_kv_update_reaches_rank_2r_and_q_never_changes(name):
    rank = 3
    bb, lora, x, d = _build(name, rank)
    w0 = {k: v.detach().clone() for k, v in lora.base_weights().items()}
    qkv = next(iter(lora.layers.values()))
    q_out = {}
    qkv.register_forward_hook(lambda mod, inp, out: q_out.update(
        q=out[..., :d].detach(),
        ref=F.linear(inp[0], mod.weight, mod.bias)[..., :d].detach()))
    _train(bb, lora, x)
    bb(x)
    assert torch.equal(q_out["q"], q_out["ref"])            # Q output = base Q output
    for k, delta in lora.delta().items():
        assert delta.shape == (3 * d, d)
        assert torch.count_nonzero(delta[:d]) == 0
        kv = delta[d:].double()   # float32 products: rank up to a relative tolerance

        def rank_of(m):
            return int(torch.linalg.matrix_rank(m, rtol=1e-5))
        assert rank_of(kv) == 2 * rank            # a shared A would cap it at r
        assert rank_of(kv[:d]) == rank_of(kv[d:]) == rank
    lora.write_base({k: w0[k] + v for k, v in lora.delta().items()})
    for k, w in lora.base_weights().items():
        assert torch.equal(w[:d], w0[k][:d])                  # Q rows bit-equal
        assert not torch.equal(w[d:2 * d], w0[k][d:2 * d])
        assert not torch.equal(w[2 * d:], w0[k][2 * d:])


def test_forward_matches_the_closed_form_and_scale_factor_scales_the_branch():
    torch.manual_seed(1)
    d_in, d, r = 6, 5, 2
    net = _Fused(d_in, d)
    W, b = net.qkv.weight, net.qkv.bias
    lora = LoRAAdapter(net, r"qkv", rank=r, alpha=3.0, kv_only=True)
    assert net.qkv.weight is W and net.qkv.bias is b       # the fused layer's parameters
    _randomise(lora, std=1.0)
    x = torch.randn(4, 7, d_in)
    s = 3.0 / r
    (dk, dv) = (B @ A for A, B in map(_factors, lora.parts["qkv.weight"]))
    dense = W + s * torch.cat([torch.zeros(d, d_in), dk, dv])
    assert torch.allclose(net(x), x @ dense.T + b, atol=1e-5)
    assert torch.allclose(lora.dense_delta("qkv.weight"), dense - W, atol=1e-6)
    branch = net(x) - F.linear(x, W, b)
    lora.set_scale_factor(1.5)
    assert torch.allclose(net(x) - F.linear(x, W, b), 1.5 * branch, atol=1e-5)
    lora.set_scale_factor(1.0)
    assert torch.allclose(net(x) - F.linear(x, W, b), branch, atol=1e-5)


def test_row_slices_are_views_of_the_fused_parameters():
    torch.manual_seed(2)
    d_in, d = 4, 3
    net = _Fused(d_in, d)
    lora = LoRAAdapter(net, r"qkv", rank=2, alpha=2, kv_only=True)
    m = net.qkv
    assert [n for n, _ in m.named_parameters(recurse=False)] == ["weight", "bias"]
    for i, p in enumerate(("q", "k", "v")):
        part = getattr(m, p).get_base_layer() if p != "q" else m.q
        assert list(part.parameters(recurse=False)) == []
        assert torch.equal(part.weight, m.weight[i * d:(i + 1) * d])
        assert part.weight.data_ptr() == m.weight[i * d].data_ptr()   # same storage
    with torch.no_grad():
        m.weight[d:2 * d] += 1.0                     # write the fused weight ...
    assert torch.equal(m.k.get_base_layer().weight, m.weight[d:2 * d])   # ... k sees it
    _randomise(lora)
    k = m.k
    w_before = m.weight.detach().clone()
    k.merge()                                        # peft's merge writes the fused rows
    assert torch.allclose(m.weight[d:2 * d], w_before[d:2 * d] + k.get_delta_weight(ADAPTER))
    assert torch.equal(m.weight[:d], w_before[:d]) and torch.equal(m.weight[2 * d:],
                                                                  w_before[2 * d:])
    k.unmerge()
    assert torch.allclose(m.weight, w_before, atol=1e-6)
    twin = copy.deepcopy(net).qkv               # a copy's slices view the copy's weight
    with torch.no_grad():
        twin.weight.zero_()
    assert float(twin.v.get_base_layer().weight.detach().abs().max()) == 0
    assert float(m.v.get_base_layer().weight.detach().abs().max()) > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_merge_round_trip(name):
    bb, lora, x, d = _build(name, 2)
    _train(bb, lora, x, steps=2)
    bb.eval()
    with torch.no_grad():
        before = bb(x)
    base = lora.base_weights()
    lora.write_base({k: base[k] + v for k, v in lora.delta().items()})   # fold, a = 1
    assert all(float(_factors(p)[1].detach().abs().max()) == 0
               for parts in lora.parts.values() for p in parts)
    assert all(float(v.abs().max()) == 0 for v in lora.delta().values())
    with torch.no_grad():
        after = bb(x)
    assert torch.allclose(after, before, atol=1e-4)


def test_dense_delta_and_tensor_scale_are_differentiable():
    bb, lora, x, _ = _build("small_vit", 2)
    _randomise(lora)
    k = next(iter(lora.layers))
    lora.dense_delta(k).sum().backward()
    assert all(w.grad is not None for p in lora.parts[k] for w in _factors(p))
    alpha = torch.ones((), requires_grad=True)
    lora.set_scale_factor(alpha)
    (g,) = torch.autograd.grad(bb(x).pow(2).sum(), alpha)
    lora.set_scale_factor(1.0)
    assert torch.isfinite(g) and float(g) != 0.0


@pytest.mark.parametrize("seed", [0, 7])
def test_initial_factors_follow_the_documented_draws(seed):
    """Per block: nn.Linear's init of A_k, A_v, B_k, B_v, then peft's: A_k, A_v; B = 0."""
    rank = 3
    bb = SmallViT(embed_dim=32, depth=3, num_heads=2)
    blocks = [n for n, _ in bb.named_modules() if re.fullmatch(bb.lora_targets, n)]
    torch.manual_seed(seed)
    expected = []
    for _ in blocks:
        for shape in ((rank, 32), (rank, 32), (32, rank), (32, rank)):
            nn.init.kaiming_uniform_(torch.empty(shape), a=math.sqrt(5))
        a_k, a_v = (nn.init.kaiming_uniform_(torch.empty(rank, 32), a=math.sqrt(5))
                    for _ in range(2))
        expected += [a_k, torch.zeros(32, rank), a_v, torch.zeros(32, rank)]
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    lora = LoRAAdapter(bb, bb.lora_targets, rank=rank, alpha=rank)
    got = [p.detach() for p in lora.parameters()]
    assert len(got) == len(expected) == 4 * len(blocks)
    assert all(torch.equal(g, e) for g, e in zip(got, expected))
    assert torch.equal(torch.get_rng_state(), state)
    lora.reset()      # a fresh adapter: A_k, A_v re-drawn block by block, B = 0
    torch.set_rng_state(state)
    again = [(nn.init.kaiming_uniform_(torch.empty(rank, 32), a=math.sqrt(5)),
              torch.zeros(32, rank)) for _ in range(2 * len(blocks))]
    assert all(torch.equal(g, e) for g, e in zip(lora.parameters(),
                                                   [t for pair in again for t in pair]))


def test_peft_saves_and_reloads_the_letters_vit_adapters(tmp_path):
    torch.manual_seed(0)
    bb = build_small_vit(pretrained=True).eval()
    lora = LoRAAdapter(bb, bb.lora_targets, rank=4, alpha=8)
    _randomise(lora)
    sd = get_peft_model_state_dict(bb)
    depth = len(bb.vit.blocks)
    assert set(sd) == {f"vit.blocks.{i}.attn.qkv.{p}.lora_{f}.weight" for i in range(depth)
                       for p in ("k", "v") for f in ("A", "B")}
    own = {n: p for n, p in bb.named_parameters()}
    for k, v in sd.items():
        assert torch.equal(v, own[k.replace(".weight", f".{ADAPTER}.weight")])
    save_file(sd, tmp_path / "adapter.safetensors")

    torch.manual_seed(1)
    fresh = build_small_vit(pretrained=True).eval()
    lora2 = LoRAAdapter(fresh, fresh.lora_targets, rank=4, alpha=8)
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), bb(x))
        result = set_peft_model_state_dict(fresh, load_file(tmp_path / "adapter.safetensors"))
        assert not result.unexpected_keys
        assert not [k for k in result.missing_keys if "lora_" in k]
        assert torch.equal(fresh(x), bb(x))
    assert all(torch.equal(a, b) for a, b in zip(lora2.parameters(), lora.parameters()))
    d1, d2 = lora.delta(), lora2.delta()
    assert all(torch.equal(d1[k], d2[k]) for k in d1)


def test_fisher_sees_the_fused_weight_and_the_lora_factors():
    """Fisher of the split model w.r.t. the fused weights = Fisher of an unsplit copy
    holding the folded weights; the hooks engine (which hooks the fused qkv and peft's
    A/B Linears) agrees with the vmap engine on the fused weights and the factors."""
    torch.manual_seed(0)
    bb = SmallViT(embed_dim=32, depth=2, num_heads=2)
    plain = copy.deepcopy(bb)
    lora = LoRAAdapter(bb, bb.lora_targets, rank=2, alpha=4)
    _randomise(lora, std=0.2)
    with torch.no_grad():
        own = dict(plain.named_parameters())
        for k, delta in lora.delta().items():
            own[k].add_(delta)
    names = {id(p): n for n, p in bb.named_parameters()}
    wn = [names[id(p)] for p in lora.base_weights().values()]
    ln = [names[id(p)] for p in lora.parameters()]
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 5, (8,), generator=g)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]

    def logits(m, x):
        return m(x)[:, :5]

    hooks = diagonal_fisher(bb, wn + ln, batches, logits_fn=logits, engine="hooks")
    vmap = diagonal_fisher(bb, wn + ln, batches, logits_fn=logits, engine="vmap")
    ref = diagonal_fisher(plain, wn, batches, logits_fn=logits, engine="hooks")
    for n in wn + ln:
        assert hooks[n].abs().max() > 0
        assert torch.allclose(hooks[n], vmap[n], rtol=1e-3, atol=1e-6 * hooks[n].max())
    for n in wn:
        assert torch.allclose(hooks[n], ref[n], rtol=1e-3, atol=1e-6 * ref[n].max())


def test_rejects_what_it_cannot_split():
    with pytest.raises(ValueError, match="3\\*d outputs"):
        SplitQKV(nn.Linear(4, 7))
    with pytest.raises(TypeError, match="nn.Linear"):
        SplitQKV(nn.Conv2d(4, 6, 1))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAAdapter(_Fused(4, 2), r"qkv", rank=0, alpha=2, kv_only=True)
    bb = SmallViT(embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="no module of the backbone matches"):
        LoRAAdapter(bb, r".*nothing", rank=2, alpha=2)
    with pytest.raises(RuntimeError, match="initialise that Linear"):
        SplitQKV(nn.Linear(4, 6)).k.reset_parameters()
