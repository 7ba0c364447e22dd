"""Summary tables: mean +- std over seeds, one row per variant.

Every table a chapter shows names its rows with :func:`clmerge.report.names.readable`,
rounds to one decimal, and fits the text column: :func:`summary` is displayed as two
tables, class-incremental and task-incremental, one under the other.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from clmerge.paths import data_dir
from clmerge.report.names import column, readable, readable_columns, readable_index
from clmerge.report.style import PROTOCOL_NAMES, order

METRICS = ["A_last", "A_avg", "forgetting"]
# per-task means beside their pooled versions (accuracy over every seen test sample)
POOLED_METRICS = ["A_last", "A_last_pooled", "A_avg", "A_avg_pooled", "forgetting"]
PM = "\u00a0±\u00a0"  # non-breaking, so a cell never wraps inside a number


def number(x) -> str:
    """One decimal; a nonzero value that would show as 0.0 keeps two significant digits."""
    if isinstance(x, float) and pd.notna(x) and x != 0 and abs(x) < 0.05:
        return f"{x:.2g}"
    return f"{x:.1f}" if isinstance(x, float) else str(x)


def _html(frame: pd.DataFrame, float_format) -> str:
    """Readable method names in a first column; a ``command`` column that is the same on
    every row is written once under the table instead of in every row."""
    shown = readable_columns(readable_index(pd.DataFrame(frame)).reset_index())
    note = ""
    if "command" in shown.columns and shown["command"].nunique() == 1:
        note = f"<p>Measured by: <code>{html.escape(str(shown['command'].iloc[0]))}</code></p>"
        shown = shown.drop(columns="command")
    return shown.to_html(float_format=float_format, na_rep="-", index=False) + note


class Labelled(pd.DataFrame):
    """A frame that keeps its code labels (``pm[eps=0.3]``) for code and shows readable
    method names in a notebook."""

    @property
    def _constructor(self):
        return pd.DataFrame      # derived frames are plain frames

    def _repr_html_(self):
        return _html(self, None)


class Shown(Labelled):
    """:class:`Labelled`, with numbers shown to one decimal (:func:`number`)."""

    def _repr_html_(self):
        return _html(self, number)


def shown(frame: pd.DataFrame) -> Shown:
    return Shown(frame)


def significant_number(x, digits: int = 3) -> str:
    """``digits`` significant digits: for quantities whose scale varies by orders of
    magnitude (gradient norms, curvatures, finite-difference errors), where a fixed
    number of decimals shows either 0.0 or a dozen digits."""
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


class Significant(Labelled):
    """:class:`Labelled`, with numbers shown to three significant digits."""

    def _repr_html_(self):
        return _html(self, significant_number)


def significant(frame: pd.DataFrame) -> Significant:
    return Significant(frame)


def labelled(frame: pd.DataFrame) -> Labelled:
    return Labelled(frame)


class Summary(Shown):
    """The frame of :func:`summary` (index: variant labels; columns: (CIL|TIL, metric)),
    displayed in a notebook as one table per protocol with readable method names."""

    def tables(self) -> list[tuple[str, pd.DataFrame]]:
        out = []
        for proto in dict.fromkeys(c[0] for c in self.columns if c[0]):
            cols = [c for c in self.columns if c[0] in ("", proto)]
            t = pd.DataFrame(self[cols].values, index=self.index,
                             columns=[c[1].replace("_", " ") for c in cols])
            t.columns = [{"A last": "final accuracy (%)", "A avg": "average accuracy (%)",
                          "forgetting": "forgetting (%)"}.get(c, column(c)) for c in t.columns]
            out.append((PROTOCOL_NAMES.get(proto.lower(), proto), readable_index(t)))
        return out

    def _repr_html_(self):
        return "".join(f"<p><b>{title}</b></p>" + t.reset_index().to_html(index=False)
                       for title, t in self.tables())

    def _repr_markdown_(self):
        return "\n\n".join(f"**{title}**\n\n" + t.to_markdown() for title, t in self.tables())


def _one(x: float) -> str:
    """One decimal, without a negative zero (-0.04 -> "0.0")."""
    text = f"{x:.1f}"
    return "0.0" if text == "-0.0" else text


def summary(df: pd.DataFrame, protocols=("cil", "til"), metrics=METRICS,
            percent: bool = True, pooled: bool = False) -> Summary:
    """Mean and std over seeds of each metric, as "mean +- std" strings (percent, one
    decimal). Displayed as one table per protocol (:class:`Summary`).

    ``pooled`` shows ``POOLED_METRICS``: A_last and AAA as per-task means and pooled over
    every seen test sample (they differ when tasks have different test sizes)."""
    if pooled:
        metrics = POOLED_METRICS
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
                    row[col] = _one(vals.iloc[0])
                else:
                    row[col] = f"{_one(vals.mean())}{PM}{_one(vals.std(ddof=1))}"
        rows.append(row)
    out = pd.DataFrame(rows).set_index("variant")
    out.columns = pd.MultiIndex.from_tuples(
        [("", c) if c == "seeds" else (c.split("_", 1)[0].upper(), c.split("_", 1)[1])
         for c in out.columns])
    return Summary(out)


SHORT_PROTOCOLS = {"cil": "class-incremental", "til": "task-incremental"}


def paired(df: pd.DataFrame, reference: str, variants,
           columns=("cil_A_last", "til_A_last")) -> pd.DataFrame:
    """Each of ``variants`` minus ``reference``, paired by seed: the mean difference in
    points with its 95% t-interval (:func:`clmerge.report.statistics.paired_interval`),
    one column per metric of :data:`clmerge.report.findings.METRICS`, and the number of
    seeds both have. Variants without runs are left out."""
    from clmerge.report.findings import METRICS, Runs   # findings reads this module's frames
    from clmerge.report.statistics import paired_interval

    runs = Runs(df)
    rows = []
    for v in variants:
        if v == reference or v not in runs.variants:
            continue
        row = {"variant": v}
        for col in columns:
            per_seed = METRICS[col].per_seed
            iv = paired_interval(per_seed(runs, v), per_seed(runs, reference))
            row[METRICS[col].label] = iv.text(1)
            row["seeds"] = iv.n
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame(rows).set_index("variant")
    out = out[[c for c in out.columns if c != "seeds"] + ["seeds"]]
    out.index = [f"{readable(v)} − {readable(reference)}" for v in out.index]
    out.index.name = "difference (points, 95% interval)"
    return out


def mean_metric(df: pd.DataFrame, variant: str, column: str) -> float:
    """Mean over seeds of one metric column for one variant (fractions, not percent)."""
    sub = df.loc[df["variant"] == variant, column].dropna()
    if sub.empty:
        raise KeyError(f"no {column} for variant {variant!r}")
    return float(sub.mean())


PAPER_NUMBERS = data_dir() / "paper_numbers.csv"


def cost(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant: MiB persisted across tasks (the most over tasks; joint training: its
    training data), train and merge seconds per run (mean over seeds; wall clock of one
    CPU thread)."""
    from clmerge.report.storage import persisted_MiB

    g = df.groupby("variant")
    out = pd.DataFrame({
        "persisted MiB": persisted_MiB(df),
        "train s / run": g["train_seconds"].mean(),
        "merge s / run": g["merge_seconds"].mean(),
    })
    return shown(out.loc[order(out.index)])


def side_by_side(df: pd.DataFrame, protocol: str, paper_benchmark: str = "imagenet_r",
                 paper_tasks: int = 10, metric: str = "A_last",
                 paper_csv: Path = PAPER_NUMBERS) -> pd.DataFrame:
    """This study's class-incremental ``metric`` next to the paper's for the same method.

    The two columns come from different protocols (named in the column headers); the
    comparison is of orderings and gaps, never of absolute values. A pooled ``metric``
    (``A_last_pooled``) is set beside the paper's number of the same metric (``A_last``).
    """
    paper = pd.read_csv(paper_csv)
    paper = paper[(paper["benchmark"] == paper_benchmark) & (paper["tasks"] == paper_tasks)
                  & (paper["metric"] == metric.removesuffix("_pooled"))]
    paper = paper.drop_duplicates("method", keep="first").set_index("method")
    rows = []
    for variant in order(df["variant"]):
        vals = df.loc[df["variant"] == variant, f"cil_{metric}"].dropna() * 100
        mean = f"{vals.mean():.1f}{PM}{vals.std(ddof=1):.1f}" if len(vals) > 1 else (
            f"{vals.iloc[0]:.1f}" if len(vals) else "-")
        p = paper.loc[variant] if variant in paper.index else None
        rows.append({"variant": variant, f"this study ({protocol})": mean,
                     f"paper ({paper_benchmark} {paper_tasks} tasks, ViT-B/16)":
                         "-" if p is None else f"{p['value']:.2f}",
                     "paper note": "" if p is None or pd.isna(p["note"]) else p["note"]})
    return shown(pd.DataFrame(rows).set_index("variant"))


def cost_per_task(tasks: pd.DataFrame) -> pd.DataFrame:
    """Per variant, from a task frame (``report.task_records.task_frame``): training
    milliseconds per step, merge seconds per task, merge time as a fraction of the same
    task's training time, and bytes persisted after the last task (means over tasks and
    seeds; one CPU thread per run)."""
    t = tasks.assign(ms_per_step=1000 * tasks["train_seconds"] / tasks["train_steps"],
                     merge_ratio=tasks["merge_seconds"] / tasks["train_seconds"])
    last = t[t["task"] == t.groupby("variant")["task"].transform("max")]
    g = t.groupby("variant")
    out = pd.DataFrame({
        "train ms / step": g["ms_per_step"].mean(),
        "merge s / task": g["merge_seconds"].mean(),
        "merge / train (%)": 100 * g["merge_ratio"].mean(),
        "persisted MiB (last task)": last.groupby("variant")["state_MiB"].max(),
    })
    return shown(out.loc[order(out.index)])


CALIBRATION = data_dir() / "calibration" / "glyphs.csv"


class Parts(Labelled):
    """A wide frame shown as several narrower tables (at most 8 columns each), each
    starting with the row's key; an empty cell (NaN) is explained by ``footnote``."""

    parts: list[tuple[str, list[str]]] = []
    footnote: str = ""

    def _repr_html_(self):
        frame = pd.DataFrame(self)
        blocks = []
        for title, cols in self.parts:
            t = frame[[c for c in cols if c in frame.columns]].reset_index()
            blocks.append(f"<p><b>{html.escape(title)}</b></p>"
                          + t.to_html(index=False, na_rep="", float_format=number))
        if self.footnote and frame.isna().to_numpy().any():
            blocks.append(f"<p><small>{html.escape(self.footnote)}</small></p>")
        return "".join(blocks)


def parts(frame: pd.DataFrame, groups: list[tuple[str, list[str]]],
          footnote: str = "") -> Parts:
    out = Parts(frame)
    out.parts, out.footnote = groups, footnote     # instance attributes, not columns
    return out


def calibration(path: str | Path = CALIBRATION) -> pd.DataFrame:
    """The committed calibration table (``clmerge.experiment.calibration``), one row per
    candidate budget (numbered from 1): the budget, then seq and joint accuracy and the
    references (percent), then the targets and the chosen row, as three tables."""
    df = pd.read_csv(path)
    cols = {"head": "head", "head_init": "head init", "lr": "LoRA rate", "epochs": "epochs",
            "batch_size": "batch", "head_lr": "head rate",
            "seq_cil": "sequential, CIL", "seq_til": "sequential, TIL",
            "seq_til_forgetting": "sequential, TIL forgetting", "joint_cil": "joint, CIL",
            "nmc_cil": "class means, CIL", "probe_cil": "probe, CIL",
            "seq_over_nmc": "sequential / class means", "joint_minus_nmc": "joint − class means",
            "ratio_ok": "ratio in [0.75, 1.2]", "joint_ok": "joint ≥ class means + 5",
            "drift_ok": "TIL forgetting ≥ 1", "chosen": "chosen"}
    out = df[[c for c in cols if c in df.columns]].rename(columns=cols)
    for c in ("LoRA rate", "head rate", "head init", "epochs", "batch"):
        if c in out.columns:
            out[c] = out[c].map(lambda x: f"{x:g}" if isinstance(x, float) else str(x))
    if "sequential / class means" in out.columns:
        out["sequential / class means"] = out["sequential / class means"].map("{:.2f}".format)
    for c in ("ratio in [0.75, 1.2]", "joint ≥ class means + 5", "TIL forgetting ≥ 1",
              "chosen"):
        if c in out.columns:
            out[c] = out[c].map(lambda x: "" if pd.isna(x) else ("yes" if x else "no"))
    out.index = pd.RangeIndex(1, len(out) + 1, name="candidate")
    names = list(out.columns)
    return parts(out, [
        ("The candidate budgets", names[:6]),
        ("Accuracy on the calibration stream (%)", names[6:12]),
        ("The targets", names[12:]),
    ], footnote="Empty: joint fine-tuning was not run for that candidate, which had "
                "already missed the ratio target.")


def closed_form(check: dict) -> pd.DataFrame:
    """P&M's closed-form check (``clmerge.experiment.pm_checks.closed_form_check``) as a
    reader reads it: tasks from 1, coefficients to three decimals, and the gap between the
    closed form and the brute-force search in scientific notation (it spans decades)."""
    rows = pd.DataFrame(check["rows"])
    out = pd.DataFrame({
        "closed-form a": rows["a_closed_form"].map("{:.3f}".format),
        "brute-force a": rows["a_brute_force"].map("{:.3f}".format),
        "a the run recorded": rows["a_recorded"].map(
            lambda x: "" if pd.isna(x) else f"{x:.3f}"),
        "|closed form − brute force| (scientific notation)": rows["abs_diff"].map(
            "{:.1e}".format),
    })
    out.index = pd.Index(rows["task"].astype(int) + 1, name="task")
    return labelled(out)
