"""Separate K and V LoRAs on a fused qkv Linear (ViT-B/16 and the small ViT).

Oracles: the closed form x W^T + b + s [0; B_k A_k x; B_v A_v x]; parameter counts
2 r (d_in + d) per block; rank of the stacked [dK; dV] against 2r; Q rows bit-equal.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clmerge.backbones.kv_lora import KVLoRAQKV
from clmerge.backbones.lora import LoRAAdapter
from clmerge.backbones.vit import SmallViT
from clmerge.backbones.vit_b16 import build_vit_b16


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


@pytest.mark.parametrize("name,rank,per_block", [
    ("vit_b16", 10, 30_720),           # 2 x 10 x (768 + 768)
    ("vit_b16", 4, 12_288),
    ("small_vit", 4, 2 * 4 * (32 + 32)),
])
def test_parameter_count_per_block(name, rank, per_block):
    bb, lora, _, _ = _build(name, rank)
    assert lora.kv_only
    assert lora.n_parameters() == per_block * len(lora.layers)
    for m in lora.layers.values():
        shapes = {n: tuple(p.weight.shape) for n, p in m.named_modules()
                  if isinstance(p, nn.Linear) and n.startswith("lora_")}
        d = m.d
        assert shapes == {"lora_A.k": (rank, d), "lora_A.v": (rank, d),
                          "lora_B.k": (d, rank), "lora_B.v": (d, rank)}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_trained_kv_update_reaches_rank_2r_and_q_never_changes(name):
    rank = 3
    bb, lora, x, d = _build(name, rank)
    w0 = {k: v.detach().clone() for k, v in lora.base_weights().items()}
    qkv = next(iter(lora.layers.values()))
    q_out = {}
    qkv.register_forward_hook(lambda mod, inp, out: q_out.update(
        q=out[..., :d].detach(), ref=mod.base_layer(inp[0])[..., :d].detach()))
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
    m = KVLoRAQKV(nn.Linear(d_in, 3 * d), rank=r, alpha=3.0)
    with torch.no_grad():
        for p in m.lora_parameters():
            p.normal_()
    x = torch.randn(4, 7, d_in)
    W, b = m.base_layer.weight, m.base_layer.bias
    s = 3.0 / r
    dk = m.lora_B["k"].weight @ m.lora_A["k"].weight
    dv = m.lora_B["v"].weight @ m.lora_A["v"].weight
    dense = W + s * torch.cat([torch.zeros(d, d_in), dk, dv])
    assert torch.allclose(m(x), x @ dense.T + b, atol=1e-5)
    assert torch.allclose(m.delta_weight(), dense - W, atol=1e-6)
    branch = m(x) - m.base_layer(x)
    m.scaling = s * 1.5
    assert torch.allclose(m(x) - m.base_layer(x), 1.5 * branch, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_merge_round_trip(name):
    bb, lora, x, d = _build(name, 2)
    _train(bb, lora, x, steps=2)
    bb.eval()
    with torch.no_grad():
        before = bb(x)
    base = lora.base_weights()
    lora.write_base({k: base[k] + v for k, v in lora.delta().items()})   # fold, a = 1
    assert all(float(m.lora_B[p].weight.detach().abs().max()) == 0
               for m in lora.layers.values() for p in ("k", "v"))
    assert all(float(v.abs().max()) == 0 for v in lora.delta().values())
    with torch.no_grad():
        after = bb(x)
    assert torch.allclose(after, before, atol=1e-4)


def test_dense_delta_and_tensor_scale_are_differentiable():
    bb, lora, x, _ = _build("small_vit", 2)
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_(std=0.1)
    k = next(iter(lora.layers))
    lora.dense_delta(k).sum().backward()
    assert all(p.grad is not None for p in lora.layers[k].lora_parameters())
    alpha = torch.ones((), requires_grad=True)
    lora.set_scale_factor(alpha)
    (g,) = torch.autograd.grad(bb(x).pow(2).sum(), alpha)
    lora.set_scale_factor(1.0)
    assert torch.isfinite(g) and float(g) != 0.0


def test_kv_lora_rejects_what_it_cannot_wrap():
    with pytest.raises(ValueError, match="3\\*d outputs"):
        KVLoRAQKV(nn.Linear(4, 7), rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        KVLoRAQKV(nn.Linear(4, 6), rank=0, alpha=2)
    bb = SmallViT(embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="no module of the backbone matches"):
        LoRAAdapter(bb, r".*nothing", rank=2, alpha=2)
