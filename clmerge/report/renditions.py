"""The glyph renditions calibration as a reader sees it: the grid, the rule, the chosen
cell and the budgets across drift.

Reads the committed tables that :mod:`clmerge.experiment.renditions_calibration` writes
(``data/calibration/renditions.csv`` and ``renditions_drift.csv``); runs nothing. The
rule's bounds are that module's constants, so the text shown and the rule applied are
the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clmerge.experiment import renditions_calibration as RC
from clmerge.report.names import benchmark, readable
from clmerge.report.tables import parts, shown

SEQ, JOINT, NMC = readable("seq"), readable("joint"), readable("nmc")


def criteria_text() -> dict[str, str]:
    """Each criterion (a)-(d) in words, with the bound the rule applies."""
    lo, hi = RC.SEQ_OVER_NMC
    dlo, dhi = RC.NMC_OVER_JOINT
    return {
        "a": f"fine-tuning pays: {JOINT} − {NMC} ≥ {RC.JOINT_GAIN_MIN:g} points",
        "b": f"{SEQ} sits near the frozen-feature reference: {SEQ} / {NMC} in "
             f"[{lo:g}, {hi:g}]",
        "c": f"the backbone forgets: {SEQ}'s task-incremental forgetting ≥ "
             f"{RC.TIL_FORGETTING_MIN:g} points",
        "d": f"the frozen features are good but not enough: {NMC} / {JOINT} in "
             f"[{dlo:g}, {dhi:g}]",
    }


def rule() -> str:
    """The rule as Markdown: the four criteria, then how a cell is chosen."""
    lines = [f"A cell qualifies when, in class-incremental final accuracy on "
             f"{benchmark(RC.BENCHMARK)} (seed {RC.SEED}):", ""]
    lines += [f"- ({k}) {t};" for k, t in criteria_text().items()]
    lines += ["", f"Among the cells that qualify, the one whose {SEQ} / {NMC} is closest to "
              f"{RC.TARGET_SEQ_OVER_NMC:g}. When none qualifies, the closest cell: the fewest "
              "criteria missed, then the smallest total shortfall (each criterion's "
              "distance past its bound in units of the bound's scale)."]
    return "\n".join(lines)


def styles(text: str) -> str:
    """``plain:2,low_contrast`` -> ``plain ×2, low contrast``."""
    out = []
    for s in str(text).split(","):
        name, _, weight = s.strip().partition(":")
        out.append(name.replace("_", " ") + (f" ×{weight}" if weight else ""))
    return ", ".join(out)


def _yes(x) -> str:
    if isinstance(x, str):
        x = {"True": True, "False": False}.get(x, x)
    return "" if pd.isna(x) else ("yes" if bool(x) else "no")


def grid(path: str | Path = RC.TABLE) -> pd.DataFrame:
    """The committed grid, one row per cell (numbered from 1): the cell's settings, the
    three runs' class-incremental accuracy and seq's task-incremental forgetting (%), then
    the four numbers of the rule and whether each holds, and the chosen (or closest) cell."""
    df = pd.read_csv(path)
    k = criteria_text()
    qualifies = df["qualifies"].astype(str).eq("True").any()
    out = pd.DataFrame({
        "styles": df["rendition_styles"].map(styles),
        "images per class": df["rendition_train_per_class"].astype(int).astype(str),
        "epochs": df["epochs"].astype(int).astype(str),
        "LoRA rate": df["lr"].map("{:g}".format),
        NMC: df["nmc_cil"], JOINT: df["joint_cil"], SEQ: df["seq_cil"],
        f"{SEQ}, TIL forgetting": df["seq_til_forgetting"],
        f"(a) {JOINT} − {NMC}": df["joint_minus_nmc"],
        f"(b) {SEQ} / {NMC}": df["seq_over_nmc"].map(_ratio),
        f"(d) {NMC} / {JOINT}": df["nmc_over_joint"].map(_ratio),
    })
    for c in "abcd":
        out[f"({c}) holds"] = df[f"{c}_ok"].map(_yes)
    out["criteria met"] = df["met"].astype(int).astype(str)
    out["chosen" if qualifies else "closest"] = df["chosen"].map(_yes)
    out.index = pd.RangeIndex(1, len(out) + 1, name="cell")
    names = list(out.columns)
    return parts(out, [
        ("The cells", names[:4]),
        ("Accuracy on the calibration twin (%)", names[4:8]),
        ("The rule's numbers", names[8:11]),
        ("Which criteria hold: " + "; ".join(f"({c}) {t}" for c, t in k.items()),
         names[11:]),
    ], footnote="Empty: the run was not made, so the criteria that need it are unknown.")


def _ratio(x) -> str:
    return "" if pd.isna(x) else f"{x:.2f}"


def chosen(path: str | Path = RC.TABLE) -> str:
    """Markdown: how many cells qualify and the chosen cell, with the criteria it meets
    and, for each it misses, its number against the bound. Says plainly when no cell
    meets all four."""
    df = pd.read_csv(path)
    n = len(df)
    rows = df[df["chosen"].astype(str) == "True"]
    if rows.empty:
        return f"No cell of the {n} has all four numbers yet: nothing is chosen."
    i = rows.index[0]
    r = rows.iloc[0]
    met = [c for c in "abcd" if _yes(r[f"{c}_ok"]) == "yes"]
    missed = [c for c in "abcd" if c not in met]
    cell = (f"cell {i + 1}: styles {styles(r['rendition_styles'])}, "
            f"{int(r['rendition_train_per_class'])} images per class, {int(r['epochs'])} "
            f"epochs, LoRA rate {r['lr']:g}")
    nums = {"a": f"{JOINT} − {NMC} = {r['joint_minus_nmc']:.1f} points",
            "b": f"{SEQ} / {NMC} = {r['seq_over_nmc']:.2f}",
            "c": f"{SEQ}'s task-incremental forgetting = {r['seq_til_forgetting']:.1f} "
                 "points",
            "d": f"{NMC} / {JOINT} = {r['nmc_over_joint']:.2f}"}
    k = criteria_text()
    n_ok = int(df["qualifies"].astype(str).eq("True").sum())
    if not missed:
        return (f"{n_ok} of the {n} cells meet (a)-(d); the rule chooses {cell}, whose "
                f"{SEQ} / {NMC} ({r['seq_over_nmc']:.2f}) is the closest to "
                f"{RC.TARGET_SEQ_OVER_NMC:g}. It meets all four: "
                + "; ".join(nums[c] for c in "abcd") + ".")
    return (f"**No cell of the {n} meets all four criteria.** The rule's closest cell is "
            f"{cell}. It meets " + (", ".join(f"({c})" for c in met) or "none")
            + " and misses " + "; ".join(f"({c}) {k[c]}, with {nums[c]}" for c in missed)
            + ". The rule is applied as written; this cell is the calibrated budget "
              "because it is the closest, not because it has the papers' signature.")


def drift(path: str | Path = RC.DRIFT_TABLE) -> pd.DataFrame:
    """The committed drift table: seq at the chosen cell's data and epochs, one row per
    LoRA rate, its class-incremental accuracy and task-incremental forgetting (%), and the
    budget each rate is (calibrated, milder, stronger) by
    :func:`clmerge.experiment.renditions_calibration.drift_budgets`."""
    d = pd.read_csv(path)
    d["calibrated"] = d["calibrated"].astype(str).eq("True")
    budgets = RC.drift_budgets(d)
    which = {lr: name for name, lr in budgets.items()}
    out = pd.DataFrame({
        "LoRA rate": d["lr"].map("{:g}".format),
        f"{SEQ}, class-incremental": d["seq_cil"],
        f"{SEQ}, TIL forgetting": d["seq_til_forgetting"],
        "budget": [next((n for lr, n in which.items() if abs(lr - x) <= 1e-12 * x), "")
                   for x in d["lr"]],
    }).sort_values("LoRA rate", key=lambda s: s.astype(float))
    return shown(out.set_index("LoRA rate"))
