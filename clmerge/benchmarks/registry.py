"""Benchmark registry: name -> builder. ``clmerge list benchmarks`` prints it."""

from __future__ import annotations

from typing import Callable

from clmerge.benchmarks import glyphs, offline, paper, renditions
from clmerge.benchmarks.stream import Stream

BENCHMARKS: dict[str, Callable[..., Stream]] = {
    "synthetic": offline.synthetic,
    "split_digits": offline.split_digits,
    "split_mnist5k": offline.split_mnist5k,
    "split_glyphs": glyphs.split_glyphs,
    "split_glyphs_calibration": glyphs.split_glyphs_calibration,
    "glyph_renditions": renditions.glyph_renditions,
    "glyph_renditions_calibration": renditions.glyph_renditions_calibration,
    "split_cifar100": paper.split_cifar100,
    "imagenet_r": paper.imagenet_r,
    "imagenet_a": paper.imagenet_a,
    "domainnet": paper.domainnet,
    "cub200": paper.cub200,
    "stanford_cars": paper.stanford_cars,
}

# classes of each benchmark, so that a number of experiences that does not divide them
# is refused before any data is read (the builders check it again)
CLASS_COUNTS: dict[str, int] = {
    "synthetic": 10, "split_digits": 10, "split_mnist5k": 10,
    "split_glyphs": 100, "split_glyphs_calibration": 100,
    "glyph_renditions": 100, "glyph_renditions_calibration": 100,
    "split_cifar100": 100, "imagenet_r": 200, "imagenet_a": 200, "domainnet": 345,
    "cub200": 200, "stanford_cars": 196,
}


# benchmarks whose inputs are vectors, not images: only the MLP takes them
VECTOR_BENCHMARKS = ("synthetic",)


def describe(name: str) -> str:
    """First line of the builder's docstring."""
    return (BENCHMARKS[name].__doc__ or "").strip().splitlines()[0]


def build_stream(name: str, n_experiences: int, seed: int,
                 protocol: paper.Protocol | None = None,
                 rendition: renditions.Renditions | None = None) -> Stream:
    """The stream ``name``; ``protocol`` (the paper benchmarks' choices) goes to the paper
    benchmarks only, ``rendition`` (the style mix and images per class) to the renditions
    benchmarks only."""
    if name not in BENCHMARKS:
        raise KeyError(name)
    if protocol is not None and name in paper.BUILDERS:
        return BENCHMARKS[name](n_experiences=n_experiences, seed=seed, protocol=protocol)
    if rendition is not None and name in renditions.BUILDERS:
        return BENCHMARKS[name](n_experiences=n_experiences, seed=seed, options=rendition)
    return BENCHMARKS[name](n_experiences=n_experiences, seed=seed)
