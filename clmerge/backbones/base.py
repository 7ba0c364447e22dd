"""What every backbone provides to the rest of clmerge.

A backbone is a plain ``torch.nn.Module`` mapping an image batch in [0, 1] with the
benchmark's native shape (``(N, C, H, W)``; vectors for non-image benchmarks) to
features ``(N, out_dim)``. It resizes and normalises internally, so a benchmark never
needs to know which backbone reads it. It carries three attributes:

- ``out_dim``: feature width the per-experience heads read;
- ``lora_targets``: module names (peft ``target_modules`` form) that get LoRA;
- ``lora_kv_only``: when True the targets are fused qkv ``Linear`` layers; each is split
  into q, k, v Linears (:mod:`clmerge.backbones.qkv`) and peft's LoRA goes on k and v
  (separate LoRAs on the K and V rows) instead of on the whole layer;
- ``freeze_norm_stats``: when True, normalisation layers with running statistics
  (BatchNorm) stay in eval mode during training, so the running statistics, which are
  buffers outside any task vector, never drift.
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    out_dim: int
    lora_targets: list[str]
    lora_kv_only: bool = False
    freeze_norm_stats: bool = False

    def train(self, mode: bool = True):  # noqa: D401 - nn.Module API
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


class ResizeNormalize(nn.Module):
    """Resize to ``size`` (bilinear), repeat grey to ``channels``, then normalise."""

    def __init__(self, size: int, channels: int, mean, std):
        super().__init__()
        self.size = size
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear",
                                          align_corners=False)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std
