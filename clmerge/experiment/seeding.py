"""One seeding function for everything a run draws at random."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


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


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the data loaders: seed python, numpy and torch in a worker.

    The loader gives worker ``i`` the torch seed ``base_seed + i``, ``base_seed`` drawn
    from the loader's generator (the run's); python's and numpy's generators get the same
    seed here, so random augmentations in workers are reproducible for a given seed and
    worker count.
    """
    seed = torch.initial_seed()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
