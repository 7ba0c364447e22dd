"""The claims on glyph renditions across drift: the sweep's runs per budget, one verdict
column per budget, and each core claim's paired difference against seq's forgetting.

The budgets are the evaluation grids that :mod:`clmerge.experiment.renditions_calibration`
writes to ``examples/final/renditions_*.yaml`` (a milder, the calibrated and a stronger
LoRA rate, chosen on the calibration twin by seq's task-incremental forgetting). Their
runs are read from result folders, never computed here: the sweep
(``clmerge sweep examples/final/renditions_*.yaml --workers 2``) computes them, and a
budget whose grid is not complete is shown with the seeds it has and says so.
Verdicts come from :func:`clmerge.report.findings.evaluate` with the budgets as its
benchmarks: the rule of every other benchmark, each claim paired over the seeds that
have both of its variants.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import yaml

from clmerge.experiment import renditions_calibration as RC
from clmerge.experiment.grid import expand_grid, load_grid
from clmerge.experiment.results import result_path
from clmerge.experiment.sweep import collect
from clmerge.report import findings, signature
from clmerge.report.names import readable

ORDER = ("milder", "calibrated", "stronger")
# the claims the figure draws: the core comparisons of the two papers
CORE = ("P1", "P2", "P3", "P5", "P6", "P7a", "P7b", "T1")


def grids(folder: str | Path = RC.GRIDS_DIR) -> dict[str, Path]:
    """``{"milder": path, "calibrated": path, "stronger": path}``: the evaluation grids
    in ``folder`` (named ``final-renditions-<budget>``), mildest first."""
    found = {}
    for path in sorted(Path(folder).glob("renditions_*.yaml")):
        name = str(yaml.safe_load(path.read_text(encoding="utf-8")).get("name", ""))
        which = name.rsplit("-", 1)[-1]
        if name.startswith("final-renditions-") and which in ORDER:
            found[which] = path
    return {w: found[w] for w in ORDER if w in found}


@functools.lru_cache(maxsize=16)
def _expanded(path: str, mtime_ns: int, size: int) -> tuple:
    return tuple(expand_grid(path))


def configs(path: str | Path) -> list:
    """The run configs of the grid at ``path``, expanded once per version of the file
    (the page asks for them three times: runs, rates, progress)."""
    st = Path(path).stat()
    return list(_expanded(str(path), st.st_mtime_ns, st.st_size))


def budget_runs(folders: Iterable[str | Path], grid_paths: Mapping[str, Path] | None = None
                ) -> dict[str, pd.DataFrame]:
    """Per budget, the rows of its grid's runs found in ``folders`` (each run from the
    first folder that holds it, read for its own config); nothing is computed."""
    grid_paths = grids() if grid_paths is None else grid_paths
    out = {}
    for which, path in grid_paths.items():
        todo = configs(path)
        frames = []
        for folder in folders:
            if not todo:
                break
            df = collect(todo, folder)
            if len(df):
                frames.append(df)
                done = {Path(p).name for p in df["path"]}
                todo = [c for c in todo if result_path(c, folder).name not in done]
        out[which] = (pd.concat(frames, ignore_index=True) if frames
                      else pd.DataFrame(columns=["variant", "seed", "path"]))
    return out


def regime_runs(runs: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Per budget, its runs plus, for a budget without class-means (``nmc``) runs of its
    own, the ``nmc`` runs of the budgets that have them. The class means take no LoRA
    rate (``clmerge run`` refuses one for ``nmc``): every budget's grid would run the same
    configs, so the milder and stronger grids leave them out and their signature divides
    by these."""
    shared = [df[df["variant"] == "nmc"] for df in runs.values()
              if len(df) and (df["variant"] == "nmc").any()]
    nmc = (pd.concat(shared, ignore_index=True).drop_duplicates("path")
           if shared else None)
    out = {}
    for which, df in runs.items():
        has = len(df) and (df["variant"] == "nmc").any()
        out[which] = (df if has or nmc is None or not len(df)
                      else pd.concat([df, nmc], ignore_index=True))
    return out


def budget_rates(grid_paths: Mapping[str, Path] | None = None) -> dict[str, float]:
    """The LoRA rate of each budget (the grid's override, else the profile's)."""
    grid_paths = grids() if grid_paths is None else grid_paths
    return {w: float(configs(p)[0].lr) for w, p in grid_paths.items()}


def progress(runs: Mapping[str, pd.DataFrame],
             grid_paths: Mapping[str, Path] | None = None) -> pd.DataFrame:
    """Per budget: its LoRA rate, runs found of the grid's, and the seeds with every
    variant of the grid."""
    grid_paths = grids() if grid_paths is None else grid_paths
    rows = []
    for which, path in grid_paths.items():
        cfgs = configs(path)
        df = runs.get(which, pd.DataFrame(columns=["variant", "seed"]))
        per_seed = df.groupby("seed")["variant"].nunique() if len(df) else pd.Series(dtype=int)
        wanted = len(load_grid(path).variants)
        rows.append({"budget": which, "LoRA rate": f"{cfgs[0].lr:g}",
                     "runs": f"{len(df)} of {len(cfgs)}",
                     "complete seeds": int((per_seed >= wanted).sum()),
                     "seeds in the grid": len({c.seed for c in cfgs}),
                     "complete": len(df) == len(cfgs)})
    return pd.DataFrame(rows).set_index("budget")


def forgetting(runs: Mapping[str, pd.DataFrame]) -> dict[str, float]:
    """Seq's task-incremental forgetting (points) per budget, mean over its seeds."""
    out = {}
    for which, df in runs.items():
        seq = df[df["variant"] == "seq"]
        out[which] = float(seq["til_forgetting"].mean() * 100.0) if len(seq) else math.nan
    return out


def _seeds(n: pd.Series) -> str:
    """The seeds of the claims that ran: ``5``, or ``2 to 5`` when claims differ."""
    n = n[n > 0].astype(int)
    if n.empty:
        return "0"
    return f"{n.max()}" if n.min() == n.max() else f"{n.min()} to {n.max()}"


def column_name(which: str, rate: float, forgot: float, seeds: str) -> str:
    f = "" if math.isnan(forgot) else f", seq forgets {forgot:.1f}"
    return f"{which} (rate {rate:g}{f}; {seeds} seeds)"


def verdict_table(claims: pd.DataFrame, long: pd.DataFrame, runs: Mapping[str, pd.DataFrame],
                  rates: Mapping[str, float]) -> pd.DataFrame:
    """One row per claim (compared, the paper's figure) and one column per budget: our
    mean [95% interval] and, below it, the verdict."""
    base = findings.findings_table(claims, long)
    forgot = forgetting(runs)
    out = pd.DataFrame(index=pd.Index([c.split(".", 1)[0] for c in base.index], name="claim"))
    out["compared"] = base["compared"].to_numpy()
    out["paper"] = base["paper"].to_numpy()
    for which in dict.fromkeys(long["benchmark"]):
        sub = long[long["benchmark"] == which].set_index("id")
        seeds = _seeds(sub["n"])
        col = column_name(which, rates.get(which, math.nan), forgot.get(which, math.nan), seeds)
        cells = []
        for cid in out.index:
            r = sub.loc[cid]
            ours = findings.ours_cell(r)
            cells.append("–" if r["verdict"] == findings.NOT_RUN
                          else f"{ours}<br>*{r['verdict']}*")
        out[col] = cells
    return out


def figure(claims: pd.DataFrame, long: pd.DataFrame, runs: Mapping[str, pd.DataFrame],
           ids: Iterable[str] = CORE):
    """Each core claim's paired difference (mean and 95% interval over seeds) against
    seq's task-incremental forgetting at each budget, one panel per claim; the paper's
    range of effects as a band and its mean as a dashed line."""
    import matplotlib.pyplot as plt

    import textwrap

    forgot = forgetting(runs)
    ids = [i for i in ids if i in set(long["id"])]
    xs = [f for f in forgot.values() if not math.isnan(f)]
    xlim = (0.0, 1.15 * max(xs)) if xs else (0.0, 1.0)
    ncol = 2     # two panels a row: the page's column is about 7 inches wide
    nrow = max(1, math.ceil(len(ids) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(7, 2.3 * nrow), squeeze=False,
                             layout="constrained")
    claims = claims.set_index("id")
    for ax, cid in zip(axes.flat, ids):
        c = claims.loc[cid]
        diffs = findings.paper_differences(c["paper_differences"])
        if diffs:
            ax.axhspan(min(diffs.values()), max(diffs.values()), color="0.9", lw=0, zorder=0)
            ax.axhline(float(c["paper_mean"]), color="0.5", ls="--", lw=0.9)
        ax.axhline(0, color="0.3", lw=0.8, ls=":")
        sub = long[(long["id"] == cid) & (long["verdict"] != findings.NOT_RUN)]
        for _, r in sub.iterrows():
            x = forgot.get(r["benchmark"], math.nan)
            if math.isnan(x) or math.isnan(r["mean"]):
                continue
            err = [[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]]
            ax.errorbar([x], [r["mean"]], yerr=np.nan_to_num(err), fmt="o", ms=4,
                        capsize=2.5, color="C0")
            ax.annotate(r["benchmark"], (x, r["hi"] if not math.isnan(r["hi"]) else r["mean"]),
                        xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7,
                        color="0.35")
        b = c["b"]
        b = "best merger" if b.startswith("best:") else readable(b)
        ax.set_title("\n".join(textwrap.wrap(f"{cid}: {readable(c['a'])} − {b}", 45)),
                     fontsize=9)
        ax.set_xlim(*xlim)
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(ids):]:
        ax.axis("off")
    for ax in axes[-1]:
        if ax.has_data():
            ax.set_xlabel("seq's task-incremental forgetting (points)", fontsize=8)
    for row in axes:
        row[0].set_ylabel("difference (points)", fontsize=8)
    fig.suptitle("Glyph renditions: paired difference (mean, 95% interval) per budget\n"
                 "grey: the papers' range, dashed: their mean", fontsize=9)
    return fig



def answer(long: pd.DataFrame, progress_table: pd.DataFrame, budget: str = "calibrated",
           ids: Iterable[str] = CORE) -> str:
    """The page's answer in one paragraph: the core claims' verdicts at ``budget``,
    grouped, with the seeds and, while the sweep is incomplete, how far it is."""
    from clmerge.report import statistics

    sub = long[(long["benchmark"] == budget) & long["id"].isin(list(ids))
               & (long["verdict"] != findings.NOT_RUN)]
    if sub.empty:
        return (f"No claim has runs on glyph renditions at its {budget} budget yet: "
                f"`clmerge sweep examples/final/renditions_*.yaml --workers 2` computes them.")
    seeds = _seeds(sub["n"])
    groups = []
    for verdict in statistics.VERDICTS:
        got = list(sub.loc[sub["verdict"] == verdict, "id"])
        if got:
            groups.append(f"{len(got)} {verdict} ({', '.join(got)})")
    text = (f"On glyph renditions at its {budget} budget, over {seeds} seeds, the core "
            f"claims come out {'; '.join(groups)}.")
    if budget in progress_table.index and not progress_table.loc[budget, "complete"]:
        text += (f" The sweep is not complete ({progress_table.loc[budget, 'runs']} runs at "
                 "this budget): these verdicts are provisional.")
    return text
