"""ViT-B/16 pretrained on ImageNet-21K and fine-tuned on ImageNet-1K: the papers' backbone.

``VitB16`` wraps timm's ``vit_base_patch16_224.<tag>`` with no classifier
(``num_classes=0``; ``out_dim`` 768, the class token's final feature). The weights tag
(config ``vit_weights``) defaults to ``augreg_in21k_ft_in1k``; ``augreg2_in21k_ft_in1k``
is what ``vit_base_patch16_224`` resolves to in timm 1.0 (SD-LoRA's pinned timm 1.0.9),
``augreg_in21k`` / ``orig_in21k`` are ImageNet-21K-only weights (InfLoRA reads IN21K
weights). Every tag has the same architecture.

**Input.** The ``paper`` benchmarks (:mod:`clmerge.benchmarks.paper`) already resize,
crop and (config ``input_norm``) normalise to 3 x 224 x 224, so the backbone's
pre-processing is the identity for such input (it does not re-normalise). Other sizes
are resized bilinearly to 224. timm's pretrained config for these weights uses
mean = std = 0.5 (``input_norm=half``); the papers' codebases feed [0, 1] pixels
(``input_norm=none``).

**Weights**, first that applies:

1. ``weights=`` path or the env var ``CLMERGE_VIT_B16_WEIGHTS``: a state dict in a
   ``.safetensors``, ``.pth``/``.pt``/``.bin`` or timm/big_vision ``.npz`` file;
2. the copy in the local Hugging Face cache, if any;
3. the Hugging Face hub (``timm/vit_base_patch16_224.<tag>``) through timm, when
   ``huggingface.co`` is reachable.

Otherwise :class:`WeightsUnavailableError` names both ways. ``pretrained=False`` gives a
random init (tests); ``depth`` < 12 keeps the first ``depth`` blocks (of the pretrained
weights too), so tests can build a 2-block model.

**LoRA on K and V only.** timm fuses q, k, v into one ``Linear`` ``blocks.i.attn.qkv``
(output rows ``[q | k | v]``, 768 each). ``lora_targets`` selects exactly those
modules and ``lora_kv_only`` makes :class:`~clmerge.backbones.lora.LoRAAdapter` split
each into q, k, v Linears (:mod:`clmerge.backbones.qkv`) and put peft's rank-r LoRA on k
and on v (separate LoRAs on the K and V rows): A_k, B_k, A_v, B_v per block,
2 * r * (768 + 768) parameters (30,720 at r = 10), [dK; dV] of rank up to 2r, Q never
adapted. Task vectors and Fisher stay keyed
``blocks.i.attn.qkv.weight`` (full 2304 x 768 shape; the Q block of a delta is exactly
zero). Deviation to know: the P&M ``gaussian`` perturbation ablation draws noise on the
full qkv weight, Q rows included (restored after each step, so it never changes the
model).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import _load_weights, checkpoint_filter_fn
from torch import nn

from clmerge.backbones.base import Backbone
from clmerge.errors import MissingInputError

ARCH = "vit_base_patch16_224"
DEFAULT_TAG = "augreg_in21k_ft_in1k"
MODEL_NAME = f"{ARCH}.{DEFAULT_TAG}"
HUB_ID = f"timm/{MODEL_NAME}"
WEIGHTS_ENV = "CLMERGE_VIT_B16_WEIGHTS"
LORA_TARGETS = r".*attn\.qkv"   # regex (peft fullmatch): the fused qkv Linear of every block
EMBED_DIM = 768
IMG_SIZE = 224


class WeightsUnavailableError(MissingInputError, RuntimeError):
    """The pretrained ViT-B/16 weights are neither in a local file nor on the hub."""


def _missing_message(detail: str = "", tag: str = DEFAULT_TAG) -> str:
    return (f"ViT-B/16 pretrained weights not available{detail}: set {WEIGHTS_ENV} to a local "
            f"state-dict file (.safetensors/.pth/.npz of {ARCH}.{tag}), or give this machine "
            f"access to the Hugging Face hub (timm/{ARCH}.{tag}); use --set pretrained=false "
            f"for a random init")


class VitB16(Backbone):
    """timm ViT-B/16 (IN21K -> IN1K) without head; separate K and V LoRAs on ``attn.qkv``."""

    freeze_norm_stats = False  # LayerNorm only

    def __init__(self, depth: int = 12, tag: str = DEFAULT_TAG):
        super().__init__()
        if not 1 <= depth <= 12:
            raise ValueError(f"depth must be in 1..12, got {depth}")
        self.depth = depth
        self.tag = tag
        self.vit = timm.create_model(f"{ARCH}.{tag}", pretrained=False, num_classes=0,
                                     depth=depth)
        self.out_dim = EMBED_DIM
        self.lora_targets = LORA_TARGETS
        self.lora_kv_only = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[-2:] != (IMG_SIZE, IMG_SIZE):
            x = nn.functional.interpolate(x, size=(IMG_SIZE, IMG_SIZE), mode="bilinear",
                                          align_corners=False)
        return self.vit(x)


# ---------------------------------------------------------------------- weights
def _read_state_dict(path: Path) -> dict[str, torch.Tensor] | None:
    """State dict in ``path``; None for ``.npz`` (loaded by timm's own npz reader)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return None
    if suffix == ".safetensors":
        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "module"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
    return {k.removeprefix("module.").removeprefix("vit."): v for k, v in sd.items()}


def load_weights_file(model: VitB16, path: str | os.PathLike) -> None:
    """Load ``path`` into ``model`` (head weights dropped, blocks >= depth dropped)."""

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(_missing_message(f" (no file {path})", model.tag))
    sd = _read_state_dict(path)
    if sd is None:
        if model.depth != 12:
            raise ValueError("an .npz checkpoint can only be loaded at depth 12")
        _load_weights(model.vit, str(path))
        return
    sd = checkpoint_filter_fn(sd, model.vit)
    keep = {}
    for k, v in sd.items():
        if k.startswith("head."):
            continue
        if k.startswith("blocks.") and int(k.split(".")[1]) >= model.depth:
            continue
        keep[k] = v
    model.vit.load_state_dict(keep, strict=True)


def _hub_cached_file(tag: str = DEFAULT_TAG) -> str | None:
    try:
        # optional: the hub cache is only looked up when huggingface_hub is installed
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        p = try_to_load_from_cache(f"timm/{ARCH}.{tag}", fname)
        if isinstance(p, str) and os.path.isfile(p):
            return p
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def build_vit_b16(pretrained: bool = True, depth: int = 12,
                  weights: str | os.PathLike | None = None, hub: bool = True,
                  tag: str = DEFAULT_TAG) -> VitB16:
    """The ViT-B/16 backbone, with pretrained weights (see the module docstring).

    Args:
        pretrained: load the IN21K->IN1K weights; False gives timm's random init.
        depth: number of transformer blocks kept (12 = the full model).
        weights: local state-dict file; default: the env var ``CLMERGE_VIT_B16_WEIGHTS``.
        hub: allow the Hugging Face hub (and its local cache) as a source.
        tag: timm weights tag (``vit_base_patch16_224.<tag>``); a local file given by
            ``weights`` or the env var is loaded whatever the tag.

    Raises:
        WeightsUnavailableError: ``pretrained`` and no source is reachable.
    """
    model = VitB16(depth=depth, tag=tag)
    if not pretrained:
        return model
    path = weights or os.environ.get(WEIGHTS_ENV) or (hub and _hub_cached_file(tag)) or None
    if path:
        load_weights_file(model, path)
        return model
    if not (hub and _hub_reachable()):
        raise WeightsUnavailableError(_missing_message(" (no local file and no hub access)",
                                                       tag))
    try:
        full = timm.create_model(f"{ARCH}.{tag}", pretrained=True, num_classes=0)
    except Exception as e:  # network / hub errors of many kinds
        raise WeightsUnavailableError(_missing_message(f" ({type(e).__name__}: {e})",
                                                       tag)) from e
    sd = {k: v for k, v in full.state_dict().items()
          if not (k.startswith("blocks.") and int(k.split(".")[1]) >= depth)}
    model.vit.load_state_dict(sd, strict=True)
    return model
