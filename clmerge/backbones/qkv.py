"""timm's fused ``qkv`` Linear as three ``nn.Linear`` (q, k, v), so peft can adapt K and V.

timm's ViTs fuse the query, key and value projections of a block into one ``Linear``
``attn.qkv`` of weight W (3d, d_in) and bias b (3d), output rows ``[q | k | v]``.
:class:`SplitQKV` replaces it in place and keeps its interface and its parameters:

- ``weight`` and ``bias`` are the fused layer's own ``Parameter`` objects, so the state
  dict keys (``...attn.qkv.weight``, ``...attn.qkv.bias``), the parameter names and every
  reference to them stay what they were;
- its children ``q``, ``k``, ``v`` are :class:`RowSlice` Linears whose ``weight`` and
  ``bias`` are the row blocks W[0:d], W[d:2d], W[2d:3d] (and of b) of those parameters,
  as views (no copy, no parameter of their own): writing the fused weight writes them,
  and peft's in-place merge into one of them writes the fused weight;
- ``forward(x)`` computes the three projections with the fused layer's own operation
  (one ``F.linear`` with W and b: the same result, bit for bit, as the fused Linear) and
  passes each child its rows, ``cat([q(x, rows=q0), k(x, rows=k0), v(x, rows=v0)])``.
  An unwrapped child returns its rows as they are; a child that peft wrapped
  (``peft.tuners.lora.Linear``) adds its LoRA branch to them, by peft's own forward,
  since peft hands extra arguments on to the layer it wraps. Called alone, a child
  computes ``F.linear(x, W_rows, b_rows)`` (plus its branch).

The papers' adapter (P&M arXiv 2505.22389; InfLoRA arXiv 2404.00228; SD-LoRA, ICLR
2025) is then peft's LoRA on ``k`` and on ``v``, each rank r with its own A and B::

    q = W_q x + b_q,   k = W_k x + b_k + s B_k A_k x,   v = W_v x + b_v + s B_v A_v x,

s = alpha / r (:class:`clmerge.backbones.lora.LoRAAdapter` puts it there).
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

PARTS = ("q", "k", "v")


class RowSlice(nn.Linear):
    """Rows ``start:stop`` of another Linear's weight and bias, as a Linear (views).

    It owns no parameter: ``weight`` and ``bias`` are read from ``source`` at every
    access, so they follow its parameters (values, device, dtype, ``functional_call``).
    """

    def __init__(self, source: nn.Linear, start: int, stop: int):
        nn.Module.__init__(self)   # not nn.Linear's: no parameters of its own
        self.in_features = source.in_features
        self.out_features = stop - start
        self.rows = slice(start, stop)
        self._source = (source,)   # a tuple, so the parent is not registered as a child

    @property
    def weight(self) -> torch.Tensor:
        return self._source[0].weight[self.rows]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self._source[0].bias
        return None if b is None else b[self.rows]

    def reset_parameters(self) -> None:
        raise RuntimeError("a RowSlice holds views of another Linear's parameters; "
                           "initialise that Linear instead")

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x W_rows^T + b_rows``; ``rows`` is that output already computed (returned as is)."""
        return F.linear(x, self.weight, self.bias) if rows is None else rows


class SplitQKV(nn.Linear):
    """A fused qkv ``Linear`` (3d outputs) with its q, k, v row blocks as child Linears."""

    def __init__(self, fused: nn.Linear):
        if not isinstance(fused, nn.Linear):
            raise TypeError(f"SplitQKV splits an nn.Linear, got {type(fused).__name__}")
        if fused.out_features % 3:
            raise ValueError(f"a fused qkv Linear has 3*d outputs, got {fused.out_features}")
        nn.Module.__init__(self)
        self.in_features = fused.in_features
        self.out_features = fused.out_features
        self.register_parameter("weight", fused.weight)   # the same Parameter objects
        self.register_parameter("bias", fused.bias)
        self.d = fused.out_features // 3
        for i, part in enumerate(PARTS):
            setattr(self, part, RowSlice(self, i * self.d, (i + 1) * self.d))

    def get_base_layer(self) -> nn.Linear:
        """The module whose ``weight`` is the fused weight: this one."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        rows = out.split(self.d, dim=-1)
        return torch.cat([getattr(self, p)(x, rows=r) for p, r in zip(PARTS, rows)], dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, d={self.d}, bias={self.bias is not None}"


def split_qkv(model: nn.Module, target_modules: str) -> dict[str, SplitQKV]:
    """Replace every ``nn.Linear`` whose full name ``re.fullmatch``-es ``target_modules``
    by a :class:`SplitQKV` of it; returns them by module name (already split ones too)."""
    out = {}
    for name, m in list(model.named_modules()):
        if (not isinstance(m, nn.Linear) or isinstance(m, RowSlice)
                or not re.fullmatch(target_modules, name)):
            continue
        if not isinstance(m, SplitQKV):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            m = SplitQKV(m)
            setattr(parent, child, m)
        out[name] = m
    return out
