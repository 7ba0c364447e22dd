"""Per-step training time of P&M relative to sequential LoRA, measured side by side.

P&M (arXiv 2505.22389) claims its perturbation costs no extra forward or backward pass.
This script trains the same model on the same experience with and without the
perturbation plugin, alternating the two several times in one process, and prints the
median time of a training iteration of each and their ratio (target <= 1.05).

    .venv/bin/python benchmarks/step_time.py [--profile quick] [--rounds 5] [--threads 1]

The paper-scale version (ViT-B/16 on a GPU, images/s, memory, MFU, merge time) is
``benchmarks/throughput.py``, whose ``StepTimer`` this script shares (CUDA events on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from clmerge.experiment.config import make_config
from clmerge.experiment.runner import Run, _evaluator, _strategy
from clmerge.strategies.methods import get_method

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import StepTimer  # noqa: E402  (benchmarks/ is not a package)


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
        timers[method] = StepTimer()
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
