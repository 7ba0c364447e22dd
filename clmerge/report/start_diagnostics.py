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
from clmerge.report.tables import labelled

TASK_FIELDS = ("merge_seconds", "train_seconds", "train_steps", "state_bytes",
               "distance_from_pretrained", "task_vector_norm", "grad_norm_start",
               "loss_start", "coefficient", "fisher_trace", "delta_F_delta")
STEP_SERIES = {"losses_first": "loss", "grad_norms_first": "grad_norm",
               "dense_grad_norms_first": "dense_grad_norm"}


def _mean_before(row, t: int):
    vals = [row[j] for j in range(t) if row[j] is not None]
    return float(np.mean(vals)) if vals else np.nan


def task_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run and task t (1-based ``task``): the task's recorded scalars, the
    means of its first-steps series, and accuracy right after its merge: on the task
    itself (``*_current``) and on the old tasks 1..t-1 (``*_old``, mean)."""
    rows = []
    for _, run in df.iterrows():
        r = read_result(run["path"])
        for t, rec in enumerate(r["tasks"]):
            row = {"variant": run["variant"], "seed": run["seed"], "task": t + 1,
                   "path": run["path"]}
            row.update({k: rec.get(k, np.nan) for k in TASK_FIELDS})
            row["state_MiB"] = row["state_bytes"] / 2**20
            for key, name in STEP_SERIES.items():
                series = rec.get(key) or []
                row[f"{name}_first_mean"] = float(np.mean(series)) if series else np.nan
            for proto, key in (("cil", "R"), ("til", "R_til")):
                if t < len(r[key]):
                    acc = r[key][t]
                    row[f"{proto}_current"] = acc[t] if acc[t] is not None else np.nan
                    row[f"{proto}_old"] = _mean_before(acc, t)
            rows.append(row)
    return pd.DataFrame(rows)


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
    return labelled(pd.DataFrame(out).set_index("variant").round(3))
