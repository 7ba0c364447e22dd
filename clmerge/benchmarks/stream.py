"""Class-incremental Avalanche streams built from in-memory arrays.

Every benchmark returns a :class:`Stream`: the Avalanche scenario (built with the
``class_incremental_benchmark`` API) plus the ordered class split that the head protocol
needs (one head per experience, over that experience's classes in stream order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import TensorDataset

from clmerge.avalanche_api import CLScenario, class_incremental_benchmark


class LabelledTensors(TensorDataset):
    """A ``TensorDataset`` of (x, y) that exposes ``targets`` as Avalanche expects."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__(x, y)
        self.targets = y.tolist()


@dataclass
class Stream:
    """A class-incremental stream and its class split.

    Attributes:
        name: registry name of the benchmark.
        scenario: the Avalanche ``CLScenario`` with ``train`` and ``test`` streams.
        classes_per_exp: for each experience, its class ids in head order.
        n_classes: total number of classes.
        input_shape: shape of one input (C, H, W) for images, (D,) for vectors.
        is_image: whether inputs are images in [0, 1].
    """

    name: str
    scenario: CLScenario
    classes_per_exp: list[list[int]]
    n_classes: int
    input_shape: tuple[int, ...]
    is_image: bool
    info: dict = field(default_factory=dict)

    @property
    def n_experiences(self) -> int:
        return len(self.classes_per_exp)

    @property
    def train_stream(self):
        return self.scenario.streams["train"]

    @property
    def test_stream(self):
        return self.scenario.streams["test"]


def seeded_class_order(n_classes: int, seed: int) -> list[int]:
    """The class order for ``seed``: a permutation drawn from numpy's PCG64 generator.

    Drawn here rather than by Avalanche (which reseeds torch's global generator) so
    that building a benchmark never touches global random state.
    """
    return np.random.default_rng(seed).permutation(n_classes).tolist()


def class_incremental_stream(name: str, x_train, y_train, x_test, y_test, *,
                             n_experiences: int, seed: int, is_image: bool,
                             info: dict | None = None) -> Stream:
    """Split arrays into ``n_experiences`` experiences of equal class count."""
    x_train = torch.as_tensor(x_train, dtype=torch.float32)
    x_test = torch.as_tensor(x_test, dtype=torch.float32)
    y_train = torch.as_tensor(y_train, dtype=torch.long)
    y_test = torch.as_tensor(y_test, dtype=torch.long)
    return class_incremental_stream_from_datasets(
        name, LabelledTensors(x_train, y_train), LabelledTensors(x_test, y_test),
        n_classes=int(y_train.max()) + 1, n_experiences=n_experiences, seed=seed,
        input_shape=tuple(x_train.shape[1:]), is_image=is_image, info=info)


def stratified_split(y: np.ndarray, test_per_class: int, seed: int):
    """Indices (train, test) with ``test_per_class`` test items per class, fixed by seed."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:test_per_class])
        train.extend(idx[test_per_class:])
    return np.sort(np.array(train)), np.sort(np.array(test))


def class_incremental_stream_from_datasets(name: str, train, test, *, n_classes: int,
                                           n_experiences: int, seed: int,
                                           input_shape: tuple[int, ...], is_image: bool = True,
                                           info: dict | None = None,
                                           order: list[int] | None = None) -> Stream:
    """Like :func:`class_incremental_stream`, for (lazy) torch ``Dataset``s.

    ``train`` and ``test`` return ``(x, y)`` and expose ``targets`` (a list of int class
    ids in ``0..n_classes-1``); items are read only when iterated, so file-backed datasets
    stay on disk. Every class must occur in ``train``. ``order`` is the class order
    (a permutation of ``0..n_classes-1``); default: :func:`seeded_class_order` of ``seed``.
    """
    if n_experiences < 1 or n_classes % n_experiences:
        raise ValueError(
            f"benchmark {name!r} has {n_classes} classes, which cannot be split into "
            f"{n_experiences} experiences of equal size; choose a divisor of {n_classes}")
    order = seeded_class_order(n_classes, seed) if order is None else [int(c) for c in order]
    if sorted(order) != list(range(n_classes)):
        raise ValueError(f"class order of {name!r} is not a permutation of its {n_classes} classes")
    per = n_classes // n_experiences
    classes_per_exp = [order[i * per:(i + 1) * per] for i in range(n_experiences)]
    scenario = class_incremental_benchmark({"train": train, "test": test},
                                           class_order=order, num_experiences=n_experiences)
    return Stream(name=name, scenario=scenario, classes_per_exp=classes_per_exp,
                  n_classes=n_classes, input_shape=tuple(input_shape), is_image=is_image,
                  info=dict(info or {}))
