"""LoRA, with one fresh adapter per experience folded into the base weights.

``LoRAAdapter`` injects the adapter into the backbone once: a peft LoRA
(``inject_adapter_in_model``) on every target module, or, for backbones with
``lora_kv_only`` (the ViTs), separate rank-r LoRAs on the K and V rows of the fused
``attn.qkv`` Linear (:mod:`clmerge.backbones.kv_lora`; the papers' adapter). The module tree then stays fixed for the whole stream, and so do the
parameter objects, which keeps optimizers and evaluators valid. Per experience:

- at the start the adapter is fresh: A re-drawn (Kaiming init), B = 0, so the
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
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from clmerge.backbones.kv_lora import inject_kv_lora
from clmerge.tensormath.tensordict import TensorDict, lora_delta

ADAPTER = "default"


class LoRAAdapter:
    """LoRA on ``backbone``'s ``target_modules`` (names or a regex string).

    ``kv_only`` (default: the backbone's ``lora_kv_only`` attribute, else False) puts
    separate K and V LoRAs on fused qkv targets (a regex string) instead of peft's LoRA.
    """

    def __init__(self, backbone: nn.Module, target_modules, rank: int, alpha: float,
                 dropout: float = 0.0, kv_only: bool | None = None):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.kv_only = bool(getattr(backbone, "lora_kv_only", False) if kv_only is None
                            else kv_only)
        if self.kv_only:
            self.layers: dict[str, nn.Module] = {
                f"{name}.weight": m for name, m in
                inject_kv_lora(backbone, target_modules, rank, alpha, dropout).items()}
        else:
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                target_modules=target_modules, bias="none")
            inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
            self.layers = {f"{name}.weight": m for name, m in backbone.named_modules()
                           if isinstance(m, LoraLayer)}
        if not self.layers:
            raise ValueError(f"no module of the backbone matches LoRA targets {target_modules!r}")
        self.base_scaling = {k: self._get_scaling(m) for k, m in self.layers.items()}
        self.rank = rank

    # -- the two layer kinds ----------------------------------------------------------
    def _get_scaling(self, m):
        return m.scaling if self.kv_only else m.scaling[ADAPTER]

    def _set_scaling(self, m, value) -> None:
        if self.kv_only:
            m.scaling = value
        else:
            m.scaling[ADAPTER] = value

    # -- parameters ---------------------------------------------------------------
    def base_weights(self) -> dict[str, nn.Parameter]:
        """The (frozen) base weight parameter of every adapted layer."""
        return {k: m.get_base_layer().weight for k, m in self.layers.items()}

    def parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA parameters (A and B of every layer; K/V: A_k, B_k, A_v, B_v)."""
        out = []
        for m in self.layers.values():
            out += (m.lora_parameters() if self.kv_only
                    else [m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight])
        return out

    def n_parameters(self) -> int:
        """Number of trainable LoRA parameters."""
        return sum(p.numel() for p in self.parameters())

    # -- task vectors ---------------------------------------------------------------
    def dense_delta(self, key: str, scaling=None) -> torch.Tensor:
        """Dense update of one target weight, differentiable through A and B:
        ``scaling * B @ A`` (K/V: ``scaling * [0; B_k A_k; B_v A_v]``); ``scaling``
        defaults to the adapter's own."""
        m = self.layers[key]
        s = self.base_scaling[key] if scaling is None else scaling
        if self.kv_only:
            return m.delta_weight(s)
        return lora_delta(m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight, s)

    @torch.no_grad()
    def delta(self) -> TensorDict:
        """Dense task vector per target weight: base_scaling * B @ A (K/V: Q rows 0)."""
        return {k: self.dense_delta(k).detach().clone() for k in self.layers}

    def set_scale_factor(self, factor) -> None:
        """Multiply every branch's output by ``factor`` (P&M's 1 + s*eps); 1 restores.
        ``factor`` may be a tensor that requires grad (curvature along the branch)."""
        for k, m in self.layers.items():
            self._set_scaling(m, self.base_scaling[k] * factor)

    @torch.no_grad()
    def reset(self) -> None:
        """A fresh adapter: A re-drawn (Kaiming-uniform), B = 0 (a no-op branch)."""
        for m in self.layers.values():
            if self.kv_only:
                m.reset_lora_parameters()
            else:
                m.reset_lora_parameters(ADAPTER, True)
        self.set_scale_factor(1.0)

    @torch.no_grad()
    def write_base(self, weights: TensorDict) -> None:
        """Copy ``weights`` into the base weights in place, then reset the adapter."""
        base = self.base_weights()
        for k, v in weights.items():
            base[k].copy_(v)
        self.reset()
