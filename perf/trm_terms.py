"""What each part of TRM's merge costs, against the task's own training, in CPU seconds.

Trains a TRM run of the quick profile (``split_glyphs``, seed 0, one thread) through the
real pipeline up to experience ``--experience`` and, at that merge, before the merge
itself runs, times on the same context and in the merge's own mode (eval mode, the math
attention kernel, no model weight requiring a gradient), each the best of ``--reps``:

- the set-up (:meth:`TrajectoryRegularizedMerger.problem`: directions, subspace, L_PC's
  inputs and teacher);
- one step's L_TA (forward and backward to c, theta(c) included), L_PC, and L_GR (the
  hinge through the gradient norm, its second derivative included);
- one evaluation on the fixed set;

and the merge's total implied by its options:

    steps x (L_TA + L_PC) + ceil(steps / gr_every) x L_GR + evaluations x evaluation + set-up

with evaluations = 1 + ceil(steps / eval_every) (the last step is always evaluated), next
to the CPU seconds of the task's training (the strategy's ``train`` call, merge
excluded) and of the merge as it ran. Prints each part's share and the implied
merge / train ratio. CPU seconds (the process's own) are used so that other work on a
shared machine is not counted.

    .venv/bin/python perf/trm_terms.py [--experience 1] [--reps 3] [--set trm.steps=50 ...]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from clmerge.experiment.allocator import keep_freed_memory
from clmerge.experiment.config import make_config, parse_assignments
from clmerge.experiment.runner import Run, cpu_threads
from clmerge.tensormath.trajectory_subspace import gradient_hinge, prediction_consistency


def best_cpu(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def part_costs(merger, ctx, reps: int) -> dict[str, float]:
    """CPU seconds of the merge's parts on ``ctx`` (see the module docstring)."""
    model = ctx.model
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    costs = {}
    with sdpa_kernel([SDPBackend.MATH]), contextlib.ExitStack() as stack:
        stack.callback(model.train, was_training)
        stack.callback(lambda: [p.requires_grad_(f) for p, f in flags])
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        costs["set-up"] = best_cpu(lambda: merger.problem(ctx), reps)
        p = merger.problem(ctx)
        x, y = p.fit[0]
        o = merger.options

        def term(name):
            c = p.c0.clone().requires_grad_(True)
            theta = p.space.combine(c)
            if name == "ta":
                loss = F.cross_entropy(p.head_logits(p.features(theta, x), [p.t]),
                                       p.local_labels(y))
            elif name == "pc":
                loss = prediction_consistency(p.head_logits(p.features(theta, p.pc_x[0]), p.old),
                                              p.teacher[0], o.tau)
            else:
                loss = gradient_hinge(p.responsiveness_loss(theta), list(theta.values()),
                                      p.g0)[0]
            loss.backward()

        for name in ("ta", "pc", "gr"):
            if name == "pc" and not p.teacher or name == "gr" and p.gr_head is None:
                costs[f"one L_{name.upper()}"] = 0.0
                continue
            costs[f"one L_{name.upper()}"] = best_cpu(lambda: term(name), reps)
        costs["one evaluation"] = best_cpu(lambda: merger.evaluate(p, p.c0, 0, {"step": []}),
                                           reps)
    return costs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experience", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    cfg = make_config("trm", "split_glyphs", "quick", 0, parse_assignments(a.set))
    keep_freed_memory()
    with cpu_threads(cfg):
        run = Run(cfg)
        merger, strategy = run.merger, run.strategy
        own = merger.merge
        seen: dict = {}

        def merge(ctx):
            w0 = time.process_time()
            if ctx.t == a.experience:
                seen["costs"] = part_costs(merger, ctx, a.reps)
            t0 = time.process_time()
            out = own(ctx)
            seen.setdefault("merge", []).append(time.process_time() - t0)
            seen.setdefault("in_merge", []).append(time.process_time() - w0)
            return out

        merger.merge = merge
        for t in range(a.experience + 1):
            strategy.train_heads = [t]
            t0 = time.process_time()
            strategy.train(run.stream.train_stream[t])
            train_cpu = time.process_time() - t0 - seen["in_merge"][t]
    o = merger.options
    costs = seen["costs"]
    n_gr = math.ceil(o.steps / o.gr_every)
    n_eval = 1 + math.ceil(o.steps / o.eval_every)
    parts = {"L_TA": o.steps * costs["one L_TA"], "L_PC": o.steps * costs["one L_PC"],
             "L_GR": n_gr * costs["one L_GR"], "evaluations": n_eval * costs["one evaluation"],
             "set-up": costs["set-up"]}
    total = sum(parts.values())
    print(f"TRM merge of experience {a.experience} (quick, split_glyphs, seed 0, one thread): "
          f"steps {o.steps}, gr_every {o.gr_every}, eval_every {o.eval_every}")
    for k, v in costs.items():
        print(f"  {k:>16}: {v:7.3f} CPU s")
    print(f"{'part':>12} {'CPU s':>8} {'share':>6} {'/ train':>8}")
    for k, v in parts.items():
        print(f"{k:>12} {v:8.2f} {v / total:6.1%} {v / train_cpu:8.2f}")
    print(f"{'implied':>12} {total:8.2f} {1:6.1%} {total / train_cpu:8.2f}")
    merge_cpu = seen["merge"][a.experience]
    print(f"measured: training {train_cpu:.2f} CPU s, merge {merge_cpu:.2f} CPU s, "
          f"merge / train {merge_cpu / train_cpu:.2f}")
    return {"parts": parts, "train_cpu": train_cpu, "merge_cpu": merge_cpu}


if __name__ == "__main__":
    main()
