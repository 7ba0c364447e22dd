"""Per-step training time of each method relative to sequential LoRA, side by side.

P&M (arXiv 2505.22389) claims its perturbation costs no extra forward or backward pass.
This script trains the same model on the same experience with each method's training-time
plugins (P&M's perturbation, EWC's penalty, LwF's distillation, TRM's trajectory
recorder; merging-only methods train exactly like ``seq``), alternating the methods over
several rounds in one process, and prints the median time of a training iteration of
each and its ratio to ``seq`` (P&M's target: <= 1.05). ``--out`` writes the figures as
JSON (chapter 6 reads ``data/benchmarks/step_time*.json``).

    .venv/bin/python perf/step_time.py [--methods seq pm] [--rounds 5] [--threads 1]
        [--out data/benchmarks/step_time-cpu.json]

The paper-scale version (ViT-B/16 on a GPU, images/s, memory, MFU, merge time) is
``perf/throughput.py``, whose ``StepTimer`` this script shares (CUDA events on a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from clmerge.experiment.config import make_config
from clmerge.experiment.provenance import device_name
from clmerge.experiment.runner import Run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import StepTimer  # noqa: E402  (perf/ is not a package)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--benchmark", default=None)
    ap.add_argument("--methods", nargs="+", default=["seq", "pm"],
                    help="methods to time; seq is always included as the reference")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = ["seq"] + [m for m in args.methods if m != "seq"]

    timers, strategies, runs = {}, {}, {}
    for method in methods:
        cfg = make_config(method, args.benchmark, args.profile, 0,
                          {"epochs": 1, "device": args.device})
        run = Run(cfg)
        timers[method] = StepTimer()
        # the method's training plugins, without the merge (one experience is timed)
        strategies[method] = run.make_strategy([*run.method_plugins, timers[method]])
        runs[method] = run
    exp = runs["seq"].stream.train_stream[0]
    for r in range(args.rounds):
        for method in (methods if r % 2 == 0 else methods[::-1]):
            strategies[method].train_heads = [0]
            strategies[method].train(runs[method].stream.train_stream[0])
    med = {m: statistics.median(t.times[5:]) for m, t in timers.items()}  # skip warm-up
    cfg = runs["seq"].cfg
    print(f"profile {args.profile}, benchmark {cfg.benchmark}, backbone {cfg.backbone}, "
          f"batch {cfg.batch_size}, device {args.device}, threads {args.threads}, "
          f"{len(timers['seq'].times)} iterations each over {args.rounds} alternating rounds "
          f"on experience 0 ({len(exp.dataset)} images)")
    for m in methods:
        print(f"{m:>6}: median {1000 * med[m]:.2f} ms / iteration, "
              f"ratio to seq {med[m] / med['seq']:.3f}")
    result = {"device": device_name(args.device), "torch": torch.__version__,
              "python": platform.python_version(),
              "command": ["perf/step_time.py", *(sys.argv[1:] if argv is None else argv)],
              "profile": args.profile, "benchmark": cfg.benchmark, "backbone": cfg.backbone,
              "batch": cfg.batch_size, "threads": args.threads, "rounds": args.rounds,
              "iterations": len(timers["seq"].times),
              "median_ms": {m: 1000 * med[m] for m in methods},
              "ratio_to_seq": {m: med[m] / med["seq"] for m in methods}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
