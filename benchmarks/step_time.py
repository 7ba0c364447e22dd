"""Per-step training time of P&M relative to sequential LoRA, measured side by side.

P&M (arXiv 2505.22389) claims its perturbation costs no extra forward or backward pass.
This script trains the same model on the same experience with and without the
perturbation plugin, alternating the two several times in one process, and prints the
median time of a training iteration of each and their ratio (target <= 1.05).

    .venv/bin/python benchmarks/step_time.py [--profile quick] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clmerge.avalanche_api import SupervisedPlugin
from clmerge.experiment.config import make_config
from clmerge.experiment.runner import Run, _evaluator, _strategy
from clmerge.strategies.methods import get_method


class IterationTimer(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.times: list[float] = []
        self._t = 0.0

    def before_training_iteration(self, strategy, **kwargs):
        self._t = time.perf_counter()

    def after_training_iteration(self, strategy, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--benchmark", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    timers = {}
    strategies = {}
    runs = {}
    for method in ("seq", "pm"):
        cfg = make_config(method, args.benchmark, args.profile, 0,
                          {"epochs": 1, "device": args.device})
        run = Run(cfg)
        spec = get_method(method)
        timers[method] = IterationTimer()
        plugins = (spec.plugins(cfg, run) if spec.plugins else []) + [timers[method]]
        strategies[method] = _strategy(run, plugins, _evaluator())
        runs[method] = run
    exp = runs["seq"].stream.train_stream[0]
    for r in range(args.rounds):
        for method in (("seq", "pm") if r % 2 == 0 else ("pm", "seq")):
            strategies[method].train_heads = [0]
            strategies[method].train(runs[method].stream.train_stream[0])
    med = {m: statistics.median(t.times[5:]) for m, t in timers.items()}  # skip warm-up
    cfg = runs["pm"].cfg
    print(f"profile {args.profile}, benchmark {cfg.benchmark}, backbone {cfg.backbone}, "
          f"batch {cfg.batch_size}, device {args.device}, threads {args.threads}, "
          f"{len(timers['seq'].times)} iterations each over {args.rounds} alternating rounds "
          f"on experience 0 ({len(exp.dataset)} images)")
    for m in ("seq", "pm"):
        print(f"{m:>4}: median {1000 * med[m]:.2f} ms / iteration")
    print(f"ratio pm / seq = {med['pm'] / med['seq']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
