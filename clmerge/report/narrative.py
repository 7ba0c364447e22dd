"""Sentences computed from results, so the prose of a chapter cannot go stale."""

from __future__ import annotations

import pandas as pd

from clmerge.report.tables import mean_metric

# The quick profile's targets (issue "walking skeleton"): what "visible drift" means.
TARGET_TIL_FORGETTING = 0.10   # sequential LoRA forgets >= 10 task-incremental points
TARGET_CIL_GAP = 0.15          # seq's class-incremental A_last >= 15 points below joint


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def budget_check(df: pd.DataFrame, seq: str = "seq", joint: str = "joint",
                 probe: str = "probe") -> str:
    """Report seq's forgetting and its gap to joint against the quick profile's targets."""
    lines = []
    variants = set(df["variant"])
    if seq in variants:
        f_til = mean_metric(df, seq, "til_forgetting")
        ok = "meets" if f_til >= TARGET_TIL_FORGETTING else "MISSES"
        lines.append(f"{seq}: task-incremental forgetting {_pct(f_til)} "
                     f"({ok} the >= {_pct(TARGET_TIL_FORGETTING)} target); class-incremental "
                     f"forgetting {_pct(mean_metric(df, seq, 'cil_forgetting'))}.")
    if seq in variants and joint in variants:
        a_seq, a_joint = (mean_metric(df, v, "cil_A_last") for v in (seq, joint))
        gap = a_joint - a_seq
        ok = "meets" if gap >= TARGET_CIL_GAP else "MISSES"
        lines.append(f"class-incremental A_last: {seq} {_pct(a_seq)} vs {joint} {_pct(a_joint)}, "
                     f"a gap of {100 * gap:.1f} points ({ok} the >= {100 * TARGET_CIL_GAP:.0f}-point "
                     f"target).")
    if probe in variants:
        lines.append(f"linear probe of the frozen pretrained features: "
                     f"{_pct(mean_metric(df, probe, 'cil_A_last'))} class-incremental, "
                     f"{_pct(mean_metric(df, probe, 'til_A_last'))} task-incremental.")
    return "\n".join(lines) if lines else "no seq/joint/probe runs in this selection"


def ordering(df: pd.DataFrame, variants: list[str], column: str = "cil_A_last",
             expected: str | None = None) -> str:
    """The variants sorted by the mean of ``column`` (percent), and the paper's order."""
    means = {v: mean_metric(df, v, column) for v in variants if v in set(df["variant"])}
    ranked = sorted(means, key=means.get)
    text = f"measured order by {column} (mean over seeds): " + " < ".join(
        f"{v} ({100 * means[v]:.1f})" for v in ranked)
    if expected:
        text += f"\npaper's order: {expected}"
    return text


def responsiveness_verdict(table: pd.DataFrame, threshold: float = 0.5) -> str:
    """One line per variant from ``start_diagnostics.responsiveness``: does the model a
    method hands to the next task keep the gradient the stream started with?"""
    lines = []
    for v, row in table.iterrows():
        r = row["ratio"]
        if pd.isna(r):
            continue
        verdict = ("vanishes (< {:.0%} of task 1's)".format(threshold) if r < threshold
                   else "does not vanish")
        spread = "" if pd.isna(row["ratio std"]) else f" ± {row['ratio std']:.2f}"
        lines.append(f"{v}: tasks 2..T start with {r:.2f}{spread} x task 1's gradient norm: "
                     f"{verdict}")
    return "\n".join(lines)


def merge_cost_ratio(tasks: pd.DataFrame, variant: str, target: float = 0.25) -> str:
    """Merge seconds as a fraction of the same task's training seconds (mean over tasks
    and seeds) against ``target``."""
    sub = tasks[tasks["variant"] == variant]
    if sub.empty:
        return f"no runs of {variant}"
    ratio = (sub["merge_seconds"] / sub["train_seconds"]).mean()
    ok = "meets" if ratio <= target else "MISSES"
    return (f"{variant}: merge time is {ratio:.2f} x one task's training time "
            f"(mean over {len(sub)} merges; {ok} the <= {target} target)")
