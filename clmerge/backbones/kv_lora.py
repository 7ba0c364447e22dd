"""Separate rank-r LoRAs on the K and V rows of a fused ``qkv`` Linear (InfLoRA-style).

timm's ViTs fuse the query, key and value projections of a block into one ``Linear``
``attn.qkv`` with output rows ``[q | k | v]`` (``d`` each). The papers' adapter
(P&M arXiv 2505.22389 and the codebases its numbers come from: InfLoRA arXiv
2404.00228, SD-LoRA, ICLR 2025) is one LoRA on K and one on V, each of rank r
with its own A and B:

    k = W_k x + s * B_k A_k x,     v = W_v x + s * B_v A_v x,     q = W_q x,

with A_k, A_v of shape (r, d_in), B_k, B_v of shape (d, r) and s = alpha / r. Per block
that is 2 * r * (d_in + d) trainable parameters (30,720 for ViT-B/16 at r = 10), and
the stacked update [dK; dV] = s [B_k A_k; B_v A_v] has rank up to 2r. (A single LoRA
on the fused layer with the Q rows of B masked would share A between K and V and cap
the rank of [dK; dV] at r.)

:class:`KVLoRAQKV` replaces the ``qkv`` Linear in place and keeps it as
``base_layer`` (state-dict keys ``...attn.qkv.base_layer.weight``, as peft names them).
Each factor is an ``nn.Linear`` without bias: ``lora_A["k"]``, ``lora_B["k"]``,
``lora_A["v"]``, ``lora_B["v"]``, so code that hooks ``nn.Linear`` modules (per-sample
gradients) sees them, and the forward pass calls ``base_layer`` on the input itself.
Its dense task vector (:meth:`KVLoRAQKV.delta_weight`) has the fused weight's shape
(3d, d_in) with the Q rows exactly zero, so mergers and Fishers stay keyed by
``...attn.qkv.weight`` and folding it never changes W_q.

Initialisation (peft's default; for A also ``nn.Linear``'s own): A ~ Kaiming-uniform
(a = sqrt(5)), drawn K first then V from torch's global generator; B = 0, so a fresh
branch is a no-op.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

PARTS = ("k", "v")


class KVLoRAQKV(nn.Module):
    """A fused qkv ``Linear`` plus separate rank-``rank`` LoRA branches on K and V."""

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"K/V LoRA wraps an nn.Linear, got {type(base_layer).__name__}")
        if base_layer.out_features % 3:
            raise ValueError(f"a fused qkv Linear has 3*d outputs, got {base_layer.out_features}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base_layer = base_layer
        self.d = base_layer.out_features // 3
        self.rank = rank
        self.scaling = alpha / rank
        w = base_layer.weight
        kw = dict(bias=False, device=w.device, dtype=w.dtype)
        self.lora_A = nn.ModuleDict({p: nn.Linear(base_layer.in_features, rank, **kw)
                                     for p in PARTS})
        self.lora_B = nn.ModuleDict({p: nn.Linear(rank, self.d, **kw) for p in PARTS})
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    def get_base_layer(self) -> nn.Linear:
        return self.base_layer

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        """A re-drawn (Kaiming-uniform, a = sqrt(5); K then V), B = 0."""
        for p in PARTS:
            nn.init.kaiming_uniform_(self.lora_A[p].weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B[p].weight)

    def lora_parameters(self) -> list[nn.Parameter]:
        """[A_k, B_k, A_v, B_v]."""
        return [m.weight for p in PARTS for m in (self.lora_A[p], self.lora_B[p])]

    def delta_weight(self, scaling=None) -> torch.Tensor:
        """Dense update of the fused weight, differentiable: s * [0; B_k A_k; B_v A_v]."""
        s = self.scaling if scaling is None else scaling
        w = self.base_layer.weight
        kv = [self.lora_B[p].weight @ self.lora_A[p].weight for p in PARTS]
        return s * torch.cat([torch.zeros(self.d, w.shape[1], dtype=w.dtype, device=w.device),
                              *kv], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        h = self.lora_dropout(x)
        q, k, v = out.split(self.d, dim=-1)
        dk = self.lora_B["k"](self.lora_A["k"](h))
        dv = self.lora_B["v"](self.lora_A["v"](h))
        return torch.cat([q, k + self.scaling * dk.to(k.dtype),
                          v + self.scaling * dv.to(v.dtype)], dim=-1)

    def extra_repr(self) -> str:
        return f"d={self.d}, rank={self.rank}, scaling={self.scaling}"


def inject_kv_lora(model: nn.Module, target_modules: str, rank: int, alpha: float,
                   dropout: float = 0.0) -> dict[str, KVLoRAQKV]:
    """Replace every ``nn.Linear`` whose full name ``re.fullmatch``-es ``target_modules``
    by a :class:`KVLoRAQKV`; returns them by module name."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and re.fullmatch(target_modules, n)]
    out = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = KVLoRAQKV(getattr(parent, child), rank, alpha, dropout)
        setattr(parent, child, wrapped)
        out[name] = wrapped
    return out
