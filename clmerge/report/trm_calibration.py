"""Choosing TRM's unpublished constants on a calibration stream, never on a reported one.

TRM (arXiv 2605.08311) publishes no equation, weight or optimiser setting, so every
constant of :class:`clmerge.mergers.trm.TRMOptions` is ours. They are chosen by one rule,
written here as code: run a small grid of TRM variants (one option changed at a time
from the current defaults, plus the merge's own starting point ``steps=0``) on a
*calibration* stream (a benchmark or class order the book never reports), with the
profile's budget and a few seeds, and keep the variant with the best mean of
``metric`` over seeds (class-incremental final accuracy by default; ties go to the
earlier row of the grid, the defaults first). The table is written as CSV and
markdown, so the choice and every alternative are on record.

    python -m clmerge.report.trm_calibration --benchmark CALIBRATION_STREAM \\
        --profile quick --seeds 0 --out data/results/calibration

The evaluation streams' results are never read here: the calibration benchmark must be
one the caller names, and the table records it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from clmerge.experiment.calibration import RESULTS as COMMITTED

# One option changed at a time from the defaults: the learning rate and budget of the
# coefficient optimiser, the two term weights, the consistency inputs, the bound and the
# rescaling. ``steps=0`` is the merge's starting point (theta_hat + 0.5 d_K).
DEFAULT_GRID = ["trm", "trm[steps=0]", "trm[lr=0.003]", "trm[lr=0.03]", "trm[steps=100]",
                "trm[pc=0.3]", "trm[pc=3.0]", "trm[gr=0.0]", "trm[gr=0.1]",
                "trm[pc_inputs=current]", "trm[pc_inputs=inverted]", "trm[bound=0.5]",
                "trm[normalise=orthonormal]"]

COLUMNS = ["cil_A_last", "til_A_last", "cil_A_avg", "til_A_avg", "merge_seconds"]


def calibration_table(df: pd.DataFrame, grid: list[str], metric: str = "cil_A_last"
                      ) -> pd.DataFrame:
    """Mean and std over seeds of the accuracy columns and the merge seconds per grid
    row (in grid order), the rank by ``metric`` and the chosen row (``chosen``)."""
    rows = []
    for label in grid:
        sub = df[df["variant"] == label]
        if sub.empty:
            continue
        row = {"variant": label, "seeds": len(sub)}
        for c in COLUMNS:
            row[c] = sub[c].mean()
            row[f"{c} std"] = sub[c].std(ddof=1) if len(sub) > 1 else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # stable: among equal means the earlier grid row (the defaults first) ranks first
    table["rank"] = table[metric].rank(ascending=False, method="first").astype(int)
    table["chosen"] = table["rank"] == 1
    return table.set_index("variant")


def table_stem(folder: str | Path, benchmark: str) -> Path:
    """``folder/trm-calibration-<benchmark>``: the table's path without its suffix
    (``.csv``, ``.md``)."""
    return Path(folder) / f"trm-calibration-{benchmark}"


def committed_table(benchmark: str | None, folder: str | Path = COMMITTED
                    ) -> pd.DataFrame | None:
    """The table :func:`calibrate` wrote for ``benchmark`` into ``folder`` (default: the
    committed calibration results), or None when there is none (or ``benchmark`` is
    None). Chapters name the calibration stream, never a path."""
    if not benchmark:
        return None
    path = table_stem(folder, benchmark).with_suffix(".csv")
    if not path.exists():
        return None
    table = pd.read_csv(path, index_col=0)
    keep = [c for c in table.columns if c not in ("benchmark", "profile", "metric")]
    return table[keep]


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`committed_table` as a reader reads it: accuracies in percent to one decimal,
    a standard deviation only where there is more than one seed, merge seconds, the rank
    and the chosen row; readable method names (at most 8 columns)."""
    from clmerge.report.tables import labelled

    out = pd.DataFrame(index=table.index)
    out["seeds"] = table["seeds"]
    several = (table["seeds"] > 1).any()
    for col, name in (("cil_A_last", "final class-incremental (%)"),
                      ("til_A_last", "final task-incremental (%)"),
                      ("cil_A_avg", "average class-incremental (%)")):
        mean = (100 * table[col]).map("{:.1f}".format)
        if several and f"{col} std" in table:
            std = (100 * table[f"{col} std"]).map(lambda x: "" if pd.isna(x) else f" ± {x:.1f}")
            mean = mean + std
        out[name] = mean
    out["merge seconds"] = table["merge_seconds"].map("{:.2g}".format)
    out["rank"] = table["rank"]
    out["chosen"] = table["chosen"].map({True: "yes", False: ""})
    out.index.name = "variant"
    return labelled(out)


def chosen_options(table: pd.DataFrame) -> dict[str, str]:
    """The TRM options of the chosen row (empty: the defaults stay)."""
    from clmerge.report.study import parse_variant

    label = table.index[table["chosen"]][0]
    _, overrides = parse_variant(label)
    return {k.split(".", 1)[1]: v for k, v in overrides.items()}


def _check_distinct(grid: list[str], profile: str, benchmark: str,
                    overrides: dict | None) -> None:
    """Two grid rows that are the same configuration (``trm[steps=50]`` when 50 is the
    default) would share one result file and one of them would vanish from the table."""
    from clmerge.experiment.config import ConfigError
    from clmerge.report.study import configs

    seen: dict[str, str] = {}
    for label, cfg in zip(grid, configs(grid, profile, benchmark, [0], overrides)):
        name = cfg.run_name()
        if name in seen:
            raise ConfigError(f"grid rows {seen[name]!r} and {label!r} are the same "
                              f"configuration; drop one")
        seen[name] = label


def calibrate(benchmark: str, profile: str = "quick", seeds=(0,), grid=None,
              results_dir: str | Path = "data/results/calibration", metric: str = "cil_A_last",
              workers: int | None = 1, overrides: dict | None = None) -> pd.DataFrame:
    """Run (or load) every grid variant x seed on ``benchmark`` and return the table;
    it is also written to ``results_dir/trm-calibration-<benchmark>.csv`` and ``.md``."""
    from clmerge.report.study import ensure_results

    grid = list(grid or DEFAULT_GRID)
    _check_distinct(grid, profile, benchmark, overrides)
    results_dir = Path(results_dir)
    df = ensure_results(grid, profile, benchmark, list(seeds), results_dir,
                        overrides=overrides, workers=workers)
    table = calibration_table(df, grid, metric)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = table_stem(results_dir, benchmark)
    table.assign(benchmark=benchmark, profile=profile, metric=metric).to_csv(f"{stem}.csv")
    stem.with_suffix(".md").write_text(
        f"TRM calibration on {benchmark} ({profile}, seeds {list(seeds)}), chosen by mean "
        f"{metric}:\n\n" + table.round(4).to_markdown() + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    from clmerge.experiment.config import ConfigError

    p = argparse.ArgumentParser(prog="python -m clmerge.report.trm_calibration",
                                description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", required=True, help="the calibration stream (never a "
                   "reported one)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--grid", nargs="*", default=None, help="variant labels (default: a "
                   "one-option-at-a-time grid around the defaults)")
    p.add_argument("--metric", default="cil_A_last")
    p.add_argument("--out", default="data/results/calibration")
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
        table = calibrate(a.benchmark, a.profile, seeds, a.grid, a.out, a.metric, a.workers)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table.round(4).to_string())
    print("chosen:", chosen_options(table) or "the defaults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
