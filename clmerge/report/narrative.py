"""Sentences computed from results, so the prose of a chapter cannot go stale."""

from __future__ import annotations

import pandas as pd

from clmerge.report.names import column as column_name
from clmerge.report.names import readable
from clmerge.report.tables import mean_metric


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def budget_check(df: pd.DataFrame, seq: str = "seq", joint: str = "joint",
                 probe: str = "probe") -> str:
    """How much sequential fine-tuning forgets, and how far it ends below joint training:
    the two numbers that say whether the stream leaves merging anything to repair."""
    lines = []
    variants = set(df["variant"])
    if seq in variants:
        lines.append(f"{readable(seq)}: task-incremental forgetting "
                     f"{_pct(mean_metric(df, seq, 'til_forgetting'))}; class-incremental "
                     f"forgetting {_pct(mean_metric(df, seq, 'cil_forgetting'))}.")
    if seq in variants and joint in variants:
        a_seq, a_joint = (mean_metric(df, v, "cil_A_last") for v in (seq, joint))
        lines.append(f"final class-incremental accuracy: {readable(seq)} {_pct(a_seq)} vs "
                     f"{readable(joint)} {_pct(a_joint)}, a gap of "
                     f"{100 * (a_joint - a_seq):.1f} points.")
    if probe in variants:
        lines.append(f"{readable(probe)} (a joint-softmax classifier on the frozen features): "
                     f"{_pct(mean_metric(df, probe, 'cil_A_last'))} class-incremental, "
                     f"{_pct(mean_metric(df, probe, 'til_A_last'))} task-incremental.")
    return "\n".join(lines) if lines else "no seq/joint/probe runs in this selection"


def ordering(df: pd.DataFrame, variants: list[str], column: str = "cil_A_last",
             expected: str | None = None) -> str:
    """The variants sorted by the mean of ``column`` (percent), and the paper's order."""
    means = {v: mean_metric(df, v, column) for v in variants if v in set(df["variant"])}
    ranked = sorted(means, key=means.get)
    text = f"measured order by {column_name(column)} (mean over seeds): " + " < ".join(
        f"{readable(v)} ({100 * means[v]:.1f})" for v in ranked)
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
        verdict = (f"vanishes (< {threshold:.0%})" if r < threshold
                   else f"does not vanish (>= {threshold:.0%})")
        spread = "" if pd.isna(row["ratio std"]) else f" ± {row['ratio std']:.2f}"
        lines.append(f"{readable(v)}: {r:.2f}{spread} x task 1's gradient norm at the start "
                     f"of tasks 2..T: {verdict}")
    return "\n".join(lines)


def merge_cost_ratio(tasks: pd.DataFrame, variant: str, target: float | None = None) -> str:
    """Merge seconds as a fraction of the same task's training seconds (mean over tasks
    and seeds); with ``target``, whether the fraction is at most that."""
    sub = tasks[tasks["variant"] == variant]
    if sub.empty:
        return f"no runs of {readable(variant)}"
    ratio = (sub["merge_seconds"] / sub["train_seconds"]).mean()
    line = (f"{readable(variant)}: a merge takes {ratio:.2f} x the training time of its "
            f"task (mean over {len(sub)} merges)")
    if target is not None:
        line += f"; at most {target} x: {'yes' if ratio <= target else 'no'}"
    return line
