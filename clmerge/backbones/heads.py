"""The shared classifier protocol: one linear head per experience, never merged.

Class-incremental, no task id at test time (the InfLoRA / SD-LoRA convention that P&M
follows). ``HeadedModel`` returns logits over *all* classes of the stream, in global
class ids, with the columns of inactive heads set to -inf:

- training experience t: only head t is active, so cross-entropy with the global
  label is exactly cross-entropy over head t's classes;
- evaluation after experience t: heads 0..t are active and argmax runs over every seen
  class (class-incremental accuracy); restricting the argmax to one experience's
  columns gives task-incremental accuracy (task id given).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class CosineLinear(nn.Module):
    """``scale * normalize(x) @ normalize(W).T``: cosine logits with a fixed scale.

    ``W`` starts like ``nn.Linear``'s weight (Kaiming-uniform), so a run draws as many
    random numbers for its heads as with linear heads (the bias draw is kept and unused).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 16.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.scale = float(scale)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A fresh draw, with the random numbers of construction (as ``nn.Linear``'s)."""
        init = nn.Linear(self.in_features, self.out_features)
        with torch.no_grad():
            self.weight.copy_(init.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.linear(nn.functional.normalize(x, dim=-1),
                                                 nn.functional.normalize(self.weight, dim=-1))


HEAD_TYPES = ("linear", "cosine")


def make_head(kind: str, in_features: int, out_features: int, scale: float = 16.0) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "cosine":
        return CosineLinear(in_features, out_features, scale)
    raise ValueError(f"head must be one of {', '.join(HEAD_TYPES)}; got {kind!r}")


class HeadedModel(nn.Module):
    def __init__(self, backbone: nn.Module, classes_per_exp: Sequence[Sequence[int]],
                 n_classes: int, head: str = "linear", scale: float = 16.0):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(make_head(head, backbone.out_dim, len(c), scale)
                                   for c in classes_per_exp)
        self.classes_per_exp = [list(c) for c in classes_per_exp]
        self.n_classes = n_classes
        self.active_heads: list[int] = [0]

    def set_active_heads(self, heads: Sequence[int]) -> None:
        self.active_heads = sorted(int(h) for h in heads)

    def logits_from_features(self, feats: torch.Tensor,
                             heads: Sequence[int] | None = None) -> torch.Tensor:
        heads = self.active_heads if heads is None else heads
        cols = [c for h in heads for c in self.classes_per_exp[h]]
        index = torch.tensor(cols, device=feats.device)
        out = torch.cat([self.heads[h](feats) for h in heads], dim=1)
        full = feats.new_full((feats.shape[0], self.n_classes), float("-inf"))
        return full.index_copy(1, index, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.backbone(x))
