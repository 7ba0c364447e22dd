"""What joint training keeps across tasks: its training data.

Mergers report the bytes they persist (``state_bytes``); joint training reports none
because it is not a merger, yet it is the one method that keeps *every* training example
of every task. :func:`training_data_bytes` counts those examples' inputs as a storage
budget would: one byte per value for images (8-bit pixels at the stream's stored
resolution; resizing for the model happens on the fly), four bytes per value for vector
inputs (float32).
The input shape comes from the benchmark's stream; the example counts from the result.
"""

from __future__ import annotations

import functools
import math

from clmerge.experiment.results import read_result


@functools.lru_cache(maxsize=None)
def _input_values(benchmark: str, n_experiences: int) -> tuple[int, bool]:
    from clmerge.benchmarks.registry import build_stream

    stream = build_stream(benchmark, n_experiences, seed=0)
    return math.prod(stream.input_shape), stream.is_image


def training_data_bytes(path) -> int:
    """Bytes of the training inputs of every task of the run stored at ``path``."""
    r = read_result(path)
    cfg = r["config"]
    values, is_image = _input_values(cfg["benchmark"], cfg["n_experiences"])
    return sum(r["stream"]["n_train"]) * values * (1 if is_image else 4)


def persisted_MiB(df) -> "pd.Series":
    """Per variant of a tidy frame, what it persists across tasks in MiB: the largest
    ``state_bytes`` a merger reported, and for joint training its training data
    (:func:`training_data_bytes`, the largest over its runs)."""
    import pandas as pd

    from clmerge.report.style import base_method, order

    out = {}
    for v in order(df["variant"]):
        sub = df[df["variant"] == v]
        if base_method(v) == "joint":
            out[v] = max(training_data_bytes(p) for p in sub["path"]) / 2**20
        else:
            out[v] = sub["state_bytes_max"].max() / 2**20
    return pd.Series(out, dtype=float)
