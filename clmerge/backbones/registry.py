"""Backbone registry: name -> builder(input_shape, image_size, pretrained, **options).

Options a builder does not take are not passed (``vit_weights``: the ViT-B/16 weights tag).
"""

from __future__ import annotations

import inspect
from typing import Callable

from clmerge.backbones.base import Backbone
from clmerge.backbones.mlp import MLPBackbone
from clmerge.backbones.mobilenet import MobileNetV2Backbone
from clmerge.backbones.vit import build_small_vit, default_checkpoint_dir
from clmerge.backbones.vit_b16 import DEFAULT_TAG, build_vit_b16


def _mlp(input_shape, image_size, pretrained, **options):
    return MLPBackbone(input_shape)


def _mobilenet(input_shape, image_size, pretrained, **options):
    return MobileNetV2Backbone(image_size=image_size, pretrained=pretrained)


def _vit_letters(input_shape, image_size, pretrained, **options):
    return build_small_vit(pretrained=pretrained, checkpoint_dir=default_checkpoint_dir())


def _vit_b16(input_shape, image_size, pretrained, vit_weights=None, **options):
    return build_vit_b16(pretrained=pretrained, tag=vit_weights or DEFAULT_TAG)


BACKBONES: dict[str, tuple[Callable[..., Backbone], str]] = {
    "mlp": (_mlp, "2-layer MLP, random init (smoke profile, tests)"),
    "mobilenet_v2": (_mobilenet, "torchvision MobileNetV2, ImageNet-1k weights (offline copy); "
                                 "LoRA on pointwise convs"),
    "vit_letters": (_vit_letters, "timm ViT (28x28, patch 4) pretrained in-project on rendered "
                                  "letters; separate LoRAs on K and V of attn.qkv"),
    "vit_b16_in21k": (_vit_b16, "timm ViT-B/16 IN21K->IN1K (hub or CLMERGE_VIT_B16_WEIGHTS), "
                                "224 px; separate LoRAs on K and V of attn.qkv (paper profile)"),
}


def build_backbone(name: str, input_shape, image_size: int, pretrained: bool = True,
                   **options) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(name)
    builder = BACKBONES[name][0]
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return builder(input_shape, image_size, pretrained, **options)
