"""A small timm Vision Transformer backbone, pretrained in-project on rendered letters.

``SmallViT`` reads 28 x 28 grey images in patches of 4 x 4 (49 tokens). Inputs of any
other size (sklearn digits are 8 x 8) are resized bilinearly to 28 x 28 first, then
normalised to [-1, 1] (mean 0.5, std 0.5), all inside the module.

The adapter is the papers' (P&M arXiv 2505.22389): separate rank-r LoRAs on the K and
V rows of every block's fused ``attn.qkv`` Linear (``lora_kv_only``: the layer is split
into q, k, v Linears, :mod:`clmerge.backbones.qkv`, and peft's LoRA goes on k and v);
Q, the attention output ``proj`` and the MLPs are never adapted. ``lora_targets`` is a *regex string* that must ``re.fullmatch`` the full
module name (``.*attn\\.qkv``); code that needs an iterable of names should match
module names against it with ``re.fullmatch``.

``build_small_vit(pretrained=True, checkpoint_dir)`` returns the backbone with the
letters checkpoint of ``checkpoint_dir`` (the registry hands it the committed one,
``data/checkpoints/vit_letters.safetensors``) loaded; its architecture is taken from the
checkpoint's json so the two always agree. A missing or corrupt checkpoint (sha256 of the
file against its json) raises :class:`CheckpointMissingError` naming the command that
rebuilds it (:mod:`clmerge.pretrain.recipe`, a few CPU minutes); the backbone never
trains its own weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from clmerge.backbones.base import Backbone, ResizeNormalize
from clmerge.errors import MissingInputError
from clmerge.paths import data_dir

LORA_TARGETS = r".*attn\.qkv"   # fused qkv Linear of every block (K/V LoRAs)

CHECKPOINT_NAME = "vit_letters"


def default_checkpoint_dir() -> Path:
    """``<data>/checkpoints`` (:func:`clmerge.paths.data_dir`)."""
    return data_dir() / "checkpoints"


class CheckpointMissingError(MissingInputError, FileNotFoundError):
    """The letters checkpoint is missing or does not match its json's sha256."""

    def __str__(self) -> str:
        return self.args[0] if self.args else super().__str__()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_paths(out_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(safetensors, json) of the letters checkpoint in ``out_dir`` (default
    :func:`default_checkpoint_dir`)."""
    d = Path(out_dir) if out_dir is not None else default_checkpoint_dir()
    return d / f"{CHECKPOINT_NAME}.safetensors", d / f"{CHECKPOINT_NAME}.json"


def verify_vit_letters_checkpoint(out_dir: str | os.PathLike | None = None
                                  ) -> tuple[bool, str]:
    """``(ok, reason)``: whether the checkpoint pair exists and the sha256 matches."""
    st_path, meta_path = checkpoint_paths(out_dir)
    if not st_path.is_file():
        return False, f"{st_path} is missing"
    if not meta_path.is_file():
        return False, f"{meta_path} is missing"
    try:
        expected = json.loads(meta_path.read_text())["sha256"]
    except (ValueError, KeyError) as e:
        return False, f"{meta_path} is unreadable ({e!r})"
    actual = sha256_file(st_path)
    if actual != expected:
        return False, (f"sha256 mismatch for {st_path}: file {actual[:12]}..., "
                       f"json {expected[:12]}...")
    return True, "ok"


class SmallViT(Backbone):
    """timm ``VisionTransformer`` on 28 x 28 x 1 inputs, patch 4, no head.

    ``global_pool='avg'`` (default) averages the patch tokens and uses no class token;
    ``'token'`` uses a class token. ``out_dim == embed_dim``.
    """

    freeze_norm_stats = False  # LayerNorm only: no running statistics

    def __init__(self, embed_dim: int = 128, depth: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, global_pool: str = "avg", img_size: int = 28,
                 patch_size: int = 4):
        super().__init__()
        if global_pool not in ("avg", "token"):
            raise ValueError("global_pool must be 'avg' or 'token'")
        self.config = dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                           mlp_ratio=float(mlp_ratio), global_pool=global_pool,
                           img_size=img_size, patch_size=patch_size)
        self.prep = ResizeNormalize(img_size, 1, mean=[0.5], std=[0.5])
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=1, num_classes=0,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            global_pool=global_pool, class_token=(global_pool == "token"),
        )
        self.out_dim = embed_dim
        self.lora_targets = LORA_TARGETS
        self.lora_kv_only = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (N, H, W) -> (N, 1, H, W)
            x = x.unsqueeze(1)
        return self.vit(self.prep(x.float()))


def _arch_kwargs(recipe: dict) -> dict:
    keys = ("embed_dim", "depth", "num_heads", "mlp_ratio", "global_pool")
    return {k: recipe[k] for k in keys if k in recipe}


def build_small_vit(pretrained: bool = True, checkpoint_dir: str | os.PathLike | None = None
                    ) -> SmallViT:
    """The letters-pretrained ``SmallViT`` (or a fresh one with the same architecture).

    With ``pretrained=True`` the checkpoint in ``checkpoint_dir`` (default
    ``data/checkpoints``) is verified against its json sha256 and loaded;
    :class:`CheckpointMissingError` when it is missing or does not match. With
    ``pretrained=False`` the module is randomly initialised (by the caller's torch RNG
    state), using the checkpoint's architecture when its json is present and
    ``SmallViT``'s defaults (the recipe's) otherwise.
    """
    st_path, meta_path = checkpoint_paths(checkpoint_dir)
    if not pretrained:
        arch = {}
        if meta_path.is_file():
            try:
                arch = _arch_kwargs(json.loads(meta_path.read_text())["recipe"])
            except (ValueError, KeyError):
                arch = {}
        return SmallViT(**arch)

    ok, reason = verify_vit_letters_checkpoint(checkpoint_dir)
    if not ok:
        raise CheckpointMissingError(
            f"the ViT letters checkpoint is not usable ({reason}); rebuild it with "
            f"`python -m clmerge.pretrain.recipe --ensure --out {st_path.parent}` "
            f"(a few CPU minutes)")
    meta = json.loads(meta_path.read_text())
    model = SmallViT(**_arch_kwargs(meta["recipe"]))
    model.load_state_dict(load_file(str(st_path)), strict=True)
    return model
