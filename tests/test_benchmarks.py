"""Benchmarks: class-incremental Avalanche streams with a seeded class order."""

import numpy as np
import pytest

from clmerge.benchmarks.registry import BENCHMARKS, build_stream


@pytest.mark.parametrize("name,shape", [("synthetic", (32,)), ("split_digits", (1, 8, 8)),
                                        ("split_mnist5k", (1, 28, 28))])
def test_stream_is_class_incremental(name, shape):
    s = build_stream(name, n_experiences=5, seed=0)
    assert s.input_shape == shape and s.n_classes == 10
    assert sorted(c for cls in s.classes_per_exp for c in cls) == list(range(10))
    for t, (tr, te) in enumerate(zip(s.train_stream, s.test_stream)):
        want = set(s.classes_per_exp[t])
        assert set(tr.classes_in_this_experience) == want
        assert set(te.classes_in_this_experience) == want
        ys = {int(tr.dataset[i][1]) for i in range(len(tr.dataset))}
        assert ys == want
    if s.is_image:
        x = s.train_stream[0].dataset[0][0]
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_class_order_follows_seed_and_test_split_does_not():
    a, b, c = (build_stream("split_digits", 5, seed) for seed in (0, 0, 1))
    assert a.classes_per_exp == b.classes_per_exp
    assert a.classes_per_exp != c.classes_per_exp

    def test_set(s):
        return sorted(tuple(np.round(e.dataset[i][0].numpy().ravel()[:20], 4))
                      for e in s.test_stream for i in range(len(e.dataset)))
    assert test_set(a) == test_set(c)


def test_mnist5k_split_sizes():
    s = build_stream("split_mnist5k", 5, 0)
    assert [len(e.dataset) for e in s.train_stream] == [800] * 5
    assert [len(e.dataset) for e in s.test_stream] == [200] * 5


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="divisor"):
        build_stream("synthetic", n_experiences=3, seed=0)


def test_registry_lists_all():
    assert {"synthetic", "split_digits", "split_mnist5k", "split_glyphs",
            "split_glyphs_calibration", "split_cifar100", "imagenet_r", "imagenet_a",
            "domainnet", "cub200", "stanford_cars", "glyph_renditions",
            "glyph_renditions_calibration"} == set(BENCHMARKS)
