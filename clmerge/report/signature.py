"""A regime's signature: whether fine-tuning pays and whether merging has anything to
repair, in four numbers per seed, then their mean and standard deviation over seeds.

- ``seq / nmc``: final class-incremental accuracy of sequential LoRA over that of the
  nearest class mean on frozen features (in the papers' regime about 1.06-1.19);
- ``merged / nmc``: the same for plain averaging and for P&M (about 1.24-1.45);
- ``joint - nmc`` (points): what fine-tuning on all tasks at once adds over frozen
  features;
- seq's task-incremental forgetting (points): what sequential LoRA loses on old tasks
  with the task given, that is the backbone's drift.

The papers' row (``data/paper_signature.csv``) is ImageNet-R in 10 tasks on ViT-B/16:
seq, averaging and P&M from arXiv 2505.22389, the nearest class mean on frozen features
from SimpleCIL (arXiv 2303.07338) as a range, final to average accuracy. What a regime
lacks is read off the calibration rule's criteria (a)-(d)
(:mod:`clmerge.experiment.renditions_calibration`) applied to the means, so the words on
the page and the rule that chose the benchmark are the same numbers. Runs nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from clmerge.experiment import renditions_calibration as RC
from clmerge.paths import data_dir

PAPER_CSV = data_dir() / "paper_signature.csv"
# column -> (label shown, digits)
COLUMNS = {
    "seq_over_nmc": ("seq / class means", 2),
    "average_over_nmc": ("averaging / class means", 2),
    "pm_over_nmc": ("P&M / class means", 2),
    "joint_minus_nmc": ("joint − class means", 1),
    "seq_til_forgetting": ("seq's TIL forgetting", 1),
}
# computed per seed for the calibration rule's criterion (d), not shown as a column
NMC_OVER_JOINT = "nmc_over_joint"


def criteria_short() -> dict[str, str]:
    """The calibration rule's criteria (a)-(d) in a table cell's words, with its bounds."""
    lo, hi = RC.SEQ_OVER_NMC
    dlo, dhi = RC.NMC_OVER_JOINT
    return {"a": f"joint − class means ≥ {RC.JOINT_GAIN_MIN:g}",
            "b": f"seq / class means in [{lo:g}, {hi:g}]",
            "c": f"seq's TIL forgetting ≥ {RC.TIL_FORGETTING_MIN:g}",
            "d": f"class means / joint in [{dlo:g}, {dhi:g}]"}


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """The signature of each seed (index: seed; columns: :data:`COLUMNS` and
    :data:`NMC_OVER_JOINT`, NaN where a variant it needs has no run for that seed, or
    joint's accuracy is 0) from a tidy frame with ``variant``,
    ``seed``, ``cil_A_last`` and ``til_forgetting`` (fractions)."""
    def column(variant: str, key: str) -> pd.Series:
        sub = df[df["variant"] == variant]
        return (sub.groupby("seed")[key].mean() * 100.0).astype(float)

    seeds = sorted(set(df["seed"])) if len(df) else []
    nmc = column("nmc", "cil_A_last").reindex(seeds)
    out = pd.DataFrame(index=pd.Index(seeds, name="seed"))
    out["seq_over_nmc"] = column("seq", "cil_A_last").reindex(seeds) / nmc
    out["average_over_nmc"] = column("average", "cil_A_last").reindex(seeds) / nmc
    out["pm_over_nmc"] = column("pm", "cil_A_last").reindex(seeds) / nmc
    out["joint_minus_nmc"] = column("joint", "cil_A_last").reindex(seeds) - nmc
    out["seq_til_forgetting"] = column("seq", "til_forgetting").reindex(seeds)
    out[NMC_OVER_JOINT] = (nmc / column("joint", "cil_A_last").reindex(seeds)).replace(
        [np.inf, -np.inf], np.nan)
    return out


def summary(df: pd.DataFrame) -> dict:
    """Per column of :func:`per_seed`: mean, SD and number of seeds with a value."""
    seeds = per_seed(df)
    out = {}
    for col in seeds.columns:
        v = seeds[col].dropna()
        out[col] = {"mean": float(v.mean()) if len(v) else math.nan,
                    "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": len(v)}
    return out


def lacks(means: Mapping[str, float]) -> list[str]:
    """The calibration rule's criteria the means miss, in words (those whose numbers
    are missing are left out): ``means`` holds ``seq_over_nmc``, ``joint_minus_nmc``,
    ``seq_til_forgetting`` and ``nmc_over_joint``."""
    nan = math.nan
    short = RC.shortfall(joint_minus_nmc=means.get("joint_minus_nmc", nan),
                         seq_over_nmc=means.get("seq_over_nmc", nan),
                         seq_til_forgetting=means.get("seq_til_forgetting", nan),
                         nmc_over_joint=means.get("nmc_over_joint", nan))
    words = criteria_short()
    return [f"({k}) {words[k]}" for k, s in short.items() if not math.isnan(s) and s > 0]


def _cell(stats: Mapping, digits: int) -> str:
    if not stats["n"]:
        return "–"
    text = f"{stats['mean']:.{digits}f}"
    return text + (f" ± {stats['sd']:.{digits}f}" if not math.isnan(stats["sd"]) else "")


def paper_row(path: str | Path = PAPER_CSV) -> dict[str, str]:
    """The papers' signature as table cells: ratios as ranges over the nmc range."""
    p = pd.read_csv(path).iloc[0]
    lo, hi = float(p["nmc_low"]), float(p["nmc_high"])

    def ratio(x: float) -> str:
        return f"{x / hi:.2f}–{x / lo:.2f}"
    return {"seq_over_nmc": ratio(p["seq"]), "average_over_nmc": ratio(p["average"]),
            "pm_over_nmc": ratio(p["pm"]), "joint_minus_nmc": "not published",
            "seq_til_forgetting": "not published"}


def paper_label(path: str | Path = PAPER_CSV) -> str:
    p = pd.read_csv(path).iloc[0]
    from clmerge.report.names import benchmark as bench_name
    return f"the papers ({bench_name(p['benchmark'])}, {int(p['tasks'])} tasks)"


def table(runs: Mapping[str, pd.DataFrame], paper: bool = True) -> pd.DataFrame:
    """One row per regime (``runs``: label -> tidy frame), the papers' first: each
    signature number as mean ± SD over seeds, the seeds, and the calibration rule's
    criteria the regime misses (:func:`lacks`)."""
    rows = []
    if paper:
        rows.append({"regime": paper_label(), **{COLUMNS[c][0]: v
                                                 for c, v in paper_row().items()},
                     "seeds": "–", "misses": "–"})
    for label, df in runs.items():
        stats = summary(df)
        missed = lacks({c: s["mean"] for c, s in stats.items()})
        rows.append({"regime": label,
                     **{COLUMNS[c][0]: _cell(stats[c], COLUMNS[c][1]) for c in COLUMNS},
                     "seeds": max((stats[c]["n"] for c in COLUMNS), default=0),
                     "misses": "; ".join(missed) if missed else "none"})
    return pd.DataFrame(rows).set_index("regime")

