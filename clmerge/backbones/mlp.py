"""A small MLP backbone (random init) for the ``smoke`` profile and unit tests."""

from __future__ import annotations

import math

from torch import nn

from clmerge.backbones.base import Backbone


class MLPBackbone(Backbone):
    """Flatten -> Linear(in, width) -> ReLU -> Linear(width, width) -> ReLU.

    LoRA targets both linear layers (``fc1``, ``fc2``).
    """

    def __init__(self, input_shape, width: int = 64):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(math.prod(input_shape), width)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(width, width)
        self.act2 = nn.ReLU()
        self.out_dim = width
        self.lora_targets = ["fc1", "fc2"]

    def forward(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(self.flatten(x)))))
