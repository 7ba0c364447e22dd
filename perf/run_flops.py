"""FLOPs of a run's phases, their achieved rate, and the core's measured peak.

On one CPU thread (as every run), in one process:

1. the peak: the best of ``--reps`` products of two n x n matrices (n = ``--peak-n``),
   in float32 and in bfloat16 (2 n^3 FLOPs each; CPU time, so that a shared machine's other work is not counted), and
   the same rate at the GEMM shapes
   the model's evaluation and training actually run (M = tokens of a minibatch, K = N =
   the ViT's width and MLP width), which bounds what a phase built of them can reach;
2. the phases of the quick profile's ``split_glyphs`` runs (seed 0), through the real
   pipeline: a TRM run trains experiences 0..``--experiences``-1 and a P&M run the same;
   for each experience the training (all steps, head initialisation included), the
   evaluation of tasks 0..t and the merge are timed as the run times them, and their
   FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` on a repetition of the
   same computation (one training step on a full minibatch x the steps taken; the
   evaluation again; the merge again on a copy of the merger, before the timed merge:
   see :func:`merge_flops`). The
   counter has no formula for the CPU's fused attention kernels; this script
   registers torch's own SDPA formulas for them.

Prints, per phase: GFLOP, wall and CPU seconds (the process's own), achieved GFLOP per
CPU second and its ratio to the float32 peak. Run it on an idle machine; it prints
the load average before and after.

    .venv/bin/python perf/run_flops.py [--experiences 2] [--peak-n 1024] [--reps 30]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time

import torch
from torch.utils.flop_counter import (FlopCounterMode, register_flop_formula,
                                      sdpa_backward_flop_count, sdpa_flop_count)

from clmerge.experiment.allocator import keep_freed_memory
from clmerge.experiment.config import make_config
from clmerge.experiment.provenance import device_name
from clmerge.experiment.runner import Run, cpu_threads

aten = torch.ops.aten


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu, get_raw=True)
def _sdpa_cpu_flop(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward,
                       get_raw=True)
def _sdpa_cpu_backward_flop(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def matmul_rate(m: int, k: int, n: int, dtype: torch.dtype, reps: int) -> float:
    """Best GFLOP/s of (m x k) @ (k x n) in ``dtype`` over ``reps`` timed repetitions."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b  # warm up (allocations, kernel choice)
    best = float("inf")
    for _ in range(reps):
        t0 = time.process_time()
        a @ b
        best = min(best, time.process_time() - t0)
    return 2 * m * k * n / best / 1e9


def counted(fn) -> tuple[float, dict]:
    """(GFLOP, GFLOP per op) of ``fn()``."""
    with FlopCounterMode(display=False) as fc:
        fn()
    per_op = {str(k): v / 1e9 for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return fc.get_total_flops() / 1e9, per_op


def training_step_flops(run: Run, experience, t: int) -> float:
    """GFLOP of one training step (forward, loss, backward) on a full minibatch of
    ``experience`` through head t, with the run's trainable parameters (gradients
    dropped after)."""
    model = run.model
    x, y = next(iter(run.train_batches(experience)))
    model.train()
    model.set_active_heads([t])

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
    gflop, _ = counted(step)
    for p in model.parameters():
        p.grad = None
    return gflop


def _copy(merger):
    """A deep copy of ``merger`` that merges with its class's own ``merge`` (the timed
    wrapper :func:`phases` sets on the instance would otherwise be copied too and call
    itself)."""
    m = copy.deepcopy(merger)
    vars(m).pop("merge", None)
    return m


def merge_flops(merger, ctx, method: str) -> float:
    """GFLOP of ``merger.merge(ctx)``, counted on a copy (its state and records stay
    untouched). TRM's merge is counted at 0 and at ``eval_every`` steps and extrapolated:
    every block of ``eval_every`` steps costs the same (its steps, their L_GR steps when
    ``gr_every`` divides ``eval_every``, and one evaluation), so the merge's FLOPs are
    F(0) + (steps / eval_every) (F(eval_every) - F(0))."""
    if method != "trm":
        return counted(lambda: _copy(merger).merge(ctx))[0]
    o = merger.options
    if o.steps % o.eval_every or o.eval_every % o.gr_every:
        raise SystemExit("run_flops extrapolates TRM's FLOPs only when eval_every divides "
                         "steps and gr_every divides eval_every")
    f = {}
    for steps in (0, o.eval_every):
        m = _copy(merger)
        m.options = dataclasses.replace(o, steps=steps)
        f[steps] = counted(lambda: m.merge(ctx))[0]
    return f[0] + o.steps // o.eval_every * (f[o.eval_every] - f[0])


def phases(method: str, experiences: int) -> list[dict]:
    """Timed and counted phases of the first ``experiences`` of one run of ``method``."""
    cfg = make_config(method, "split_glyphs", "quick", 0)
    rows = []
    with cpu_threads(cfg):
        run = Run(cfg)
        merger, diag, strategy = run.merger, run.diagnostics, run.strategy
        own_merge = merger.merge
        merges: list[tuple[float, float, float, float]] = []

        def merge_counted(ctx):
            c0 = time.process_time()
            gflop = merge_flops(merger, ctx, method)
            c1, t0 = time.process_time(), time.perf_counter()
            out = own_merge(ctx)
            merges.append((gflop, time.perf_counter() - t0, time.process_time() - c1, c1 - c0))
            return out
        merger.merge = merge_counted
        for t in range(experiences):
            exp = run.stream.train_stream[t]
            strategy.train_heads = [t]
            c0 = time.process_time()
            strategy.train(exp)
            train_cpu = time.process_time() - c0 - merges[t][2] - merges[t][3]
            train_s = diag.records[t]["train_seconds"]
            steps = diag.records[t]["train_steps"]
            step_gflop = training_step_flops(run, exp, t)
            t0, c0 = time.perf_counter(), time.process_time()
            run.evaluate(t)
            eval_s, eval_cpu = time.perf_counter() - t0, time.process_time() - c0
            eval_gflop, _ = counted(lambda: run.evaluate(t))
            n_eval = sum(len(e.dataset) for e in run.stream.test_stream[: t + 1])
            rows += [
                {"phase": "training", "method": method, "t": t, "gflop": step_gflop * steps,
                 "seconds": train_s, "cpu": train_cpu,
                 "note": f"{steps} steps x {step_gflop:.2f} GFLOP; head init not counted"},
                {"phase": "evaluation", "method": method, "t": t, "gflop": eval_gflop,
                 "seconds": eval_s, "cpu": eval_cpu,
                 "note": f"{n_eval} test samples, tasks 0..{t}"},
                {"phase": f"{method} merge", "method": method, "t": t,
                 "gflop": merges[t][0], "seconds": merges[t][1], "cpu": merges[t][2],
                 "note": f"merge/train {merges[t][1] / train_s:.2f} wall, "
                         f"{merges[t][2] / train_cpu:.2f} CPU"},
            ]
            for r in rows[-3:]:
                print(f"  {r['phase']:>12} t={t}: {r['gflop']:8.2f} GFLOP {r['seconds']:7.2f} s "
                      f"wall {r['cpu']:7.2f} s CPU ({r['note']})", flush=True)
    return rows


def model_shapes_rate(reps: int) -> dict[str, float]:
    """float32 GFLOP/s at the letters ViT's GEMM shapes (width 128, MLP 512, 49 tokens):
    a training minibatch (32 samples) and an evaluation minibatch (500 samples)."""
    out = {}
    for name, rows in (("train batch 32", 32 * 49), ("eval batch 500", 500 * 49)):
        out[f"{name}: qkv 128->384"] = matmul_rate(rows, 128, 384, torch.float32, reps)
        out[f"{name}: mlp 128->512"] = matmul_rate(rows, 128, 512, torch.float32, reps)
        out[f"{name}: mlp 512->128"] = matmul_rate(rows, 512, 128, torch.float32, reps)
    return out


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiences", type=int, default=2)
    ap.add_argument("--peak-n", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args(argv)
    keep_freed_memory()
    print(f"load average before: {_load()}", flush=True)
    torch.set_num_threads(1)
    n = a.peak_n
    peak = {"fp32": matmul_rate(n, n, n, torch.float32, a.reps),
            "bf16": matmul_rate(n, n, n, torch.bfloat16, a.reps)}
    print(f"{device_name('cpu')}, {torch.get_num_threads()} thread", flush=True)
    print(f"peak (best of {a.reps}, {n} x {n} @ {n} x {n}): fp32 {peak['fp32']:.1f} GFLOP/s, "
          f"bf16 {peak['bf16']:.1f} GFLOP/s (x{peak['bf16'] / peak['fp32']:.2f})", flush=True)
    shapes = model_shapes_rate(a.reps)
    for k, v in shapes.items():
        print(f"  fp32 at the model's shape, {k}: {v:.1f} GFLOP/s ({v / peak['fp32']:.0%} of peak)", flush=True)
    rows = []
    for method in ("trm", "pm"):
        print(f"{method} run, quick profile, split_glyphs, seed 0:", flush=True)
        rows += phases(method, a.experiences)
    print(f"\n{'phase':>12} {'t':>2} {'GFLOP':>8} {'wall s':>7} {'CPU s':>7} "
          f"{'GFLOP/CPU s':>11} {'of fp32 peak':>12}")
    for r in rows:
        rate = r["gflop"] / r["cpu"]
        print(f"{r['phase']:>12} {r['t']:>2} {r['gflop']:8.2f} {r['seconds']:7.2f} {r['cpu']:7.2f} "
              f"{rate:11.2f} {rate / peak['fp32']:12.1%}")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
