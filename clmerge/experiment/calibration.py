"""Choose the training budget on a calibration stream, with the references only.

The two-phase protocol of arXiv 2403.09066: hyper-parameters are chosen on a stream
the study never reports (``split_glyphs_calibration``: 100 glyph classes disjoint from
the evaluation stream's), then frozen and applied unchanged to the evaluation stream.
Only methods that are not under test take part: sequential LoRA (``seq``), joint
training (``joint``), and the frozen-feature references (``nmc``, ``probe``); no merging
method is ever run here, so the budget cannot favour one.

**What is chosen**: the LoRA learning rate, the epochs per experience, the batch size,
the head learning rate and the head protocol (linear, or cosine with a fixed scale);
each row of :data:`GRID` is one such budget. Everything else is the profile's.

**The target regime** (the papers': seq LoRA 72.58 against a nearest-class-mean
reference of 83.70 on CIFAR-100 in 10 tasks with ViT-B/16, arXiv 2505.22389 and
arXiv 2210.04428):

- ``seq / nmc`` (class-incremental A_last) between 0.75 and 1.2;
- ``joint - nmc >= 5`` points (fine-tuning pays);
- seq's task-incremental forgetting >= 1 point (the backbone drifts, so merging has
  something to repair).

**The rule** (stated before the runs, applied by :func:`choose`): among the budgets
that meet all three, the one whose ``seq / nmc`` is closest to the papers' 0.87
(72.58 / 83.70); when none meets all three, the one that meets the most, then the
closest ratio. The chosen budget is frozen in ``clmerge/profiles/quick.yaml``.

Command line (writes ``data/calibration/glyphs.csv``; runs already in
``data/calibration/results`` are loaded, not recomputed)::

    nice python -m clmerge.experiment.calibration [--workers 2]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pandas as pd

from clmerge.experiment.config import ExperimentConfig, make_config
from clmerge.experiment.executors import compute_local
from clmerge.experiment.grid import plan
from clmerge.experiment.results import CorruptResultError, read_result, result_path
from clmerge.paths import project_dir

ROOT = project_dir()
RESULTS = ROOT / "data" / "calibration" / "results"
TABLE = ROOT / "data" / "calibration" / "glyphs.csv"
BENCHMARK = "split_glyphs_calibration"
PROFILE = "quick"
SEED = 0

PAPER_RATIO = 72.58 / 83.70   # seq LoRA / NMC on CIFAR-100, 10 tasks, ViT-B/16
RATIO_RANGE = (0.75, 1.2)
JOINT_MARGIN = 0.05           # joint - nmc, class-incremental A_last
MIN_TIL_FORGETTING = 0.01     # seq's task-incremental forgetting

# One row per candidate budget; keys are ExperimentConfig settings.
GRID: list[dict] = [
    # cosine heads from nn.Linear's random init (PILOT's CosineLinear, fixed scale 16)
    {"head": "cosine", "head_init": "random", "lr": 1e-3, "epochs": 2, "batch_size": 32,
     "head_lr": 0.05},
    # cosine heads that start at the class means of the current features
    {"head": "cosine", "head_init": "means", "lr": 1e-3, "epochs": 2, "batch_size": 32,
     "head_lr": 0.01},
]
BUDGET_KEYS = ("head", "head_init", "head_scale", "lr", "epochs", "batch_size", "head_lr")


def budget_configs(budget: dict, seed: int = SEED) -> dict[str, ExperimentConfig]:
    """The seq and joint configs of one budget on the calibration stream."""
    return {m: make_config(m, BENCHMARK, PROFILE, seed, overrides=dict(budget))
            for m in ("seq", "joint")}


# The references train nothing, so the budget settings do not change their numbers; their
# configs hold these fixed values so that their file names do not change when the
# profile's budget does.
REFERENCE_BUDGET = {"head": "linear", "head_init": "random", "lr": 1e-3, "epochs": 2,
                    "batch_size": 32, "head_lr": 0.01}


def reference_configs(seed: int = SEED) -> dict[str, ExperimentConfig]:
    """The frozen-feature references (independent of the training budget).

    Each is the profile's config of the method with no override, and the settings of
    :data:`REFERENCE_BUDGET` (which a method that trains nothing does not use, so
    ``make_config`` refuses them as overrides) then fixed in the resolved config: they
    name the file and change no number.
    """
    return {m: dataclasses.replace(make_config(m, BENCHMARK, PROFILE, seed),
                                   **REFERENCE_BUDGET)
            for m in ("nmc", "probe")}


def all_configs(grid: list[dict] = GRID, seed: int = SEED) -> list[ExperimentConfig]:
    cfgs = list(reference_configs(seed).values())
    for b in grid:
        cfgs.extend(budget_configs(b, seed).values())
    return cfgs


def table(grid: list[dict] = GRID, results_dir: str | Path = RESULTS,
          seed: int = SEED) -> pd.DataFrame:
    """One row per budget: seq and joint figures, the references, the three targets.

    Reads finished runs only (a missing run leaves NaN in its columns).
    """
    def load(cfg):
        path = result_path(cfg, results_dir)
        try:
            return read_result(path, cfg) if path.exists() else None
        except CorruptResultError:
            return None

    def fig(r, proto, key="A_last"):
        v = r["metrics"][proto][key] if r else None
        return float("nan") if v is None else 100.0 * v

    refs = {m: load(c) for m, c in reference_configs(seed).items()}
    nmc = fig(refs["nmc"], "cil")
    rows = []
    for b in grid:
        cfgs = budget_configs(b, seed)
        seq, joint = load(cfgs["seq"]), load(cfgs["joint"])
        row = {k: getattr(cfgs["seq"], k) for k in BUDGET_KEYS}
        row.update({
            "seq_cil": fig(seq, "cil"), "seq_til": fig(seq, "til"),
            "seq_til_forgetting": fig(seq, "til", "forgetting"),
            "joint_cil": fig(joint, "cil"), "joint_til": fig(joint, "til"),
            "nmc_cil": nmc, "nmc_til": fig(refs["nmc"], "til"),
            "probe_cil": fig(refs["probe"], "cil"),
        })
        row["seq_over_nmc"] = row["seq_cil"] / nmc
        row["joint_minus_nmc"] = row["joint_cil"] - nmc
        row["ratio_ok"] = RATIO_RANGE[0] <= row["seq_over_nmc"] <= RATIO_RANGE[1]
        row["joint_ok"] = (None if joint is None
                           else bool(row["joint_minus_nmc"] >= 100 * JOINT_MARGIN))
        row["drift_ok"] = row["seq_til_forgetting"] >= 100 * MIN_TIL_FORGETTING
        rows.append(row)
    df = pd.DataFrame(rows)
    df["chosen"] = False
    if len(df) and df["seq_cil"].notna().any():
        df.loc[choose(df), "chosen"] = True
    return df


def choose(df: pd.DataFrame) -> int:
    """Index of the budget the rule of the module docstring picks."""
    done = df[df["seq_cil"].notna() & df["joint_cil"].notna()]
    if done.empty:
        done = df[df["seq_cil"].notna()]
    met = done[["ratio_ok", "joint_ok", "drift_ok"]].fillna(False).astype(bool).sum(axis=1)
    best = done[met == met.max()]
    return int((best["seq_over_nmc"] - PAPER_RATIO).abs().idxmin())


def calibrate(grid: list[dict] = GRID, results_dir: str | Path = RESULTS,
              out: str | Path | None = TABLE, workers: int = 1,
              seed: int = SEED) -> pd.DataFrame:
    """Run what is missing (seq, joint, nmc, probe only), write and return the table.

    Two rounds, to spend CPU only where it can change the choice: first the references
    and every budget's seq run; then joint for the budgets whose ``seq / nmc`` is in
    :data:`RATIO_RANGE` (a budget outside it cannot be chosen while one inside exists,
    and the table leaves its joint columns empty).
    """
    def run(cfgs):
        _, todo = plan(cfgs, results_dir)
        if todo:
            compute_local(todo, results_dir, workers=workers, keep_going=False)

    run(list(reference_configs(seed).values())
        + [budget_configs(b, seed)["seq"] for b in grid])
    first = table(grid, results_dir, seed)
    in_range = [b for b, ok in zip(grid, first["ratio_ok"]) if ok] or grid
    run([budget_configs(b, seed)["joint"] for b in in_range])
    df = table(grid, results_dir, seed)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out, index=False, float_format="%.4g")
    return df


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Calibrate the training budget on the "
                                            "glyph calibration stream (references only).")
    p.add_argument("--workers", type=int, default=1, help="processes at a time")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--out", default=str(TABLE))
    args = p.parse_args(argv)
    df = calibrate(results_dir=args.results_dir, out=args.out, workers=args.workers)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
