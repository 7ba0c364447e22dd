"""LoRA through peft, with one fresh adapter per experience folded into the base weights.

``LoRAAdapter`` injects a peft LoRA adapter (``inject_adapter_in_model``) into the
backbone once. The module tree then stays fixed for the whole stream, and so do the
parameter objects, which keeps optimizers and evaluators valid. Per experience:

- at the start the adapter is fresh: A re-drawn (peft's Kaiming init), B = 0, so the
  model equals the merged base;
- at the end :meth:`delta` returns the dense task vector per target weight,
  ``scaling * B @ A`` (never A and B separately); a merger decides the new base
  weights, :meth:`write_base` copies them in place and resets the adapter.

Tensor dicts are keyed by the adapted module's own weight name (``fc1.weight``,
``blocks.0.attn.qkv.weight``), which is also its key in the backbone's state dict
before wrapping, so a snapshot of the pretrained weights taken before wrapping lines up.
"""

from __future__ import annotations

import torch
from torch import nn

from clmerge.tensormath.tensordict import TensorDict, lora_delta

ADAPTER = "default"


class LoRAAdapter:
    """peft LoRA on ``backbone``'s ``target_modules`` (names or a regex string)."""

    def __init__(self, backbone: nn.Module, target_modules, rank: int, alpha: float,
                 dropout: float = 0.0):
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                            target_modules=target_modules, bias="none")
        inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
        self.layers: dict[str, nn.Module] = {
            f"{name}.weight": m for name, m in backbone.named_modules() if isinstance(m, LoraLayer)}
        if not self.layers:
            raise ValueError(f"no module of the backbone matches LoRA targets {target_modules!r}")
        self.base_scaling = {k: m.scaling[ADAPTER] for k, m in self.layers.items()}
        self.rank = rank

    # -- parameters ---------------------------------------------------------------
    def base_weights(self) -> dict[str, nn.Parameter]:
        """The (frozen) base weight parameter of every adapted layer."""
        return {k: m.get_base_layer().weight for k, m in self.layers.items()}

    def parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA parameters (A and B of every layer)."""
        out = []
        for m in self.layers.values():
            out += [m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight]
        return out

    # -- task vectors ---------------------------------------------------------------
    @torch.no_grad()
    def delta(self) -> TensorDict:
        """Dense task vector per target weight: base_scaling * B @ A."""
        return {k: lora_delta(m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight,
                              self.base_scaling[k]).detach().clone()
                for k, m in self.layers.items()}

    def set_scale_factor(self, factor: float) -> None:
        """Multiply every branch's output by ``factor`` (P&M's 1 + s*eps); 1 restores."""
        for k, m in self.layers.items():
            m.scaling[ADAPTER] = self.base_scaling[k] * factor

    @torch.no_grad()
    def reset(self) -> None:
        """A fresh adapter: A re-drawn with peft's init, B = 0 (a no-op branch)."""
        for m in self.layers.values():
            m.reset_lora_parameters(ADAPTER, True)
        self.set_scale_factor(1.0)

    @torch.no_grad()
    def write_base(self, weights: TensorDict) -> None:
        """Copy ``weights`` into the base weights in place, then reset the adapter."""
        base = self.base_weights()
        for k, v in weights.items():
            base[k].copy_(v)
        self.reset()
