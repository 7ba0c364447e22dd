"""The regime map: where merging helps, against the severity of backbone drift.

Drift is set by the LoRA learning rate: at a small rate each task moves the backbone
little and sequential fine-tuning (seq) forgets little; at a large one every task
overwrites the last. For each benchmark and rate, every method runs with the same seeds as
seq, and its gain over seq is the paired difference of final accuracy, seed by seed, with
its 95% t-interval (:mod:`clmerge.report.statistics`), in class- and task-incremental
evaluation. Seq's own task-incremental forgetting at each rate is the measured drift.

:func:`head_competition` looks at where a class-incremental gain or loss comes from. With
one head per task and no task id, a prediction is the best class over every seen head; a
merge that pulls the backbone back from where the newest task's head was trained can make
that head lose to the older ones although each task, alone, is still recognised
(task-incremental accuracy holds). It compares, paired by seed, the class-incremental
accuracy on the newest task's classes right after its merge
(:func:`clmerge.experiment.metrics.newest`) and on the first task's classes at the end
(:func:`clmerge.experiment.metrics.oldest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from clmerge.experiment import metrics
from clmerge.experiment.config import make_config
from clmerge.experiment.results import read_result
from clmerge.report import statistics, study
from clmerge.report.style import PROTOCOL_NAMES, linestyle
from clmerge.report.tables import labelled

REGIME_VARIANTS = ["average", "ties", "magmax", "pm", "pm[perturbation=none]", "trm"]
# A benchmark without its own list of rates: the profile's rate times these factors,
# from milder drift to stronger.
DEFAULT_FACTORS = (0.1, 0.3, 1.0, 3.0)


def learning_rates(profile: str, benchmark: str | None = None,
                   lrs: Mapping[str, Iterable[float]] | None = None) -> list[float]:
    """The LoRA learning rates of the map for one benchmark: ``lrs[benchmark]`` when
    given, else the profile's rate times :data:`DEFAULT_FACTORS`."""
    cfg = make_config("seq", benchmark, profile, 0)
    if lrs and cfg.benchmark in lrs:
        return sorted(float(x) for x in lrs[cfg.benchmark])
    return [float(f"{cfg.lr * f:.3g}") for f in DEFAULT_FACTORS]


def ensure(variants: Iterable[str], profile: str, benchmark: str | None, seeds,
           lrs: Iterable[float], results_dir: str | Path | None = None, force: bool = False,
           reference: str = "seq") -> pd.DataFrame:
    """Load (or compute) ``reference`` and every variant at every rate; the tidy frame
    with an ``lr`` column."""
    variants = [reference] + [v for v in variants if v != reference]
    frames = [study.ensure_results(variants, profile, benchmark, seeds, results_dir, force,
                                   overrides={"lr": lr}).assign(lr=lr)
              for lr in lrs]
    return pd.concat(frames, ignore_index=True)


def ensure_check(checks: Mapping[str, Mapping], variants: Iterable[str], profile: str,
                 benchmarks: Iterable[str], seeds, results_dir: str | Path | None = None,
                 force: bool = False, reference: str = "seq") -> pd.DataFrame:
    """The runs of a check beside the map: for each benchmark of ``checks`` that is also in
    ``benchmarks``, ``reference`` and ``variants`` with the overrides it gives (``lr``
    among them), in :func:`ensure`'s layout. The ``benchmark`` column names the overrides
    other than ``lr`` (``split_mnist5k [head=cosine]``), so that the check's rows stand
    apart from the map's in :func:`gains`, :func:`head_competition` and :func:`table`."""
    benchmarks = list(benchmarks)
    variants = [reference] + [v for v in variants if v != reference]
    frames = []
    for bench, overrides in checks.items():
        if bench not in benchmarks:
            continue
        overrides = dict(overrides)
        if "lr" not in overrides:
            raise ValueError(f"the check on {bench} must give its LoRA rate (lr): {overrides}")
        label = ", ".join(f"{k}={v}" for k, v in overrides.items() if k != "lr")
        frames.append(study.ensure_results(variants, profile, bench, seeds, results_dir, force,
                                           overrides=overrides)
                      .assign(lr=float(overrides["lr"]), benchmark=f"{bench} [{label}]"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gains(df: pd.DataFrame, reference: str = "seq", protocols=("cil", "til"),
          metric: str = "A_last") -> pd.DataFrame:
    """One row per benchmark, rate, variant and protocol: the paired gain over
    ``reference`` in points (n, mean, lo, hi, sd, half_width), and ``drift``: the
    reference's task-incremental forgetting (points, mean over seeds) at that rate."""
    rows = []
    for (bench, lr), at in df.groupby(["benchmark", "lr"], sort=True):
        ref = at[at["variant"] == reference].set_index("seed")
        if ref.empty:
            continue
        drift = 100 * ref["til_forgetting"].mean()
        for v in [v for v in dict.fromkeys(at["variant"]) if v != reference]:
            sub = at[at["variant"] == v].set_index("seed")
            for p in protocols:
                col = f"{p}_{metric}"
                iv = statistics.paired_interval(100 * sub[col], 100 * ref[col])
                rows.append({"benchmark": bench, "lr": lr, "variant": v, "protocol": p,
                             "n": iv.n, "mean": iv.mean, "lo": iv.lo, "hi": iv.hi,
                             "sd": iv.sd, "half_width": iv.half_width, "drift": drift})
    return pd.DataFrame(rows)


# The measures of :func:`head_competition`, with the label its rows carry.
HEAD_MEASURES = {"newest": "newest task, right after its merge",
                 "oldest": "first task, at the end"}


def head_competition(runs: pd.DataFrame, reference: str = "seq") -> pd.DataFrame:
    """Class-incremental accuracy on the newest task right after its merge and on the first
    task at the end (:data:`HEAD_MEASURES`), as paired gains over ``reference`` in the
    layout of :func:`gains` (``protocol`` holds the measure's label) with
    ``reference_level``: the reference's own mean, in points.

    ``runs`` is the frame of :func:`ensure`; each run's accuracy matrix is read from its
    ``R`` column when there is one, else from its result file (``path``)."""
    if runs.empty:
        return pd.DataFrame()
    frame = runs.copy()
    Rs = list(frame["R"]) if "R" in frame else [read_result(p)["R"] for p in frame["path"]]
    out = []
    for measure, label in HEAD_MEASURES.items():
        col = f"cil_{measure}"
        frame[col] = [getattr(metrics, measure)(R) for R in Rs]
        g = gains(frame, reference, ("cil",), measure)
        if g.empty:
            continue
        ref = frame[frame["variant"] == reference].groupby(["benchmark", "lr"])[col].mean()
        g["reference_level"] = [100 * ref[(b, lr)] for b, lr in zip(g["benchmark"], g["lr"])]
        out.append(g.assign(protocol=label))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def reference_levels(frame: pd.DataFrame) -> pd.DataFrame:
    """The reference's own mean per benchmark and measure (rows) and rate (columns), in
    points, from :func:`head_competition`'s frame."""
    if frame.empty:
        return pd.DataFrame()
    out = frame.pivot_table(index=["benchmark", "protocol"], columns="lr",
                            values="reference_level", aggfunc="first", sort=False).round(1)
    out = out[sorted(out.columns)]
    out.columns = [f"lr {x:g}" for x in out.columns]
    return labelled(out)


def figure(frame: pd.DataFrame, benchmark: str, protocols=("cil", "til"),
           budget: float | None = None, what: str = "gain over sequential LoRA"):
    """Gain over seq (points, 95% paired interval as error bars) against the LoRA rate,
    one panel per protocol; the top axis gives seq's task-incremental forgetting;
    ``budget``, the profile's own rate, is marked by a vertical band."""
    fig = plt.figure(figsize=(8.6, 4.4), layout="constrained")
    _draw(fig, frame, benchmark, protocols, budget, what)
    return fig


def figures(frame: pd.DataFrame, benchmarks, protocols=("cil", "til"),
            budgets: Mapping[str, float] | None = None, what: str = "gain over sequential LoRA"):
    """:func:`figure` for every benchmark, one row each, in one figure (one caption);
    ``budgets``: the profile's rate per benchmark."""
    benchmarks = [b for b in benchmarks if (frame["benchmark"] == b).any()] if len(frame) else []
    if not benchmarks:
        return None
    fig = plt.figure(figsize=(8.6, 4.4 * len(benchmarks)), layout="constrained")
    rows = np.atleast_1d(fig.subfigures(len(benchmarks), 1)) if len(benchmarks) > 1 else [fig]
    for sf, b in zip(rows, benchmarks):
        _draw(sf, frame, b, protocols, (budgets or {}).get(b), what)
    return fig


def profile_budgets(profile: str, benchmarks) -> dict[str, float]:
    """The profile's own LoRA rate per benchmark: the budget every other chapter uses."""
    return {b: float(make_config("seq", b, profile, 0).lr) for b in benchmarks}


def _draw(fig, frame: pd.DataFrame, benchmark: str, protocols, budget: float | None = None,
          what: str = "gain over sequential LoRA"):
    """One benchmark's panels into ``fig`` (a figure or a subfigure)."""
    from clmerge.report.names import benchmark as bench_name
    from clmerge.report.names import readable
    from clmerge.report.style import palette

    sub = frame[frame["benchmark"] == benchmark]
    variants = list(dict.fromkeys(sub["variant"]))
    colours = palette(variants)
    lrs = sorted(set(sub["lr"]))
    axes = np.atleast_2d(fig.subplots(1, len(protocols), squeeze=False, sharex=True))
    offsets = np.linspace(-0.06, 0.06, max(len(variants), 1))
    for ax, proto in zip(axes[0], protocols):
        d = sub[sub["protocol"] == proto]
        for k, v in enumerate(variants):
            dv = d[d["variant"] == v].sort_values("lr")
            if dv.empty:
                continue
            x = dv["lr"].to_numpy() * 10 ** offsets[k]
            err = np.vstack([dv["mean"] - dv["lo"], dv["hi"] - dv["mean"]])
            err = np.where(np.isnan(err), 0.0, err)
            ax.errorbar(x, dv["mean"], yerr=err, color=colours[v], ls=linestyle(v), marker="o",
                        ms=4, capsize=2.5, lw=1.3, label=readable(v))
        ax.axhline(0, color="0.3", lw=0.9, ls=":")
        if budget is not None and lrs and min(lrs) <= budget <= max(lrs):
            ax.axvspan(budget / 10 ** 0.1, budget * 10 ** 0.1, color="0.88", zorder=0, lw=0)
            ax.annotate("the profile's\nbudget", (budget, 1), xycoords=("data", "axes fraction"),
                        xytext=(0, -4), textcoords="offset points", ha="center", va="top",
                        fontsize=7, color="0.35")
        ax.set_xscale("log")
        ax.set_xticks(lrs)
        ax.set_xticklabels([f"{x:g}" for x in lrs])
        ax.minorticks_off()
        ax.set_xlabel("LoRA learning rate (drift grows to the right)")
        ax.set_ylabel(f"{what} (points)")
        ax.set_title(PROTOCOL_NAMES.get(proto, proto), fontsize=10)
        drift = d.drop_duplicates("lr").set_index("lr")["drift"].reindex(lrs)
        top = ax.secondary_xaxis("top")
        top.set_xticks(lrs)
        top.set_xticklabels([f"{f:.0f}" if np.isfinite(f) else "-" for f in drift])
        top.minorticks_off()
        top.set_xlabel("sequential's task-incremental forgetting (points)", fontsize=8)
    n = int(sub["n"].max()) if len(sub) else 0
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3),
                   frameon=False, fontsize=8)
    fig.suptitle(f"{bench_name(benchmark)}: {what}, mean and 95% paired interval "
                 f"over {n} seeds", fontsize=10)


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean gain [95% interval] per benchmark, protocol and variant (rows) and rate
    (columns), in points."""
    if frame.empty:
        return pd.DataFrame()
    cells = frame.assign(cell=[
        statistics.Interval(r.mean, r.lo, r.hi, r.sd, int(r.n), r.half_width).text(1)
        for r in frame.itertuples()])
    out = cells.pivot_table(index=["benchmark", "protocol", "variant"], columns="lr",
                            values="cell", aggfunc="first", sort=False)
    out = out[sorted(out.columns)]
    out.columns = [f"lr {x:g}" for x in out.columns]
    return labelled(out)
