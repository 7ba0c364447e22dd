"""LoRA by peft, with one fresh adapter per experience folded into the base weights.

``LoRAAdapter`` injects peft's LoRA (``inject_adapter_in_model``) into the backbone
once, on every target module; for backbones with ``lora_kv_only`` (the ViTs) the
targets are fused ``attn.qkv`` Linears, which are first split into q, k, v Linears
(:class:`clmerge.backbones.qkv.SplitQKV`, same parameters, same forward) and get peft's
LoRA on ``k`` and on ``v`` only: the papers' adapter, separate rank-r A and B for K and
for V. The module tree then stays fixed for the whole stream, and so do the parameter
objects, which keeps optimizers and evaluators valid. peft's own functions
(``get_peft_model_state_dict``, ``set_peft_model_state_dict``) save and load the
adapter of the backbone. Per experience:

- at the start the adapter is fresh: A re-drawn (Kaiming init), B = 0, so the
  model equals the merged base;
- at the end :meth:`delta` returns the dense task vector per target weight,
  ``scaling * B @ A`` (never A and B separately); a merger decides the new base
  weights, :meth:`write_base` copies them in place and resets the adapter.

Tensor dicts are keyed by the adapted module's own weight name (``fc1.weight``,
``blocks.0.attn.qkv.weight``), which is also its key in the backbone's state dict
before wrapping, so a snapshot of the pretrained weights taken before wrapping lines up.
For a split qkv the key is the fused weight's, and the task vector has its shape
(3d, d_in): ``scaling * [0; B_k A_k; B_v A_v]``, the Q rows exactly zero, so folding it
never changes W_q, and the stacked [dK; dV] has rank up to 2r.
"""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from clmerge.backbones.qkv import split_qkv
from clmerge.tensormath.tensordict import TensorDict, lora_delta

ADAPTER = "default"
KV_PARTS = ("k", "v")


class LoRAAdapter:
    """peft's LoRA on ``backbone``'s ``target_modules`` (names or a regex string).

    ``kv_only`` (default: the backbone's ``lora_kv_only`` attribute, else False): the
    targets (a regex string, ``re.fullmatch`` on the full module name) are fused qkv
    Linears; each is split and gets peft's LoRA on its ``k`` and ``v`` children.

    ``layers`` maps each key to the module whose base weight it names: the peft
    ``LoraLayer`` itself, or the :class:`~clmerge.backbones.qkv.SplitQKV`; ``parts``
    maps it to the peft layers that adapt that weight (one, or K's and V's).

    Initialisation of the K/V factors at construction, from torch's global generator,
    block by block: each factor first gets nn.Linear's default initialisation
    (Kaiming-uniform, a = sqrt(5)) in the order A_k, A_v, B_k, B_v, then peft's LoRA
    init (``init_lora_weights=True``: A Kaiming-uniform, a = sqrt(5), B = 0), K then V.
    peft's layer constructors draw their factors in another order; they run under a
    forked generator and the draws above are made explicitly, since the draw order is
    part of what a seed reproduces. Injection leaves the ``requires_grad`` flags of the
    backbone's own parameters as they were. LoRA dropout, when > 0, draws separate
    masks for K and V (peft's dropout per layer).
    """

    def __init__(self, backbone: nn.Module, target_modules, rank: int, alpha: float,
                 dropout: float = 0.0, kv_only: bool | None = None):
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.kv_only = bool(getattr(backbone, "lora_kv_only", False) if kv_only is None
                            else kv_only)
        if self.kv_only:
            fused = split_qkv(backbone, target_modules)
            if not fused:
                raise ValueError(
                    f"no module of the backbone matches LoRA targets {target_modules!r}")
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                                target_modules=rf"(?:{target_modules})\.(?:k|v)")
            flags = [(p, p.requires_grad) for p in backbone.parameters()]
            with torch.random.fork_rng(devices=[]):
                inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
            for p, flag in flags:
                p.requires_grad_(flag)
            self.layers: dict[str, nn.Module] = {f"{n}.weight": m for n, m in fused.items()}
            self.parts = {k: [getattr(m, p) for p in KV_PARTS] for k, m in self.layers.items()}
            self._initial_kv_draws()
        else:
            config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                target_modules=target_modules, bias="none")
            inject_adapter_in_model(config, backbone, adapter_name=ADAPTER)
            self.layers = {f"{name}.weight": m for name, m in backbone.named_modules()
                           if isinstance(m, LoraLayer)}
            self.parts = {k: [m] for k, m in self.layers.items()}
        if not self.layers:
            raise ValueError(f"no module of the backbone matches LoRA targets {target_modules!r}")
        self.base_scaling = {k: parts[0].scaling[ADAPTER] for k, parts in self.parts.items()}
        self.rank = rank

    @torch.no_grad()
    def _initial_kv_draws(self) -> None:
        for parts in self.parts.values():
            for factor in ("lora_A", "lora_B"):
                for m in parts:
                    nn.init.kaiming_uniform_(getattr(m, factor)[ADAPTER].weight, a=math.sqrt(5))
            for m in parts:
                m.reset_lora_parameters(ADAPTER, True)

    # -- parameters ---------------------------------------------------------------
    def base_weights(self) -> dict[str, nn.Parameter]:
        """The (frozen) base weight parameter of every adapted layer."""
        return {k: m.get_base_layer().weight for k, m in self.layers.items()}

    def parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA parameters (A and B of every layer; K/V: A_k, B_k, A_v, B_v)."""
        return [w for parts in self.parts.values() for m in parts
                for w in (m.lora_A[ADAPTER].weight, m.lora_B[ADAPTER].weight)]

    def n_parameters(self) -> int:
        """Number of trainable LoRA parameters."""
        return sum(p.numel() for p in self.parameters())

    # -- task vectors ---------------------------------------------------------------
    def dense_delta(self, key: str, scaling=None) -> torch.Tensor:
        """Dense update of one target weight, differentiable through A and B:
        ``scaling * B @ A`` (K/V: ``scaling * [0; B_k A_k; B_v A_v]``); ``scaling``
        defaults to the adapter's own."""
        s = self.base_scaling[key] if scaling is None else scaling
        parts = self.parts[key]
        if not self.kv_only:
            return lora_delta(parts[0].lora_A[ADAPTER].weight, parts[0].lora_B[ADAPTER].weight, s)
        w = self.layers[key].weight
        kv = [m.lora_B[ADAPTER].weight @ m.lora_A[ADAPTER].weight for m in parts]
        return s * torch.cat([torch.zeros(kv[0].shape[0], w.shape[1], dtype=w.dtype,
                                          device=w.device), *kv], dim=0)

    @torch.no_grad()
    def delta(self) -> TensorDict:
        """Dense task vector per target weight: base_scaling * B @ A (K/V: Q rows 0)."""
        return {k: self.dense_delta(k).detach().clone() for k in self.layers}

    def set_scale_factor(self, factor) -> None:
        """Multiply every branch's output by ``factor`` (P&M's 1 + s*eps); 1 restores.
        ``factor`` may be a tensor that requires grad (curvature along the branch)."""
        for k, parts in self.parts.items():
            for m in parts:
                m.scaling[ADAPTER] = self.base_scaling[k] * factor

    @torch.no_grad()
    def reset(self) -> None:
        """A fresh adapter: A re-drawn (Kaiming-uniform), B = 0 (a no-op branch); layer by
        layer (K then V)."""
        for parts in self.parts.values():
            for m in parts:
                m.reset_lora_parameters(ADAPTER, True)
        self.set_scale_factor(1.0)

    @torch.no_grad()
    def write_base(self, weights: TensorDict) -> None:
        """Copy ``weights`` into the base weights in place, then reset the adapter."""
        base = self.base_weights()
        for k, v in weights.items():
            base[k].copy_(v)
        self.reset()
