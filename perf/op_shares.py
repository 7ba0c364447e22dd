"""Where a training step's and an evaluation pass's CPU time goes: GEMMs against the rest.

``perf/run_flops.py`` finds the quick profile's phases at 25-40% of the core's float32
matmul peak. This script says why, measured: it profiles (``torch.profiler``, CPU, one
thread) ``--reps`` training steps (forward, loss, backward; the optimizer's step is not
included) on a full minibatch of the first experience of ``split_glyphs``, and
``--reps`` evaluation passes over the first experience's test set in the run's own
evaluation chunks, and sorts every op's *self* CPU time into

- ``GEMM``: matrix products and attention kernels (mm, addmm, bmm, matmul, the SDPA kernels);
- ``elementwise and norms``: layer norm, softmax, GELU, adds, multiplies, copies, views' kernels;
- ``other ops``: everything else the profiler saw;
- ``outside ops``: the wall time not inside any op (Python, module calls, dispatch).

For the GEMM share it also prints the GEMMs' own rate (their FLOPs, counted by torch's
FLOP counter on one repetition, over their self CPU time) next to the fp32 peak measured
in the same run (best of 30 products of two 1024 x 1024 matrices, one thread): if the
GEMMs run near peak and the phase does not, the rest is what costs.

    .venv/bin/python perf/op_shares.py [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_flops import counted, matmul_rate  # noqa: E402

from clmerge.experiment.config import make_config  # noqa: E402
from clmerge.experiment.runner import Run, cpu_threads  # noqa: E402
from clmerge.strategies.template import in_chunks  # noqa: E402

GEMM = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}
ATTENTION = ("scaled_dot_product", "flash_attention")
ELEMENTWISE = ("layer_norm", "softmax", "gelu", "add", "mul", "div", "sub", "copy", "clone",
               "cat", "sum", "mean", "exp", "log", "sqrt", "rsqrt", "pow", "neg", "fill",
               "zero", "where", "dropout", "to_copy", "contiguous", "transpose", "permute",
               "view", "reshape", "expand", "select", "slice", "split", "empty", "t",
               "threshold", "nll_loss", "cross_entropy", "unsqueeze", "squeeze", "as_strided")


def category(name: str) -> str:
    """The category of a profiler key such as ``aten::addmm`` or ``aten::_softmax``."""
    op = name.split("::")[-1].lstrip("_")
    if op in GEMM or any(a in op for a in ATTENTION):
        return "GEMM"
    if any(op == e or op.startswith(e + "_") or op.startswith(e) for e in ELEMENTWISE):
        return "elementwise and norms"
    return "other ops"


def shares(fn, reps: int) -> dict[str, float]:
    """Fractions of the profiled wall time per category over ``reps`` calls of ``fn``
    (self CPU time of the ops; what no op holds is ``outside ops``)."""
    fn()  # warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        wall = time.perf_counter() - t0
    out = {"GEMM": 0.0, "elementwise and norms": 0.0, "other ops": 0.0}
    for ev in prof.key_averages():
        out[category(ev.key)] += ev.self_cpu_time_total / 1e6
    out["outside ops"] = max(wall - sum(out.values()), 0.0)
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def cpu_seconds(fn, reps: int) -> float:
    """CPU seconds of the process for ``reps`` calls of ``fn`` (not profiled; a shared
    machine's other work is not counted)."""
    fn()
    c0 = time.process_time()
    for _ in range(reps):
        fn()
    return time.process_time() - c0


def report(name: str, fn, reps: int, peak: float) -> None:
    cpu = cpu_seconds(fn, reps)
    frac = shares(fn, reps)
    gflop = counted(fn)[0] * reps
    print(f"{name}: {reps} repetitions, {cpu:.3f} CPU s unprofiled, {gflop:.2f} GFLOP "
          f"({gflop / cpu:.1f} GFLOP/s, {gflop / cpu / peak:.0%} of the fp32 peak)")
    for k, v in frac.items():
        print(f"  {k:>22}: {v:6.1%}  ({v * cpu:6.3f} CPU s)")
    if frac["GEMM"] > 0:
        g = frac["GEMM"] * cpu
        print(f"  {'GEMMs alone':>22}: {gflop / g:.1f} GFLOP/s, {gflop / g / peak:.0%} of "
              "the fp32 peak")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)
    print("load average before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    cfg = make_config("seq", "split_glyphs", "quick", 0)
    with cpu_threads(cfg):
        torch.set_num_threads(1)
        peak = matmul_rate(1024, 1024, 1024, torch.float32, 30)
        print(f"fp32 peak (1024 x 1024 @ 1024 x 1024, one thread): {peak:.1f} GFLOP/s")
        run = Run(cfg)
        model = run.model
        exp = run.stream.train_stream[0]
        x, y = next(iter(run.train_batches(exp)))
        model.set_active_heads([0])
        for p in model.parameters():     # what the run trains: the adapters and head 0
            p.requires_grad_(False)
        for p in [*run.strategy.backbone_trainables(), *model.heads[0].parameters()]:
            p.requires_grad_(True)

        def step():
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            for p in model.parameters():
                p.grad = None
        report(f"training step (minibatch of {len(x)})", step, a.reps, peak)

        test = run.stream.test_stream[0].dataset
        xs = torch.stack([test[i][0] for i in range(len(test))])

        @torch.no_grad()
        def evaluate():
            model.eval()
            in_chunks(model, xs)
        report(f"evaluation pass ({len(xs)} test samples)", evaluate, a.reps, peak)
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
