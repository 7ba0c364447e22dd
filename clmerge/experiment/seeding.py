"""One seeding function for everything a run draws at random."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from clmerge.benchmarks.loaders import seed_worker  # noqa: F401 (the loaders' worker seeding)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a torch Generator seeded
    with ``seed`` for data loaders. On CPU, clmerge runs are then bit-identical."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
