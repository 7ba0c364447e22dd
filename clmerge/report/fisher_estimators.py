"""Chapter 2's comparison of P&M's Fisher estimators: a_t next to tr(F_t) and accuracy.

Every P&M result records per task the merge coefficient ``coefficient`` (a_t) and the
trace ``fisher_trace`` of the Fisher estimate F_t (before any normalisation). The tables
here put them side by side per estimator variant, each as the mean over seeds with a 95%
t-interval (:func:`t_interval`: mean +- t_{0.975, n-1} s / sqrt(n), unpaired; one seed
gives no interval).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clmerge.experiment.results import read_result

# a_t outside (BANG_LOW, BANG_HIGH) keeps almost all or almost none of a task's update
BANG_LOW, BANG_HIGH = 0.1, 0.9


def t_interval(values, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half-width of the ``level`` t-interval, n) of the finite ``values``;
    the half-width is NaN for fewer than two values."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


def fmt(mean: float, half: float, digits: int = 2) -> str:
    """``mean ± half`` (``mean`` alone without an interval)."""
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def per_task(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, seed, task) with a_t, tr(F_t) and log10 tr(F_t)."""
    rows = []
    for _, r in df.iterrows():
        for t in read_result(r["path"])["tasks"]:
            if "fisher_trace" not in t:
                continue
            tr = t["fisher_trace"]
            rows.append({"variant": r["variant"], "seed": r["seed"], "task": t["experience"] + 1,
                         "a_t": t["coefficient"], "tr_F": tr,
                         "log10_tr_F": math.log10(tr) if tr > 0 else -math.inf})
    return pd.DataFrame(rows, columns=["variant", "seed", "task", "a_t", "tr_F", "log10_tr_F"])


def coefficient_table(df: pd.DataFrame, variants) -> pd.DataFrame:
    """Per variant and task: a_t and log10 tr(F_t), mean ± 95% t-interval over seeds."""
    long = per_task(df)
    out = []
    for v in variants:
        d = long[long["variant"] == v]
        for task, g in d.groupby("task"):
            out.append({"variant": v, "task": task,
                        "a_t": fmt(*t_interval(g["a_t"])[:2]),
                        "log10 tr(F_t)": fmt(*t_interval(g["log10_tr_F"])[:2], digits=1)})
    return pd.DataFrame(out).set_index(["variant", "task"]) if out else pd.DataFrame()


def summary_table(df: pd.DataFrame, variants) -> pd.DataFrame:
    """Per variant: accuracy (A_last, percent), the share of merges with a_t outside
    (0.1, 0.9), and the spread of log10 tr(F_t) over tasks 2..T, with intervals over seeds."""
    long = per_task(df)
    out = []
    for v in variants:
        runs = df[df["variant"] == v]
        d = long[(long["variant"] == v) & (long["task"] > 1)]   # a_1 = 1 always
        per_seed = d.groupby("seed")
        bang = per_seed["a_t"].apply(lambda a: float(((a < BANG_LOW) | (a > BANG_HIGH)).mean()))
        spread = per_seed["log10_tr_F"].apply(
            lambda x: float(x.max() - x.min()) if np.isfinite(x).all() else math.inf)
        row = {"variant": v, "seeds": len(runs)}
        for col, name in (("cil_A_last", "class-inc. A_last (%)"),
                          ("til_A_last", "task-inc. A_last (%)")):
            m, h, _ = t_interval(100 * runs[col])
            row[name] = fmt(m, h, 1)
        row[f"share of a_t outside ({BANG_LOW}, {BANG_HIGH})"] = fmt(*t_interval(bang)[:2])
        row["log10 tr(F_t) range over tasks"] = fmt(*t_interval(spread)[:2], digits=1)
        out.append(row)
    return pd.DataFrame(out).set_index("variant") if out else pd.DataFrame()
