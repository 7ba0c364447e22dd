"""Chapter 2's comparison of P&M's Fisher estimators: a_t next to tr(F_t) and accuracy.

Every P&M result records per task the merge coefficient ``coefficient`` (a_t) and the
trace ``fisher_trace`` of the Fisher estimate F_t (before any normalisation). The tables
here put them side by side per estimator variant, each as the mean over seeds with a 95%
t-interval (:func:`clmerge.report.statistics.interval`: mean +- t_{0.975, n-1} s /
sqrt(n); one seed gives no interval), and each variant's accuracy against the first
variant's as the paired difference by seed with its 95% interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from clmerge.experiment.results import read_result
from clmerge.report.findings import METRICS, Runs
from clmerge.report.statistics import Interval, interval, paired_interval

# a_t outside (BANG_LOW, BANG_HIGH) keeps almost all or almost none of a task's update
BANG_LOW, BANG_HIGH = 0.1, 0.9


def finite_interval(values) -> Interval:
    """:func:`~clmerge.report.statistics.interval` of the finite ``values`` (a trace of 0
    has log10 = -inf; it is left out of means, not allowed to swamp them)."""
    v = pd.Series(values, dtype=float)
    return interval(v[np.isfinite(v)])


def fmt(iv: Interval, digits: int = 2) -> str:
    """``mean ± half-width`` of ``iv`` (the mean alone without an interval)."""
    if not math.isfinite(iv.mean):
        return "n/a"
    if not iv.has_interval:
        return f"{iv.mean:.{digits}f}"
    return f"{iv.mean:.{digits}f} ± {iv.half_width:.{digits}f}"


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
                        "a_t": fmt(finite_interval(g["a_t"])),
                        "log10 tr(F_t)": fmt(finite_interval(g["log10_tr_F"]), digits=1)})
    return pd.DataFrame(out).set_index(["variant", "task"]) if out else pd.DataFrame()


def summary_table(df: pd.DataFrame, variants) -> pd.DataFrame:
    """Per variant: accuracy (A_last, percent), its paired difference by seed from the
    first of ``variants`` (points), the share of merges with a_t outside (0.1, 0.9), and
    the spread of log10 tr(F_t) over tasks 2..T, with 95% intervals over seeds."""
    long = per_task(df)
    variants = list(variants)
    reference, runs_of = variants[0], Runs(df)
    out = []
    for v in variants:
        runs = df[df["variant"] == v]
        d = long[(long["variant"] == v) & (long["task"] > 1)]   # a_1 = 1 always
        per_seed = d.groupby("seed")
        bang = per_seed["a_t"].apply(lambda a: float(((a < BANG_LOW) | (a > BANG_HIGH)).mean()))
        spread = per_seed["log10_tr_F"].apply(
            lambda x: float(x.max() - x.min()) if np.isfinite(x).all() else math.inf)
        row = {"variant": v, "seeds": len(runs)}
        for col, name in (("cil_A_last", "class-inc."), ("til_A_last", "task-inc.")):
            row[f"{name} A_last (%)"] = fmt(interval(100 * runs[col]), 1)
            if v != reference:
                per_seed = METRICS[col].per_seed
                row[f"{name} minus {reference} (paired)"] = paired_interval(
                    per_seed(runs_of, v), per_seed(runs_of, reference)).text(1)
        row[f"share of a_t outside ({BANG_LOW}, {BANG_HIGH})"] = fmt(finite_interval(bang))
        row["log10 tr(F_t) range over tasks"] = fmt(finite_interval(spread), digits=1)
        out.append(row)
    return pd.DataFrame(out).set_index("variant").fillna("") if out else pd.DataFrame()
