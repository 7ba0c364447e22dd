"""Figures the chapters show: stream examples, accuracy matrices, accuracy curves."""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from clmerge.experiment.results import read_result
from clmerge.report.style import PROTOCOL_NAMES, color, linestyle, order


def stream_grid(stream, per_exp: int = 8, seed: int = 0):
    """A grid of example images, one row per experience, labelled by class."""
    if not stream.is_image:
        fig, ax = plt.subplots(figsize=(6, 1.2))
        ax.axis("off")
        ax.text(0.0, 0.5, f"{stream.name}: vector inputs of shape {stream.input_shape}, "
                f"classes per experience {stream.classes_per_exp}", va="center")
        return fig
    rng = np.random.default_rng(seed)
    T = stream.n_experiences
    fig, axes = plt.subplots(T, per_exp, figsize=(per_exp * 0.9, T * 1.0))
    for t, exp in enumerate(stream.train_stream):
        idx = rng.choice(len(exp.dataset), per_exp, replace=False)
        for k, i in enumerate(idx):
            x, y, *_ = exp.dataset[int(i)]
            ax = axes[t, k]
            ax.imshow(x[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(str(int(y)), fontsize=8, pad=2)
            if k == 0:
                ax.set_ylabel(f"exp {t}\n{stream.classes_per_exp[t]}", fontsize=8)
    fig.suptitle(f"{stream.name}: {T} experiences, classes in stream order", y=1.0)
    fig.tight_layout()
    return fig


def accuracy_heatmaps(paths, title: str = ""):
    """Mean over runs of R (class-incremental) and R_til, side by side, in percent."""
    results = [read_result(p) for p in paths]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for ax, (key, proto) in zip(axes, (("R", "cil"), ("R_til", "til"))):
        mats = np.array([[[np.nan if v is None else v for v in row] for row in r[key]]
                         for r in results], dtype=float)
        with warnings.catch_warnings():  # the upper triangle is all-NaN by design
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(mats, axis=0) * 100
        mask = np.isnan(mean)
        sns.heatmap(mean, mask=mask, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis",
                    cbar=ax is axes[-1], ax=ax, square=True, annot_kws={"fontsize": 8})
        ax.set_xlabel("evaluated on experience j")
        ax.set_ylabel("after training experience i")
        ax.set_title(PROTOCOL_NAMES[proto], fontsize=10)
    fig.suptitle(title or f"accuracy matrix R[i][j] (%), mean of {len(results)} seeds")
    fig.tight_layout()
    return fig


def accuracy_curves(long: pd.DataFrame, protocols=("cil", "til"), references=None):
    """Mean accuracy over the experiences seen so far after each experience; band = +-1 std
    over seeds. ``references``: variants drawn as horizontal lines (joint, probe)."""
    references = list(references or [])
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 3.8),
                             squeeze=False)
    seen = long[long["on"] <= long["after"]]
    per_seed = (seen.groupby(["variant", "protocol", "seed", "after"])["accuracy"].mean()
                .reset_index())
    for ax, proto in zip(axes[0], protocols):
        sub = per_seed[per_seed["protocol"] == proto]
        for v in order(sub["variant"]):
            d = sub[sub["variant"] == v]
            if v in references:
                final = d.groupby("seed")["accuracy"].mean()
                ax.axhline(final.mean() * 100, ls="--", color=color(v), label=f"{v} (final)")
                continue
            g = d.groupby("after")["accuracy"]
            m, s = g.mean() * 100, g.std(ddof=1).fillna(0) * 100
            ax.plot(m.index + 1, m.values, marker="o", color=color(v), ls=linestyle(v), label=v)
            ax.fill_between(m.index + 1, m - s, m + s, color=color(v), alpha=0.2)
        ax.set_xlabel("experiences trained")
        ax.set_ylabel("mean accuracy on seen experiences (%)")
        ax.set_title(PROTOCOL_NAMES[proto], fontsize=10)
        ax.set_ylim(0, 101)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes[0, -1].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def coefficient_trajectories(df: pd.DataFrame, key: str = "coefficient"):
    """Merge coefficient a_t per task for each variant that records one: every seed as a
    dot, the mean over seeds as a line."""
    rows = []
    for _, r in df.iterrows():
        for t in read_result(r["path"])["tasks"]:
            if key in t:
                rows.append({"variant": r["variant"], "seed": r["seed"],
                             "task": t["experience"] + 1, key: t[key]})
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if not rows:
        ax.text(0.5, 0.5, "no merge coefficients recorded", ha="center")
        return fig
    data = pd.DataFrame(rows)
    variants = order(data["variant"])
    for i, v in enumerate(variants):
        d = data[data["variant"] == v]
        shift = (i - (len(variants) - 1) / 2) * 0.06   # side by side, not on top
        ax.scatter(d["task"] + shift, d[key], color=color(v), alpha=0.55, s=18)
        m = d.groupby("task")[key].mean()
        ax.plot(m.index + shift, m.values, color=color(v), ls=linestyle(v), label=f"{v} (mean)")
    T = int(data["task"].max())
    ax.plot(range(1, T + 1), [1 / t for t in range(1, T + 1)], ls=":", color="grey",
            label="1/t (running average)")
    ax.set_xlabel("task t")
    ax.set_ylabel("merge coefficient $a_t$")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def objective_curves(check: dict):
    """J(a) - min J for each task of a closed-form check, the closed form marked."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    pal = sns.color_palette("viridis", len(check["rows"]))
    for row, c in zip(check["rows"], pal):
        cur = check["curves"][str(row["task"])]
        ax.plot(cur["a"], cur["J"], color=c, label=f"task {row['task'] + 1}")
        ax.axvline(row["a_closed_form"], color=c, ls="--", lw=1)
    ax.set_yscale("symlog", linthresh=1e-8)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("a")
    ax.set_ylabel("J(a) - min J  (symlog)")
    ax.set_title("Fisher-quadratic objective; dashed: closed-form $a_t$", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_along_line(lines: dict):
    """Current- and old-task loss along theta_hat_{k-1} + a Delta_k, one line per variant."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = ["-", "--", ":", "-."]
    for i, (v, data) in enumerate(lines.items()):
        line = data["line"]
        for ax, key in zip(axes, ("current", "old")):
            ax.plot(line["a"], line[key], color=color(v), ls=styles[i % 4], label=v, marker=".")
    k = next(iter(lines.values()))["experience"]
    for ax, title in zip(axes, (f"current task ({k + 1})", f"old tasks (1..{k}), mean")):
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        ax.set_xlabel("a  (0: merged model before the task, 1: fine-tuned)")
        ax.set_ylabel("cross-entropy (task head)")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def storage_vs_accuracy(df: pd.DataFrame, column: str = "til_A_last"):
    """Persisted bytes across tasks against final accuracy, one point per variant
    (mean over seeds, error bar = std); the x axis is linear below 0.1 MiB so methods
    that keep nothing sit at 0."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    placed: list[tuple[float, float]] = []
    for v in order(df["variant"]):
        sub = df[df["variant"] == v]
        x = sub["state_bytes_max"].max() / 2**20
        y, s = sub[column].mean() * 100, (sub[column].std(ddof=1) if len(sub) > 1 else 0) * 100
        ax.errorbar(x, y, yerr=s, fmt="o", color=color(v), capsize=3)
        # labels of nearby points are stacked instead of drawn over each other
        near = sum(1 for px, py in placed if abs(px - x) < 1 and abs(py - y) < 3.5)
        placed.append((x, y))
        ax.annotate(v, (x, y), textcoords="offset points", xytext=(6, 3 - 9 * near), fontsize=8)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=-0.02)
    ax.set_xlabel("bytes persisted across tasks (MiB; symlog, 0 = keeps nothing)")
    ax.set_ylabel(f"{column.replace('_', ' ')} (%)")
    ax.set_title("storage vs accuracy", fontsize=10)
    fig.tight_layout()
    return fig


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def per_task_lines(tasks: pd.DataFrame, columns: dict, title: str = "", log: tuple = ()):
    """One panel per column of a task frame (``report.start_diagnostics.task_frame``):
    value against task, mean over seeds (with a +-1 std band when at most four variants
    are drawn), one line and marker per variant.
    ``columns`` maps a column to its axis label; columns in ``log`` get a log axis."""
    ncols = min(2, len(columns))   # two panels a row: readable in the book's text column
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.remove()
    variants = order(tasks["variant"])
    bands = len(variants) <= 4   # more overlapping bands hide the lines
    for ax, (col, label) in zip(axes.flat, columns.items()):
        for i, v in enumerate(variants):
            g = tasks[tasks["variant"] == v].groupby("task")[col]
            m, s = g.mean(), g.std(ddof=1).fillna(0)
            if m.isna().all():
                continue
            ax.plot(m.index, m.values, marker=MARKERS[i % len(MARKERS)], ms=4, color=color(v),
                    ls=linestyle(v), label=v)
            if bands:
                ax.fill_between(m.index, m - s, m + s, color=color(v), alpha=0.15)
        ax.set_xlabel("task t")
        ax.set_ylabel(label)
        if col in log:
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    axes.flat[len(columns) - 1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10, fontweight="bold")
    fig.tight_layout()
    return fig


def first_steps_curves(steps: pd.DataFrame, metric: str = "dense_grad_norm",
                       label: str = "gradient norm |dL/dW|"):
    """``metric`` over the first training steps of each task (one panel per task, mean
    over seeds, log scale): task 1 starts from the pretrained model, later tasks from
    each method's merged model."""
    tasks = sorted(steps["task"].unique())
    ncols = min(3, len(tasks))
    nrows = -(-len(tasks) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.remove()
    for ax, t in zip(axes.flat, tasks):
        sub = steps[steps["task"] == t]
        for v in order(sub["variant"]):
            m = sub[sub["variant"] == v].groupby("step")[metric].mean()
            ax.plot(m.index, m.values, color=color(v), ls=linestyle(v), label=v, lw=1.4)
        ax.set_yscale("log")
        ax.set_title(f"task {t}" + (" (from pretrained)" if t == 1 else ""), fontsize=9)
        ax.set_xlabel("training step")
    for row in axes:
        row[0].set_ylabel(label, fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower right", bbox_to_anchor=(0.98, 0.08))
    fig.tight_layout()
    return fig


def metric_points(df: pd.DataFrame, variants: list[str], columns: dict, reference: str | None = None,
                  title: str = ""):
    """One row per variant, one panel per metric column: every seed as a dot, the mean
    as a bar tick with +-1 std; a dotted line at ``reference``'s mean."""
    variants = [v for v in variants if v in set(df["variant"])]
    ncols = min(2, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, (0.32 * len(variants) + 1.2) * nrows),
                             squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.remove()
    ypos = {v: i for i, v in enumerate(variants)}
    for k, (ax, (col, label)) in enumerate(zip(axes.flat, columns.items())):
        for v in variants:
            vals = df.loc[df["variant"] == v, col].dropna() * 100
            y = ypos[v]
            ax.scatter(vals, [y] * len(vals), color=color(v), alpha=0.6, s=16, zorder=3)
            if len(vals):
                s = vals.std(ddof=1) if len(vals) > 1 else 0.0
                ax.errorbar(vals.mean(), y, xerr=s, fmt="|", ms=14, color=color(v), capsize=3)
        if reference in ypos:
            ax.axvline(df.loc[df["variant"] == reference, col].mean() * 100, ls=":", color="grey")
        ax.set_xlabel(label)
        ax.set_yticks(range(len(variants)))
        ax.set_yticklabels(variants if k % ncols == 0 else [], fontsize=8)
        ax.set_ylim(len(variants) - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=10, fontweight="bold")
    fig.tight_layout()
    return fig
