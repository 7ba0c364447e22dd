"""Summary tables: mean +- std over seeds, one row per variant."""

from __future__ import annotations

import pandas as pd

from clmerge.report.style import order

METRICS = ["A_last", "A_avg", "forgetting", "bwt"]


def summary(df: pd.DataFrame, protocols=("cil", "til"), metrics=METRICS,
            percent: bool = True) -> pd.DataFrame:
    """Mean and std over seeds of each metric, as "mean +- std" strings (percent)."""
    rows = []
    for variant in order(df["variant"]):
        sub = df[df["variant"] == variant]
        row = {"variant": variant, "seeds": len(sub)}
        for p in protocols:
            for m in metrics:
                col = f"{p}_{m}"
                vals = sub[col].dropna() * (100 if percent else 1)
                if len(vals) == 0:
                    row[col] = "-"
                elif len(vals) == 1:
                    row[col] = f"{vals.iloc[0]:.1f}"
                else:
                    row[col] = f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}"
        rows.append(row)
    out = pd.DataFrame(rows).set_index("variant")
    out.columns = pd.MultiIndex.from_tuples(
        [("", c) if c == "seeds" else (c.split("_", 1)[0].upper(), c.split("_", 1)[1])
         for c in out.columns])
    return out


def mean_metric(df: pd.DataFrame, variant: str, column: str) -> float:
    """Mean over seeds of one metric column for one variant (fractions, not percent)."""
    sub = df.loc[df["variant"] == variant, column].dropna()
    if sub.empty:
        raise KeyError(f"no {column} for variant {variant!r}")
    return float(sub.mean())
