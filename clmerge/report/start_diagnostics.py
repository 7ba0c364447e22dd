"""Frames for the "beginning of the next task" diagnostics (chapter 3).

TRM (arXiv 2605.08311) makes two claims about merged models under storage limits:
(1) global alignment accumulates task-specific errors along the stream, (2) the merged
model starts the next task where gradients vanish. Every result records what tests
them (:mod:`clmerge.plugins.diagnostics`, :mod:`clmerge.plugins.merge`); these functions
turn the result files of a tidy frame (``load_results``) into per-task and per-step
frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clmerge.experiment.results import read_result
from clmerge.report.style import order
from clmerge.report.tables import significant
from clmerge.report.task_records import STEP_SERIES, TASK_FIELDS, task_frame  # noqa: F401

def first_steps_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Long frame of the first training steps of every task: variant, seed, task, step,
    loss, grad_norm (trainable backbone weights), dense_grad_norm (mergeable weights)."""
    rows = []
    for _, run in df.iterrows():
        for t, rec in enumerate(read_result(run["path"])["tasks"]):
            series = {name: rec.get(key) or [] for key, name in STEP_SERIES.items()}
            for s in range(max((len(v) for v in series.values()), default=0)):
                row = {"variant": run["variant"], "seed": run["seed"], "task": t + 1, "step": s + 1}
                row.update({n: (v[s] if s < len(v) else np.nan) for n, v in series.items()})
                rows.append(row)
    return pd.DataFrame(rows)


def responsiveness(tasks: pd.DataFrame, column: str = "dense_grad_norm_first_mean"
                   ) -> pd.DataFrame:
    """Per variant: ``column`` at the start of task 1 (from the pretrained model) and over
    tasks 2..T (from the method's merged model), and their ratio, mean +- std over seeds.

    A ratio well below 1 means the method hands the next task a model where gradients
    are smaller than where the stream began: TRM's "vanishing gradients" claim.
    """
    out = []
    for v in order(tasks["variant"]):
        sub = tasks[tasks["variant"] == v]
        first = sub[sub["task"] == 1].set_index("seed")[column]
        later = sub[sub["task"] > 1].groupby("seed")[column].mean()
        ratio = (later / first).dropna()
        out.append({"variant": v, "task 1": first.mean(), "tasks 2..T": later.mean(),
                    "ratio": ratio.mean(),
                    "ratio std": ratio.std(ddof=1) if len(ratio) > 1 else np.nan,
                    "seeds": len(ratio)})
    return significant(pd.DataFrame(out).set_index("variant"))


# ---------------------------------------------------------------- steps to a fixed loss
def steps_to_loss(losses, threshold: float, window: int = 5) -> float:
    """The first training step s (1-based) at which the mean training loss of steps
    s-window+1..s is at most ``threshold``; NaN when the task never gets there. The
    window smooths the minibatch noise; the first ``window - 1`` steps use what exists."""
    losses = np.asarray(losses, dtype=float)
    if window < 1:
        raise ValueError(f"window must be >= 1; got {window}")
    csum = np.concatenate([[0.0], np.cumsum(losses)])
    for s in range(1, len(losses) + 1):
        lo = max(0, s - window)
        if (csum[s] - csum[lo]) / (s - lo) <= threshold:
            return float(s)
    return float("nan")


def steps_to_loss_frame(df: pd.DataFrame, threshold: float, window: int = 5,
                        k: int = 20) -> pd.DataFrame:
    """One row per run and task (1-based ``task``): ``steps_to_loss`` (see
    :func:`steps_to_loss`; NaN: not reached), ``reached``, ``train_steps`` and
    ``loss_after_k`` (mean training loss of steps k-window+1..k; of the last ``window``
    steps when the task is shorter than k). This is what "merging
    re-activates optimisation" means when measured: how fast the next task trains from
    the model a method hands it. Task 1 starts from the pretrained model for every
    method. Results recorded before the per-step losses existed give no rows."""
    rows = []
    for _, run in df.iterrows():
        for t, rec in enumerate(read_result(run["path"])["tasks"]):
            losses = rec.get("losses")
            if not losses:
                continue
            s = steps_to_loss(losses, threshold, window)
            kk = min(k, len(losses))  # a task shorter than k steps: its last steps
            rows.append({"variant": run["variant"], "seed": run["seed"], "task": t + 1,
                         "steps_to_loss": s, "reached": not np.isnan(s),
                         "train_steps": len(losses),
                         "loss_after_k": float(np.mean(losses[max(0, kk - window):kk]))})
    return pd.DataFrame(rows, columns=["variant", "seed", "task", "steps_to_loss", "reached",
                                       "train_steps", "loss_after_k"])


def steps_to_loss_summary(frame: pd.DataFrame, reference: str = "seq") -> pd.DataFrame:
    """Per variant, over tasks 2..T (those that start from the method's own model): mean
    steps to the loss (a task that never reaches it counts as its number of steps, a
    lower bound; ``not reached`` counts them), the mean loss after k steps, and the
    per-seed ratio of the mean steps to ``reference``'s on the same seed (mean +- std;
    below 1: the method's model trains faster than ``reference``'s)."""
    later = frame[frame["task"] > 1].copy()
    later["steps"] = later["steps_to_loss"].fillna(later["train_steps"])
    per_seed = later.groupby(["variant", "seed"]).agg(steps=("steps", "mean"),
                                                      loss_k=("loss_after_k", "mean"),
                                                      missed=("reached", lambda r: int((~r).sum())))
    ref = per_seed.loc[reference]["steps"] if reference in per_seed.index.get_level_values(0) else None
    out = []
    for v in order(later["variant"]):
        sub = per_seed.loc[v]
        row = {"variant": v, "steps to loss": sub["steps"].mean(),
               "steps std": sub["steps"].std(ddof=1) if len(sub) > 1 else np.nan,
               "loss after k": sub["loss_k"].mean(), "not reached": int(sub["missed"].sum()),
               "seeds": len(sub)}
        if ref is not None:
            ratio = (sub["steps"] / ref).dropna()
            row[f"ratio to {reference}"] = ratio.mean()
            row["ratio std"] = ratio.std(ddof=1) if len(ratio) > 1 else np.nan
        out.append(row)
    return significant(pd.DataFrame(out).set_index("variant").round(3))


# ---------------------------------------------------------------- the loss threshold
DEFAULT_LOSS_THRESHOLD = 0.3  # where a profile names none (chosen before the rule below)


def halfway_loss(result: dict, window: int = 5) -> float:
    """The training loss a run reaches halfway through its tasks: per task 2..T, the mean
    loss of the ``window`` steps ending at step ceil(n / 2) of its n steps; the median
    over those tasks. NaN when the result has no per-step losses."""
    values = []
    for rec in result["tasks"][1:]:
        losses = rec.get("losses")
        if not losses:
            continue
        half = (len(losses) + 1) // 2
        values.append(float(np.mean(losses[max(0, half - window):half])))
    return float(np.median(values)) if values else float("nan")


def loss_threshold(profile: str, benchmark: str | None, override: float | None = None) -> float:
    """Chapter 3's "fixed training loss" for ``benchmark`` under ``profile``: ``override``
    when given, else the profile's ``loss_thresholds`` entry for the benchmark, else its
    ``default`` entry, else :data:`DEFAULT_LOSS_THRESHOLD`."""
    from clmerge.experiment.config import load_profile, make_config

    if override is not None:
        return float(override)
    bench = make_config("seq", benchmark, profile, 0).benchmark
    table = load_profile(profile).get("loss_thresholds") or {}
    return float(table.get(bench, table.get("default", DEFAULT_LOSS_THRESHOLD)))


def main(argv: list[str] | None = None) -> float:
    """Print the threshold rule's value on a calibration stream: the loss sequential LoRA
    reaches halfway through a task (:func:`halfway_loss`), computing the ``seq`` run
    when its result is missing or predates the per-step losses."""
    import argparse

    from clmerge.report import study

    ap = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    ap.add_argument("--benchmark", required=True, help="a calibration stream")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--out", default="data/calibration/results")
    a = ap.parse_args(argv)
    df = study.ensure_results(["seq"], a.profile, a.benchmark, [a.seed], a.out)
    value = halfway_loss(read_result(df["path"].iloc[0]), a.window)
    if np.isnan(value):   # recorded before every step's loss was: recompute
        df = study.ensure_results(["seq"], a.profile, a.benchmark, [a.seed], a.out, force=True)
        value = halfway_loss(read_result(df["path"].iloc[0]), a.window)
    print(f"seq on {a.benchmark} (seed {a.seed}): training loss halfway through tasks 2..T, "
          f"median: {value:.4g}")
    return value


if __name__ == "__main__":
    main()
