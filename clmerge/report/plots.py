"""Figures the chapters show: stream examples, accuracy matrices, accuracy curves.

Conventions of every figure (the chapters' captions rely on them): accuracies in percent;
tasks numbered from 1; at most six coloured lines per panel (more variants are split
into facets, or drawn in grey behind the ones under discussion, see
:mod:`clmerge.report.style`); the legend outside the axes; a variant named by
:func:`clmerge.report.names.readable`; a band, where drawn, is +-1 standard deviation
over seeds around the mean over seeds.
"""

from __future__ import annotations

import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from clmerge.experiment.results import read_result
from clmerge.report.names import benchmark as benchmark_name
from clmerge.report.names import readable
from clmerge.report.storage import persisted_MiB
from clmerge.report.style import (GREY, MARKERS, MAX_LINES, PROTOCOL_NAMES, base_method,
                                   linestyle, order, palette, panels)


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
            if k == 0:   # the task, level with its row; the class ids stand above the images
                ax.set_ylabel(f"task {t + 1}", fontsize=9, rotation=0, ha="right", va="center",
                              labelpad=6)
    fig.suptitle(f"{benchmark_name(stream.name)}: {T} tasks, {per_exp} training images "
                 f"each (class id above)", y=1.0)
    fig.tight_layout()
    return fig


def _heatmap_row(axes, results, cbar: bool):
    for ax, (key, proto) in zip(axes, (("R", "cil"), ("R_til", "til"))):
        mats = np.array([[[np.nan if v is None else v for v in row] for row in r[key]]
                         for r in results], dtype=float)
        with warnings.catch_warnings():  # the upper triangle is all-NaN by design
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(mats, axis=0) * 100
        mask = np.isnan(mean)
        ticks = [str(i + 1) for i in range(mean.shape[0])]
        last = ax is axes[-1]
        sns.heatmap(mean, mask=mask, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="viridis",
                    cbar=cbar and last, ax=ax, square=True, annot_kws={"fontsize": 8},
                    xticklabels=ticks, yticklabels=ticks,
                    cbar_kws={"label": "accuracy (%)"} if cbar and last else None)
        ax.set_xlabel("evaluated on task j")
        ax.set_ylabel("after training task i")
        ax.set_title(PROTOCOL_NAMES[proto], fontsize=10)
        ax.grid(False)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def accuracy_heatmaps(paths, title: str = ""):
    """Mean over runs of R (class-incremental) and R_til, side by side, in percent; tasks
    numbered from 1."""
    results = [read_result(p) for p in paths]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    _heatmap_row(axes, results, cbar=True)
    fig.suptitle(title or f"accuracy matrix R[i][j] (%), mean of {_seeds(len(results))}",
                 fontsize=10, fontweight="bold")
    fig.tight_layout()
    return fig


def variant_heatmaps(df: pd.DataFrame, variants):
    """:func:`accuracy_heatmaps` for several variants in one figure, one row each (the
    row's title names the variant and its number of seeds)."""
    variants = [v for v in variants if v in set(df["variant"])]
    fig, axes = plt.subplots(len(variants), 2, figsize=(9.5, 3.8 * len(variants)),
                             squeeze=False)
    for row, v in zip(axes, variants):
        paths = df.loc[df["variant"] == v, "path"]
        _heatmap_row(row, [read_result(p) for p in paths], cbar=True)
        row[0].annotate(f"{readable(v)} (mean of {_seeds(len(paths))})", (0, 1.18),
                        xycoords="axes fraction", fontsize=10, fontweight="bold")
    fig.tight_layout()
    return fig


def _legend(ax, handles=None, labels=None, fig=None):
    """A legend to the right of ``ax``, outside the data (single-panel figures)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8,
                  frameon=False)


def _legend_below(fig, axes, ncol: int = 3):
    """One legend for a (sub)figure, below its panels, outside the data (needs the
    constrained layout); the entries of every axis, each label once."""
    entries = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, h)
    if entries:
        fig.legend(entries.values(), entries.keys(), loc="outside lower center",
                   ncol=min(ncol, len(entries)), fontsize=8, frameon=False)


def _facet_rows(n_rows: int, n_cols: int, width: float, height: float, **kw):
    """A constrained-layout figure of ``n_rows`` subfigures (one legend each), each with
    ``n_cols`` panels; returns (figure, [(subfigure, axes array), ...])."""
    fig = plt.figure(figsize=(width, height * n_rows), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(n_rows, 1)) if n_rows > 1 else [fig]
    rows = [(sf, np.atleast_1d(sf.subplots(1, n_cols, **kw))) for sf in subfigs]
    return fig, rows


def accuracy_curves(long: pd.DataFrame, protocols=("cil", "til"), references=None):
    """Mean accuracy over the tasks seen so far after each task (mean over seeds, band
    +-1 std over seeds), one column per protocol. ``references`` (joint, probe): their
    final accuracy as a grey horizontal line in every panel. More than six lines are split
    into rows of facets, each with its legend below it."""
    from clmerge.report.style import REFERENCE_STYLES

    references = list(references or [])
    seen = long[long["on"] <= long["after"]]
    per_seed = (seen.groupby(["variant", "protocol", "seed", "after"])["accuracy"].mean()
                .reset_index())
    variants = order(per_seed["variant"])
    refs = [v for v in references if v in variants]
    groups = panels(variants, refs)
    fig, rows = _facet_rows(len(groups), len(protocols), 8.4, 3.6, sharey=True)
    for (sf, axes), group in zip(rows, groups):
        colours = palette(group)
        for ax, proto in zip(axes, protocols):
            sub = per_seed[per_seed["protocol"] == proto]
            for k, v in enumerate(refs):
                d = sub[sub["variant"] == v]
                if not d.empty:
                    final = d[d["after"] == d["after"].max()]["accuracy"].mean() * 100
                    c, ls = REFERENCE_STYLES[k % len(REFERENCE_STYLES)]
                    ax.axhline(final, ls=ls, lw=1.5, color=c, label=f"{readable(v)} (final)")
            for i, v in enumerate(group):
                d = sub[sub["variant"] == v]
                if d.empty:
                    continue
                g = d.groupby("after")["accuracy"]
                m, s = g.mean() * 100, g.std(ddof=1).fillna(0) * 100
                ax.plot(m.index + 1, m.values, marker=MARKERS[i % len(MARKERS)], ms=4,
                        color=colours[v], ls=linestyle(v), label=readable(v))
                ax.fill_between(m.index + 1, m - s, m + s, color=colours[v], alpha=0.15, lw=0)
            ax.set_xlabel("tasks trained")
            ax.set_title(PROTOCOL_NAMES[proto], fontsize=10)
            ax.set_ylim(0, 101)
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        axes[0].set_ylabel("mean accuracy on\ntasks seen (%)")
        _legend_below(sf, axes)
    return fig


def coefficient_trajectories(df: pd.DataFrame, key: str = "coefficient"):
    """Merge coefficient a_t per task for each variant that records one: every seed as a
    dot, the mean over seeds as a line, and 1/t (the running average) dotted. More than
    five variants are split into facets."""
    rows = []
    for _, r in df.iterrows():
        for t in read_result(r["path"])["tasks"]:
            if key in t:
                rows.append({"variant": r["variant"], "seed": r["seed"],
                             "task": t["experience"] + 1, key: t[key]})
    if not rows:
        fig, ax = plt.subplots(figsize=(5.5, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no merge coefficients recorded", ha="center")
        return fig
    data = pd.DataFrame(rows)
    groups = panels(order(data["variant"]), max_lines=MAX_LINES - 1)
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.5, 3.3 * len(groups)), squeeze=False)
    T = int(data["task"].max())
    for ax, variants in zip(axes[:, 0], groups):
        colours = palette(variants)
        for i, v in enumerate(variants):
            d = data[data["variant"] == v]
            shift = (i - (len(variants) - 1) / 2) * 0.06   # side by side, not on top
            ax.scatter(d["task"] + shift, d[key], color=colours[v], alpha=0.55, s=18,
                       marker=MARKERS[i % len(MARKERS)])
            m = d.groupby("task")[key].mean()
            ax.plot(m.index + shift, m.values, color=colours[v], ls=linestyle(v),
                    marker=MARKERS[i % len(MARKERS)], ms=4, label=readable(v))
        ax.plot(range(1, T + 1), [1 / t for t in range(1, T + 1)], ls=":", color=GREY,
                label="1/t (running average)")
        ax.set_xlabel("task t")
        ax.set_ylabel("merge coefficient $a_t$")
        ax.set_ylim(-0.03, 1.05)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        _legend(ax)
    fig.tight_layout()
    return fig


def objective_curves(check: dict):
    """J(a) - min J for each task of a closed-form check, the closed form marked."""
    fig, ax = plt.subplots(figsize=(6.8, 3.6), layout="constrained")
    rows = check["rows"]
    # tasks in order along one colour scale (a colour bar, not a legend of look-alikes)
    cmap = plt.get_cmap("viridis")
    tasks = [row["task"] + 1 for row in rows]
    norm = plt.Normalize(min(tasks), max(tasks) if max(tasks) > min(tasks) else min(tasks) + 1)
    for row, task in zip(rows, tasks):
        c = cmap(norm(task))
        cur = check["curves"][str(row["task"])]
        a, J = np.asarray(cur["a"], float), np.asarray(cur["J"], float)
        ax.plot(a, J, color=c, lw=1.4)
        # the closed form, on its curve
        ax.plot([row["a_closed_form"]], [np.interp(row["a_closed_form"], a, J)], "v", color=c,
                ms=6, mec="black", mew=0.5, zorder=4)
    ax.set_yscale("symlog", linthresh=1e-8)
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, 1)
    ax.set_xlabel("merge coefficient a")
    ax.set_ylabel("J(a) - min J  (symlog)")
    ax.set_title("Fisher-quadratic objective per task; triangle: the closed-form $a_t$",
                 fontsize=10)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label("task t")
    bar.locator = plt.MaxNLocator(integer=True)
    bar.update_ticks()
    return fig


def loss_along_line(lines: dict):
    """Current- and old-task loss along theta_hat_{k-1} + a Delta_k, one line per variant."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), layout="constrained")
    colours = palette(lines)
    for i, (v, data) in enumerate(lines.items()):
        line = data["line"]
        for ax, key in zip(axes, ("current", "old")):
            ax.plot(line["a"], line[key], color=colours[v], ls=linestyle(v), label=readable(v),
                    marker=MARKERS[i % len(MARKERS)], ms=3)
    k = next(iter(lines.values()))["experience"]
    for ax, title in zip(axes, (f"current task ({k + 1})", f"old tasks (1..{k}), mean")):
        ax.axvline(1.0, color=GREY, ls=":", lw=1)
        ax.set_xlabel("a  (0: merged model before the task, 1: fine-tuned)")
        ax.set_ylabel("cross-entropy (task head)")
        ax.set_title(title, fontsize=10)
    _legend_below(fig, axes)
    return fig


def _place_labels(ax, points: list[tuple[float, float, str, str]]):
    """Annotate each point with its label where the label's box overlaps no other label
    and no point: candidates right, left, above, below at growing distances."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    dots = [to_px((x, y)) for x, y, _, _ in points]
    boxes = []
    offsets = [(6, -4), (-6, -4), (0, 7), (0, -13), (6, 8), (6, -15), (-6, 8), (-6, -15),
               (12, 14), (12, -22), (-12, 14), (-12, -22), (20, 20), (20, -28)]
    for (x, y, text, colour) in sorted(points, key=lambda p: -p[1]):
        best = None
        for dx, dy in offsets:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy),
                              fontsize=7.5, color=colour, ha=ha)
            bb = ann.get_window_extent(renderer).expanded(1.05, 1.15)
            inside = fig.bbox.contains(bb.x0, bb.y0) and fig.bbox.contains(bb.x1, bb.y1)
            clash = any(bb.overlaps(b) for b in boxes) or any(
                bb.contains(px, py) for px, py in dots)
            if not clash and inside:
                best = (ann, bb)
                break
            ann.remove()
        if best is None:   # nowhere free: the first candidate, with a leader line
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(24, -24),
                              fontsize=7.5, color=colour,
                              arrowprops={"arrowstyle": "-", "color": GREY, "lw": 0.6})
            best = (ann, ann.get_window_extent(renderer))
        boxes.append(best[1])


def storage_vs_accuracy(df: pd.DataFrame, column: str = "til_A_last"):
    """Bytes persisted across tasks against final accuracy, one point per variant (mean
    over seeds, error bar +-1 std over seeds). The x axis is symlog, linear below
    0.1 MiB, so methods that keep nothing sit at 0; joint training keeps its training
    data (:func:`clmerge.report.storage.persisted_MiB`)."""
    from clmerge.report.style import FIXED, HUES

    # labels name the points; colour only separates neighbours (no yellow: faint on white)
    others = [h for h in HUES if h not in FIXED.values() and h != "#F0E442"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    mib = persisted_MiB(df)
    points = []
    for i, v in enumerate(order(df["variant"])):
        sub = df[df["variant"] == v]
        x = float(mib[v])
        y, s = sub[column].mean() * 100, (sub[column].std(ddof=1) if len(sub) > 1 else 0) * 100
        c = FIXED.get(v) or others[i % len(others)]
        ax.errorbar(x, y, yerr=s, fmt=MARKERS[i % len(MARKERS)], color=c, capsize=3, ms=5)
        points.append((x, y, readable(v), c))
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(left=-0.02, right=max(1.0, mib.max()) * 4)
    ys = [p[1] for p in points]
    ax.set_ylim(max(0, min(ys) - 8), min(101, max(ys) + 8))
    ax.set_xlabel("MiB persisted across tasks (symlog: linear below 0.1; 0 = keeps nothing)")
    proto = "task-incremental" if column.startswith("til") else "class-incremental"
    metric = {"A_last": "final accuracy", "A_avg": "average accuracy",
              "forgetting": "forgetting"}.get(column.split("_", 1)[1], column)
    ax.set_ylabel(f"{proto} {metric} (%)")
    _place_labels(ax, points)
    fig.tight_layout()
    return fig


ACCURACY_COLUMNS = {"til_old", "til_current", "cil_old", "cil_current"}


def _line_groups(variants, highlight, max_lines=MAX_LINES):
    """Facets of at most ``max_lines`` variants, unless ``highlight`` names the variants in
    colour (the rest grey, behind them, in one panel)."""
    if highlight is not None:
        return [variants]
    return panels(variants, max_lines=max_lines)


def per_task_lines(tasks: pd.DataFrame, columns: dict, title: str = "", log: tuple = (),
                   highlight=None, bands: bool = True):
    """One panel per column of a task frame (``report.task_records.task_frame``):
    value against task, mean over seeds with a +-1 std band over seeds, one line and
    marker per variant. Accuracy columns (``*_old``, ``*_current``) are shown in percent.
    More than six variants are split into rows of facets (each with its legend below),
    or, with ``highlight``, the highlighted ones are drawn in colour and the others in
    grey without bands. ``columns`` maps a column to its panel's title (the y axis keeps
    only the unit, so that long labels never collide); columns in ``log`` get a log axis.
    ``bands=False`` draws the means alone; a band never reaches below 0 for a column whose
    values are all non-negative."""
    variants = order(tasks["variant"])
    groups = _line_groups(variants, highlight)
    ncols = min(3, len(columns))
    if ncols == 1 and len(groups) > 1:   # one wide panel per group, one under the other
        fig, rows = _facet_rows(len(groups), 1, 7.2, 3.3)
    else:
        fig, rows = _facet_rows(len(groups), ncols, 3.0 * ncols + 0.8, 3.4)
    for (sf, axes), group in zip(rows, groups):
        colours = palette(group, highlight)
        for ax, (col, label) in zip(axes, columns.items()):
            scale = 100 if col in ACCURACY_COLUMNS else 1
            for i, v in enumerate(sorted(group, key=lambda v: colours[v] != GREY)):
                g = tasks[tasks["variant"] == v].groupby("task")[col]
                m, s = g.mean() * scale, g.std(ddof=1).fillna(0) * scale
                if m.isna().all():
                    continue
                grey = colours[v] == GREY
                ax.plot(m.index, m.values, marker=None if grey else MARKERS[i % len(MARKERS)],
                        ms=4, color=colours[v], ls=linestyle(v), lw=1 if grey else 1.6,
                        label=None if grey else readable(v), zorder=1 if grey else 3)
                if not grey and bands:
                    low = m - s
                    if (tasks[col].dropna() >= 0).all():
                        low = low.clip(lower=0)
                    ax.fill_between(m.index, low, m + s, color=colours[v], alpha=0.12, lw=0)
            if any(c == GREY for c in colours.values()):
                ax.plot([], [], color=GREY, lw=1, label="other methods")
            ax.set_xlabel("task t")
            ax.set_title(textwrap.fill(label, 34), fontsize=9)
            ax.set_ylabel("%" if scale == 100 or "%" in label else "")
            if col in log:
                ax.set_yscale("log")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        for ax in axes[len(columns):]:
            ax.remove()
        _legend_below(sf, axes[:len(columns)], ncol=3)
    if title:
        fig.suptitle(title, fontsize=10, fontweight="bold")
    return fig


def first_steps_curves(steps: pd.DataFrame, metric: str = "dense_grad_norm",
                       label: str = "gradient norm |dL/dW|", highlight=None, smooth: int = 5):
    """``metric`` over the first training steps (log scale) in two panels: task 1, which
    every method starts from the pretrained model, and tasks 2..T, which start from each
    method's own model (mean over those tasks). Means over seeds, smoothed by a centred
    rolling mean over ``smooth`` steps so that the level, not the step-to-step noise, is
    what reads. With more than six variants only ``highlight`` (default: sequential
    fine-tuning, P&M and TRM, when present) is in colour, the others grey."""
    tasks = sorted(steps["task"].unique())
    variants = order(steps["variant"])
    if highlight is None and len(variants) > MAX_LINES:
        highlight = [v for v in variants if v in ("seq", "pm", "trm")] or variants[:MAX_LINES]
    colours = palette(variants, highlight)
    panels = [("task 1 (from the pretrained model)", steps[steps["task"] == tasks[0]])]
    if len(tasks) > 1:
        panels.append((f"tasks 2 to {tasks[-1]} (from each method's model), mean over tasks",
                       steps[steps["task"] > tasks[0]]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, (title, sub) in zip(axes[0], panels):
        for i, v in enumerate(sorted(order(sub["variant"]), key=lambda v: colours[v] != GREY)):
            m = sub[sub["variant"] == v].groupby("step")[metric].mean()
            m = m.rolling(smooth, center=True, min_periods=1).mean() if smooth > 1 else m
            grey = colours[v] == GREY
            ax.plot(m.index, m.values, color=colours[v], ls=linestyle(v), lw=1 if grey else 1.6,
                    marker=None if grey else MARKERS[i % len(MARKERS)], markevery=8, ms=4,
                    label=None if grey else readable(v), zorder=1 if grey else 3)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.margins(x=0)
    axes[0][0].set_ylabel(label, fontsize=9)
    if any(c == GREY for c in colours.values()):
        axes[0][0].plot([], [], color=GREY, lw=1, label="other methods")
    _legend_below(fig, [axes[0][0]])
    return fig


def metric_points(df: pd.DataFrame, variants: list[str], columns: dict, reference: str | None = None,
                  title: str = ""):
    """One row per variant, one panel per metric column: every seed as a dot, the mean
    as a tick with +-1 std over seeds; a dotted line at ``reference``'s mean. Rows are
    named on the axis, so colour only marks the method family."""
    variants = [v for v in variants if v in set(df["variant"])]
    family = palette(dict.fromkeys(base_method(v) for v in variants))
    ncols = min(2, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, (0.3 * len(variants) + 1.3) * nrows),
                             squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.remove()
    ypos = {v: i for i, v in enumerate(variants)}
    for k, (ax, (col, label)) in enumerate(zip(axes.flat, columns.items())):
        for v in variants:
            c = family[base_method(v)]
            vals = df.loc[df["variant"] == v, col].dropna() * 100
            y = ypos[v]
            ax.scatter(vals, [y] * len(vals), color=c, alpha=0.6, s=16, zorder=3)
            if len(vals):
                s = vals.std(ddof=1) if len(vals) > 1 else 0.0
                ax.errorbar(vals.mean(), y, xerr=s, fmt="|", ms=14, color=c, capsize=3)
        if reference in ypos:
            ax.axvline(df.loc[df["variant"] == reference, col].mean() * 100, ls=":", color=GREY)
        ax.set_xlabel(label)
        ax.set_yticks(range(len(variants)))
        ax.set_yticklabels([readable(v) for v in variants] if k % ncols == 0 else [], fontsize=8)
        ax.set_ylim(len(variants) - 0.5, -0.5)
    if title:
        fig.suptitle(title, fontsize=10, fontweight="bold")
    fig.tight_layout()
    return fig


def merge_objective_curves(paths, title: str = ""):
    """TRM's objective during each merge (``objective_curve`` of every task), relative to
    its value at the start of the merge (1 = the start theta_hat + 0.5 d_K), one line per
    task, mean over the runs in ``paths``; the best evaluated iterate is what the merge
    returns, so a curve's minimum is where the merge ended."""
    per_task: dict[int, list] = {}
    for p in paths:
        for t, rec in enumerate(read_result(p)["tasks"]):
            curve = rec.get("objective_curve") or {}
            if curve.get("total") and curve["total"][0] > 0:
                rel = np.asarray(curve["total"]) / curve["total"][0]
                per_task.setdefault(t, []).append((np.asarray(curve["step"]), rel))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    pal = sns.color_palette("viridis", max(len(per_task), 1))
    for (t, curves), c in zip(sorted(per_task.items()), pal):
        n = min(len(r) for _, r in curves)
        ax.plot(curves[0][0][:n], np.mean([r[:n] for _, r in curves], axis=0), color=c,
                marker=".", label=f"merge after task {t + 1}")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("coefficient optimiser step")
    ax.set_ylabel("objective / objective at the start")
    ax.set_title(title or "TRM's merge objective", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
