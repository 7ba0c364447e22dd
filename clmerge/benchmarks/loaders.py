"""Data loaders of a run's experiences, all drawing from the run's one generator.

:class:`Loaders` holds what every loader of a run shares: the batch size, the device the
batches go to, the worker count and the torch generator that shuffles training data and
seeds workers (a loader draws its workers' base seed from it even with no worker, so the
order in which loaders are made is part of a run's random stream). Workers are seeded
by :func:`seed_worker`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


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


@dataclass
class Loaders:
    """The loaders of one run's experiences.

    Attributes:
        batch_size: samples per batch unless a call says otherwise.
        device: where :meth:`batches` puts each batch (``cuda...``: pinned memory).
        num_workers: worker processes (0: a single-process loader).
        generator: the run's torch generator of the training loaders.
    """

    batch_size: int
    device: str
    num_workers: int
    generator: torch.Generator

    def loader(self, experience, batch_size=None, shuffle=True):
        """Loader of an experience's training data (eval transforms), shuffled by the run's
        generator; ``num_workers`` persistent workers seeded by :func:`seed_worker`,
        pinned memory on CUDA. With 0 workers: a plain single-process loader."""
        workers = self.num_workers
        parallel = (dict(num_workers=workers, persistent_workers=True,
                         worker_init_fn=seed_worker) if workers > 0 else {})
        return torch.utils.data.DataLoader(
            experience.dataset.eval(), batch_size=batch_size or self.batch_size,
            shuffle=shuffle, generator=self.generator,
            pin_memory=self.device.startswith("cuda"), **parallel)

    def batches(self, experience, indices=None, batch_size=None):
        """(x, y) batches of an experience's training data, fixed order, on the device;
        with ``indices``, only those samples, in that order."""
        if indices is None:
            loader = self.loader(experience, batch_size=batch_size, shuffle=False)
        else:
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(experience.dataset.eval(), list(indices)),
                batch_size=batch_size or self.batch_size, shuffle=False,
                pin_memory=self.device.startswith("cuda"))
        for x, y, *_ in loader:
            yield x.to(self.device), y.to(self.device)
