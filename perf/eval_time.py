"""Evaluation of tasks 0..T-1 of the quick profile's split_glyphs, in one pass per
minibatch against in chunks, alternating, in CPU seconds.

Builds a seq run (seed 0, one thread), activates every head and evaluates the whole
test stream through the run's strategy (the same path as a run's evaluation), with
``EVAL_CHUNK`` at its value and at a size no minibatch reaches (one pass per minibatch,
the evaluation before chunking), ``--rounds`` times each, alternating; prints each
round's CPU seconds (the process's own, so a shared machine's other work is not
counted), the medians, their ratio and whether the accuracies are identical.

    .venv/bin/python perf/eval_time.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from clmerge.experiment.config import make_config
from clmerge.experiment.runner import Run, cpu_threads
from clmerge.strategies import template


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    cfg = make_config("seq", "split_glyphs", "quick", 0)
    chunk = template.EVAL_CHUNK
    sizes = {f"chunks of {chunk}": chunk, "one pass": 10 ** 9}
    secs: dict[str, list[float]] = {k: [] for k in sizes}
    rows = {}
    with cpu_threads(cfg):
        run = Run(cfg)
        T = run.stream.n_experiences
        for r in range(a.rounds):
            for name, size in sizes.items():
                template.in_chunks.__defaults__ = (size,)
                t0 = time.process_time()
                rows[name] = run.evaluate(T - 1)
                secs[name].append(time.process_time() - t0)
                print(f"round {r + 1} {name:>14}: {secs[name][-1]:6.2f} CPU s", flush=True)
        template.in_chunks.__defaults__ = (chunk,)
    med = {k: statistics.median(v) for k, v in secs.items()}
    n = sum(len(e.dataset) for e in run.stream.test_stream)
    first, second = sizes
    print(f"{n} test samples, eval batch {cfg.eval_batch_size}: median {first} "
          f"{med[first]:.2f} s, {second} {med[second]:.2f} s, ratio {med[first] / med[second]:.2f}; "
          f"accuracies identical: {rows[first] == rows[second]}")


if __name__ == "__main__":
    main()
