"""The table cells of P&M's main table (arXiv 2505.22389) as ``clmerge run`` commands on
the ``paper`` profile, and the time each needs on one GPU for given throughputs.

The page "Running at paper scale" (``chapters/paper_scale.md``) shows
:func:`commands_markdown` and :func:`estimate_markdown`; a test keeps the page equal
to them.

Time of one run (one seed), for a stream of T tasks over ``n_train`` training and
``n_test`` test images, trained ``epochs`` epochs per task:

    train images   = epochs * n_train
    eval images    = n_test * (T + 1) / 2      (after task t: the test images of tasks 1..t)
    Fisher samples = T * min(fisher_samples, n_train / T)   (P&M only)
    seconds        = train / r_train + eval / r_eval + Fisher / r_fisher

with r the images (samples) per second of a training step, an evaluation forward and a
per-sample Fisher gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from clmerge.experiment.config import make_config


@dataclass(frozen=True)
class Cell:
    column: str        # the column header of P&M's table
    benchmark: str     # clmerge benchmark name
    tasks: int
    n_train: int       # training images (all tasks)
    n_test: int        # test images (all tasks)
    sizes_note: str    # where the sizes come from


CELLS = (
    Cell("ImageNet-R 10", "imagenet_r", 10, 24_000, 6_000, "the CODA-Prompt / InfLoRA list"),
    Cell("ImageNet-R 20", "imagenet_r", 20, 24_000, 6_000, "the CODA-Prompt / InfLoRA list"),
    Cell("ImageNet-A 10", "imagenet_a", 10, 6_000, 1_500,
         "about 80 / 20 of 7,500; a run records the pre-split copy's sizes"),
    Cell("DomainNet 5", "domainnet", 5, 409_832, 176_743, "the official lists of six domains"),
    Cell("CIFAR-100 10", "split_cifar100", 10, 50_000, 10_000, "the official split"),
    Cell("CUB-200 10", "cub200", 10, 6_000, 5_800,
         "about the official 5,994 / 5,794; a run records the pre-split copy's sizes"),
)

# The rows of P&M's table: row label -> (method, extra --set options)
ROWS = (
    ("seq (sequential LoRA)", "seq", ()),
    ("average", "average", ()),
    ("dare", "dare", ()),
    ("coma", "coma", ()),
    ("pm, merge only", "pm", ("pm.perturbation=none",)),
    ("pm, Gaussian-noise perturbation", "pm", ("pm.perturbation=gaussian",)),
    ("pm", "pm", ()),
)

EPOCHS = 10
FISHER_SAMPLES = 1024
# Throughputs assumed for the estimate (images/s on one data-centre GPU, bf16, batch 256).
# They are assumptions, not measurements: the throughput script measures r_train and
# the merge time on a given GPU; substitute its figures.
ASSUMED_RATES = {"train": 1000.0, "eval": 3000.0, "fisher": 250.0}


def command(cell: Cell, method: str = "pm", sets=(), seed: int | str = "S") -> str:
    parts = ["clmerge run", f"--method {method}", f"--benchmark {cell.benchmark}",
             "--profile paper", f"--seed {seed}"]
    if cell.tasks != _profile_tasks(cell.benchmark):
        parts.append(f"--set n_experiences={cell.tasks}")
    parts += [f"--set {s}" for s in sets]
    return " ".join(parts)


def _profile_tasks(benchmark: str) -> int:
    return make_config("pm", benchmark, "paper", 0).n_experiences


def seconds(cell: Cell, method: str = "pm", rates: dict | None = None,
            epochs: int = EPOCHS) -> float:
    r = {**ASSUMED_RATES, **(rates or {})}
    train = epochs * cell.n_train
    evals = cell.n_test * (cell.tasks + 1) / 2
    fisher = cell.tasks * min(FISHER_SAMPLES, cell.n_train / cell.tasks) if method == "pm" else 0
    return train / r["train"] + evals / r["eval"] + fisher / r["fisher"]


def _hours(s: float) -> str:
    return f"{s / 60:.0f} min" if s < 3600 else f"{s / 3600:.1f} h"


def commands_markdown() -> str:
    """One row per column of P&M's table: the P&M command and the row options."""
    lines = ["| column | command (P&M; seeds S = 0, 1, 2) |", "|---|---|"]
    for c in CELLS:
        lines.append(f"| {c.column} | `{command(c)}` |")
    lines += ["", "| row of the table | method and options (add to the command) |", "|---|---|"]
    for label, method, sets in ROWS:
        opts = " ".join(f"`--set {s}`" for s in sets)
        lines.append(f"| {label} | `--method {method}` {opts}".rstrip() + " |")
    return "\n".join(lines)


def estimate_markdown(rates: dict | None = None) -> str:
    """Estimated time per run (one seed) and for the column (7 rows x 3 seeds)."""
    lines = ["| column | train / test images | P&M run (1 seed) | column (7 rows x 3 seeds) |",
             "|---|---|---|---|"]
    for c in CELLS:
        one = seconds(c, "pm", rates)
        col = 3 * sum(seconds(c, m, rates) for _, m, _ in ROWS)
        lines.append(f"| {c.column} | {c.n_train:,} / {c.n_test:,} ({c.sizes_note}) | "
                     f"{_hours(one)} | {_hours(col)} |")
    return "\n".join(lines)
