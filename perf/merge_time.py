"""P&M's merge time against each task's training time, side by side, in one run.

Trains a P&M run of a profile (default: ``quick``, the book's default) through the real
pipeline (``Run`` and its strategy) and prints, per task, the
training seconds (all epochs, P&M's perturbation included), the merge seconds (theta*_t,
the Fisher, the coefficient and the write-back, as the merge driver records them) and
their ratio; the target is merge / train <= 0.15. With ``--compare-vmap`` the same merge
also times the earlier Fisher (``fisher_engine=vmap``: torch.func per-sample gradients,
float32 log-likelihood, the first ``--vmap-samples`` samples in stored order) on the same
model, so both columns come from the same moment of the same process (its seconds are
not counted in the merge column). ``--out`` writes the table as JSON.

    .venv/bin/python perf/merge_time.py                          # quick profile, seed 0
    .venv/bin/python perf/merge_time.py --compare-vmap --experiences 2
    .venv/bin/python perf/merge_time.py --profile smoke --set pm.fisher_estimator=true
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from clmerge.experiment.allocator import keep_freed_memory
from clmerge.experiment.config import make_config, parse_assignments
from clmerge.experiment.provenance import device_name
from clmerge.experiment.runner import Run, cpu_threads
from clmerge.mergers.fisher_context import task_fisher

TARGET = 0.15


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--benchmark", default=None, help="default: the profile's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--experiences", type=int, default=None,
                    help="train only the first N experiences (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="settings and P&M options, e.g. pm.fisher_samples=512")
    ap.add_argument("--compare-vmap", action="store_true",
                    help="also time the earlier torch.func Fisher on the same model")
    ap.add_argument("--vmap-samples", type=int, default=1024,
                    help="samples of the earlier Fisher (its former default cap)")
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)

    cfg = make_config("pm", args.benchmark, args.profile, args.seed,
                      parse_assignments(args.set))
    keep_freed_memory()   # as every run does
    with cpu_threads(cfg):
        rows = measure(cfg, args.experiences, args.compare_vmap, args.vmap_samples)
    ratios = [r["merge_over_train"] for r in rows if r["experience"] > 0]
    summary = {
        "config": cfg.to_dict(), "device": device_name(cfg.device),
        "torch_threads": torch.get_num_threads(), "rows": rows, "target": TARGET,
        # the first merge is a_1 = 1 but still computes F_1; every task counts
        "median_merge_over_train": statistics.median(r["merge_over_train"] for r in rows),
        "max_merge_over_train": max(r["merge_over_train"] for r in rows),
        "median_merge_over_train_after_first": statistics.median(ratios) if ratios else None,
    }
    print_table(summary, args.compare_vmap)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return summary


def measure(cfg, experiences: int | None, compare_vmap: bool, vmap_samples: int) -> list[dict]:
    run = Run(cfg)
    merger, merge, diag, strategy = run.merger, run.merge, run.diagnostics, run.strategy
    vmap_seconds: list[float] = []
    if compare_vmap:
        own = merger.fisher

        def fisher(ctx):
            t0 = time.perf_counter()
            task_fisher(ctx, mode="per_sample", max_samples=vmap_samples, engine="vmap",
                        sampling="sequential")
            vmap_seconds.append(time.perf_counter() - t0)
            return own(ctx)
        merger.fisher = fisher
    stream = run.stream.train_stream
    n = len(stream) if experiences is None else min(experiences, len(stream))
    rows = []
    for t in range(n):
        strategy.train_heads = [t]
        strategy.train(stream[t])
        train_s = diag.records[t]["train_seconds"]
        merge_s = merge.records[t]["merge_seconds"] - (vmap_seconds[t] if compare_vmap else 0.0)
        row = {"experience": t, "n_train": len(stream[t].dataset), "train_seconds": train_s,
               "merge_seconds": merge_s, "merge_over_train": merge_s / train_s,
               "coefficient": merger.records[t]["coefficient"],
               "fisher_trace": merger.records[t]["fisher_trace"]}
        if compare_vmap:
            row["vmap_fisher_seconds"] = vmap_seconds[t]
            row["vmap_over_train"] = vmap_seconds[t] / train_s
        rows.append(row)
        print(f"experience {t}: train {train_s:.1f} s, merge {merge_s:.2f} s "
              f"({merge_s / train_s:.3f})", flush=True)
    return rows


def print_table(summary: dict, compare_vmap: bool) -> None:
    o = summary["config"]["method_args"]
    print(f"\nP&M merge time vs training time, profile {summary['config']['profile']}, "
          f"{summary['config']['benchmark']}, seed {summary['config']['seed']}, "
          f"{summary['device']}, {summary['torch_threads']} thread(s); Fisher: "
          f"{o['fisher_estimator']}, {o['fisher']}, {o['fisher_engine']}, "
          f"{o['fisher_samples']} samples ({o['fisher_sampling']})")
    head = f"{'task':>4} {'n_train':>7} {'train s':>8} {'merge s':>8} {'merge/train':>11}"
    if compare_vmap:
        head += f" {'vmap Fisher s':>13} {'vmap/train':>10}"
    print(head)
    for r in summary["rows"]:
        line = (f"{r['experience'] + 1:>4} {r['n_train']:>7} {r['train_seconds']:>8.1f} "
                f"{r['merge_seconds']:>8.2f} {r['merge_over_train']:>11.3f}")
        if compare_vmap:
            line += f" {r['vmap_fisher_seconds']:>13.2f} {r['vmap_over_train']:>10.3f}"
        print(line)
    verdict = "meets" if summary["max_merge_over_train"] <= TARGET else "misses"
    print(f"median merge/train {summary['median_merge_over_train']:.3f}, max "
          f"{summary['max_merge_over_train']:.3f}: {verdict} the target <= {TARGET}")


if __name__ == "__main__":
    main()
