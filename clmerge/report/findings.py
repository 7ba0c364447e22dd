"""The claims of the two papers, tested on this study's runs (the findings page).

The claims are data: ``data/claims.csv``, one row per claim with

* ``id``, ``claim`` (one sentence), ``source`` (arXiv id of the paper that makes it);
* ``a``, ``b``: the variants compared (labels as in the chapters), the claim being about
  ``metric(a) - metric(b)``; an empty ``b`` tests ``metric(a)`` itself, and
  ``best:X|Y|...`` stands for whichever of X, Y, ... has the highest mean on that
  benchmark (chosen on the same runs, which favours the chosen one);
* ``metric``: a column of the results frame (accuracies in percent points) or one of the
  derived per-seed metrics in :data:`METRICS`;
* ``rule``: how the paired interval decides (:mod:`clmerge.report.statistics`);
* ``paper_differences`` (``benchmark/tasks value; ...``), ``paper_mean``: the paper's own
  difference per benchmark and its mean, where it publishes one; ``paper_note``.

:func:`evaluate` computes, per claim and benchmark, the per-seed values, their paired
95% interval and the verdict, by :func:`clmerge.report.statistics.verdict` only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from clmerge.paths import data_dir
from clmerge.report import statistics
from clmerge.report.names import benchmark as bench_name
from clmerge.report.names import readable
from clmerge.report.task_records import task_frame

CLAIMS_CSV = data_dir() / "claims.csv"
NOT_RUN = "not run"


@dataclass(frozen=True)
class Metric:
    label: str
    unit: str
    digits: int
    per_seed: Callable[["Runs", str], pd.Series]
    # The range the metric's values can take (a correlation: [-1, 1]). The t-interval of a
    # claim on the metric itself (no comparison variant) is cut to it: a mean of
    # correlations near 1 over few seeds otherwise reaches past 1.
    bounds: tuple[float, float] | None = None


class Runs:
    """The runs of one benchmark (a tidy frame with ``variant`` and ``seed``), with the
    per-task frame read from their result files on first use."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        self._tasks: pd.DataFrame | None = None

    @property
    def variants(self) -> set[str]:
        return set(self.df["variant"]) if len(self.df) else set()

    def tasks(self) -> pd.DataFrame:
        if self._tasks is None:
            self._tasks = task_frame(self.df)
        return self._tasks

    def column(self, variant: str, column: str, scale: float = 1.0) -> pd.Series:
        sub = self.df[self.df["variant"] == variant]
        return (sub.set_index("seed")[column].astype(float) * scale).sort_index()

    def task_rows(self, variant: str) -> pd.DataFrame:
        t = self.tasks()
        return t[t["variant"] == variant] if len(t) else t


def _column_metric(column: str) -> Callable[[Runs, str], pd.Series]:
    scale = 100.0 if column.startswith(("cil_", "til_")) else 1.0
    return lambda runs, variant: runs.column(variant, column, scale)


def grad_ratio(runs: Runs, variant: str) -> pd.Series:
    """Per seed: mean gradient norm of the mergeable weights over the first training
    steps of tasks 2..T (each starting from the method's merged model) over that of task
    1 (starting from the pretrained model)."""
    t = runs.task_rows(variant)
    col = "dense_grad_norm_first_mean"
    if t.empty or col not in t:
        return pd.Series(dtype=float)
    first = t[t["task"] == 1].set_index("seed")[col]
    later = t[t["task"] > 1].groupby("seed")[col].mean()
    return (later / first).dropna().sort_index()


def coef_curvature_rho(runs: Runs, variant: str) -> pd.Series:
    """Per seed: Spearman rank correlation, over tasks 2..T, between the merge coefficient
    a_t and the new task's share of the curvature, tr F_t / sum_{i<=t} tr F_i (the
    recorded Fisher traces; the closed form weighs each task by its Fisher)."""
    t = runs.task_rows(variant)
    if t.empty or "fisher_trace" not in t:
        return pd.Series(dtype=float)
    out = {}
    for seed, g in t.sort_values("task").groupby("seed"):
        share = g["fisher_trace"] / g["fisher_trace"].cumsum()
        keep = (g["task"] > 1) & g["coefficient"].notna() & share.notna()
        if keep.sum() >= 3:
            out[seed] = g.loc[keep, "coefficient"].corr(share[keep], method="spearman")
    return pd.Series(out, dtype=float).dropna().sort_index()


def old_slope_til(runs: Runs, variant: str) -> pd.Series:
    """Per seed: least-squares slope (points per task) of the mean task-incremental
    accuracy on the old tasks 1..t-1 right after merging task t, over t = 2..T."""
    t = runs.task_rows(variant)
    if t.empty or "til_old" not in t:
        return pd.Series(dtype=float)
    out = {}
    for seed, g in t.groupby("seed"):
        g = g[(g["task"] > 1) & g["til_old"].notna()]
        if len(g) >= 2:
            out[seed] = float(np.polyfit(g["task"], 100 * g["til_old"], 1)[0])
    return pd.Series(out, dtype=float).sort_index()


METRICS: dict[str, Metric] = {
    "cil_A_last": Metric("final class-incremental accuracy", "points", 1,
                          _column_metric("cil_A_last")),
    "til_A_last": Metric("final task-incremental accuracy", "points", 1,
                          _column_metric("til_A_last")),
    "cil_A_avg": Metric("average class-incremental accuracy", "points", 1,
                          _column_metric("cil_A_avg")),
    "til_forgetting": Metric("task-incremental forgetting", "points", 1,
                             _column_metric("til_forgetting")),
    "grad_ratio": Metric("start-of-task gradient norm, tasks 2..T / task 1", "ratio", 2,
                         grad_ratio),
    "coef_curvature_rho": Metric("Spearman correlation of a_t with tr F_t / sum_i<=t tr F_i",
                                 "rho", 2, coef_curvature_rho, bounds=(-1.0, 1.0)),
    "old_slope_til": Metric("slope of old-task task-incremental accuracy after each merge",
                            "points per task", 2, old_slope_til),
    "persisted_MiB": Metric("bytes kept between tasks (max over tasks)", "MiB", 1,
                            lambda runs, v: runs.column(v, "state_bytes_max", 2.0 ** -20)),
}


def study_benchmarks(profile: str) -> list[str]:
    """The benchmarks a profile's findings are reported on: its default benchmark, then
    those listed under ``study_benchmarks`` in the profile YAML."""
    from clmerge.experiment.config import load_profile, make_config

    first = make_config("seq", None, profile, 0).benchmark
    listed = load_profile(profile).get("study_benchmarks") or []
    return list(dict.fromkeys([first, *listed]))


# ---------------------------------------------------------------- the claims table


def load_claims(path: str | Path = CLAIMS_CSV) -> pd.DataFrame:
    """The claims table, checked: known metrics, parseable rules, unique ids."""
    claims = pd.read_csv(path, dtype={"b": str, "paper_differences": str, "paper_note": str},
                         keep_default_na=False, na_values={"paper_mean": [""]})
    if claims["id"].duplicated().any():
        raise ValueError(f"{path}: duplicate claim ids")
    for _, c in claims.iterrows():
        if c["metric"] not in METRICS:
            raise ValueError(f"{path}: claim {c['id']}: unknown metric {c['metric']!r}; "
                             f"metrics: {', '.join(METRICS)}")
        statistics.parse_rule(c["rule"])
    return claims


def paper_differences(text: str) -> dict[str, float]:
    """``"imagenet_r/10 +14.23; cub200/10 +13.47"`` -> ``{"imagenet_r/10": 14.23, ...}``."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text or "").split(";"))):
        key, value = part.rsplit(" ", 1)
        out[key.strip()] = float(value)
    return out


def candidates(b: str) -> list[str]:
    """The variants ``b`` may stand for (``best:X|Y`` -> [X, Y])."""
    if not b:
        return []
    return b.split(":", 1)[1].split("|") if b.startswith("best:") else [b]


def variants_needed(claims: pd.DataFrame) -> list[str]:
    """Every variant the claims compare, in first-mention order."""
    out: dict[str, None] = {}
    for _, c in claims.iterrows():
        out[c["a"]] = None
        for v in candidates(c["b"]):
            out[v] = None
    return list(out)


def _pick_best(runs: Runs, metric: Metric, options: list[str]) -> str | None:
    means = {v: metric.per_seed(runs, v).mean() for v in options if v in runs.variants}
    means = {v: m for v, m in means.items() if not math.isnan(m)}
    return max(means, key=means.get) if means else None


def evaluate_claim(claim: Mapping, runs: Runs) -> dict:
    """One claim on one benchmark: per-seed values, interval, verdict and why."""
    metric = METRICS[claim["metric"]]
    paper = claim.get("paper_mean")
    paper = None if paper is None or (isinstance(paper, float) and math.isnan(paper)) else float(paper)
    b = claim["b"]
    b_label = _pick_best(runs, metric, candidates(b)) if b.startswith("best:") else b
    row = {"id": claim["id"], "a": claim["a"], "b": b_label or "", "metric": claim["metric"],
           "rule": claim["rule"], "paper_mean": paper}
    missing = [v for v in [claim["a"]] + ([b_label] if b else []) if v and v not in runs.variants]
    if missing or (b and not b_label):
        what = ", ".join(missing) or " / ".join(candidates(b))
        return {**row, "n": 0, "mean": np.nan, "lo": np.nan, "hi": np.nan, "sd": np.nan,
                "detectable": np.nan, "verdict": NOT_RUN, "why": f"no runs of {what}"}
    a_vals = metric.per_seed(runs, claim["a"])
    values = (statistics.paired_differences(a_vals, metric.per_seed(runs, b_label))
              if b else a_vals)
    if not len(values.dropna()):   # runs of both, but of no seed in common
        return {**row, "n": 0, "mean": np.nan, "lo": np.nan, "hi": np.nan, "sd": np.nan,
                "detectable": np.nan, "verdict": NOT_RUN,
                "why": "no seed has runs of both" if b else "no value on any seed"}
    iv = statistics.interval(values)
    if metric.bounds and not b and iv.has_interval:
        iv = dataclasses.replace(iv, lo=max(iv.lo, metric.bounds[0]),
                                 hi=min(iv.hi, metric.bounds[1]))
    verdict, why = statistics.verdict(iv, claim["rule"], paper, values=values,
                                      digits=metric.digits)
    if b.startswith("best:"):
        why = f"best baseline here: {readable(b_label)}; " + why
    return {**row, "n": iv.n, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "sd": iv.sd,
            "detectable": iv.half_width, "verdict": verdict, "why": why,
            "values": values.round(4).to_dict()}


def evaluate(claims: pd.DataFrame, runs_by_benchmark: Mapping[str, pd.DataFrame | Runs]
             ) -> pd.DataFrame:
    """One row per claim x benchmark: n, mean, lo, hi, sd (of the paired differences),
    detectable (the interval's half-width), verdict, why."""
    rows = []
    for bench, runs in runs_by_benchmark.items():
        runs = runs if isinstance(runs, Runs) else Runs(runs)
        for _, c in claims.iterrows():
            rows.append({"benchmark": bench, **evaluate_claim(c.to_dict(), runs)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- tables for the page


def _paper_cell(c: Mapping) -> str:
    diffs = paper_differences(c["paper_differences"])
    if diffs:
        lo, hi = min(diffs.values()), max(diffs.values())
        return f"{c['paper_mean']:+.1f} ({lo:+.1f} to {hi:+.1f}, {len(diffs)} benchmarks)"
    note = str(c["paper_note"])
    for kind in ("qualitative", "by construction"):
        if note.startswith(kind):
            return kind
    return "no published difference"


def ours_cell(r: Mapping) -> str:
    """Our reading of one row of :func:`evaluate`'s frame: mean [95% interval] in the
    claim metric's digits, the mean alone for a quantity that is 0 by construction, "-"
    when the claim did not run."""
    if r["verdict"] == NOT_RUN:
        return "-"
    digits = METRICS[r["metric"]].digits
    if r["rule"] == "zero":
        return f"{r['mean']:.{digits}f} {METRICS[r['metric']].unit} (mean, {r['n']} seeds)"
    iv = statistics.Interval(r["mean"], r["lo"], r["hi"], r["sd"], int(r["n"]), r["detectable"])
    return iv.text(digits)


def findings_table(claims: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: the paper's figure, ours per benchmark (mean [95% interval]),
    the verdict per benchmark, and why."""
    benches = list(dict.fromkeys(long["benchmark"]))
    rows = []
    for _, c in claims.iterrows():
        b = c["b"]
        if b.startswith("best:"):
            b = f"best of {len(candidates(b))} mergers"
        row = {"claim": f"{c['id']}. {c['claim']}",
               "compared": (f"{readable(c['a'])} − {readable(b)}" if b
                            else readable(c["a"])),
               "metric": METRICS[c["metric"]].label + f" ({METRICS[c['metric']].unit})",
               "paper": _paper_cell(c)}
        whys = []
        for bench in benches:
            r = long[(long["id"] == c["id"]) & (long["benchmark"] == bench)].iloc[0]
            row[f"ours: {bench}"] = ours_cell(r)
            row[f"verdict: {bench}"] = r["verdict"]
            whys.append((f"{bench}: " if len(benches) > 1 else "") + r["why"])
        row["why"] = " / ".join(whys)
        rows.append(row)
    return pd.DataFrame(rows).set_index("claim")


def findings_tables(claims: pd.DataFrame, long: pd.DataFrame
                    ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """:func:`findings_table` in parts that fit a page: the claims (claim, compared,
    metric, paper), then per benchmark our reading (ours, verdict, why) indexed by the
    claim's id; the benchmarks keyed by the names a reader reads."""
    table = findings_table(claims, long)
    per_bench = {}
    for bench in dict.fromkeys(long["benchmark"]):
        rows = []
        for _, c in claims.iterrows():
            r = long[(long["id"] == c["id"]) & (long["benchmark"] == bench)].iloc[0]
            rows.append({"claim": c["id"], "ours": ours_cell(r), "verdict": r["verdict"],
                         "why": r["why"]})
        per_bench[bench_name(bench)] = pd.DataFrame(rows).set_index("claim")
    return table[["compared", "metric", "paper"]], per_bench


def markdown_table(table: pd.DataFrame) -> str:
    """A frame as a Markdown table (index first), for a page that wraps long cells."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    header = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([cell(idx)] + [cell(v) for v in row]) + " |")
    return "\n".join(lines)


def power_table(long: pd.DataFrame) -> pd.DataFrame:
    """Per claim with a published effect and per benchmark: seeds, SD of the paired
    differences, the smallest difference the design detects, the paper's effect and
    whether that effect is larger ("yes"/"no")."""
    sub = long[long["paper_mean"].notna() & (long["verdict"] != NOT_RUN)]
    out = sub.assign(**{"seeds": sub["n"].astype(int),
                        "SD of paired differences": sub["sd"].round(2),
                        "detectable (95% half-width)": sub["detectable"].round(2),
                        "paper's effect": sub["paper_mean"].round(2),
                        "paper's effect visible": (sub["detectable"] < sub["paper_mean"].abs())
                        .map({True: "yes", False: "no"}),
                        "claim": sub["id"]})
    return out.set_index(["claim", "benchmark"])[
        ["seeds", "SD of paired differences", "detectable (95% half-width)", "paper's effect",
         "paper's effect visible"]]


def verdict_counts(long: pd.DataFrame) -> pd.DataFrame:
    """How many claims got each verdict, per benchmark."""
    return (long.groupby(["benchmark", "verdict"]).size().unstack(fill_value=0)
            .reindex(columns=[*statistics.VERDICTS, NOT_RUN], fill_value=0))
