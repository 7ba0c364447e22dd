"""The per-task records of result files as one frame (:func:`task_frame`), the data the
chapters' per-task diagnostics and the findings' per-task metrics read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clmerge.experiment.results import read_result

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
