"""Estimate the wall time of sweep grids from the per-run seconds recorded in results.

    python perf/sweep_estimate.py examples/final/*.yaml [--workers 2] [--default-seconds 90]
        [--extra-results data/calibration/results] [--scale trm=0.6 --scale 0.8]

Every result file records its run's wall-clock seconds (``provenance.wall_seconds``, one
CPU thread). A run of a grid is estimated by the mean recorded seconds of the same variant
on the same benchmark and profile, else of the same method there, else of any run on that
benchmark, then the same three on the benchmark's calibration stream
(``<benchmark>_calibration``: same renderer and sizes), else ``--default-seconds``.
Results are read from the grid's results folder and every ``--extra-results`` folder. The estimate assumes ``--workers`` runs at a time
with no idle tail: total seconds / workers. ``--scale METHOD=FACTOR`` multiplies the
recorded seconds of METHOD's runs by FACTOR, ``--scale FACTOR`` those of every other
method (to project the recorded seconds onto code whose speed-up per method was
measured, e.g. by ``perf/run_time.py --compare``). Printed per grid: runs, runs already done,
the estimate for all runs (a full recomputation) and for the missing ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clmerge.experiment.results import iter_results  # noqa: E402
from clmerge.experiment.runner import variant_label  # noqa: E402
from clmerge.experiment.sweep import expand_grid, load_grid, plan  # noqa: E402


def recorded_seconds(results_dir: Path) -> pd.DataFrame:
    rows = []
    for _, r in iter_results(results_dir):
        secs = (r.get("provenance") or {}).get("wall_seconds")
        if secs is None:
            continue
        cfg = r["config"]
        rows.append({"profile": cfg["profile"], "benchmark": cfg["benchmark"],
                     "method": cfg["method"], "variant": r.get("variant", cfg["method"]),
                     "seconds": float(secs)})
    return pd.DataFrame(rows, columns=["profile", "benchmark", "method", "variant", "seconds"])


def run_seconds(cfg, table: pd.DataFrame, default: float) -> tuple[float, str]:
    label = variant_label(cfg)
    for bench, where in ((cfg.benchmark, ""), (f"{cfg.benchmark}_calibration", " (calibration)")):
        here = table[(table["profile"] == cfg.profile) & (table["benchmark"] == bench)]
        for what, sub in (("variant", here[here["variant"] == label]),
                          ("method", here[here["method"] == cfg.method]),
                          ("benchmark", here)):
            if len(sub):
                return float(sub["seconds"].mean()), what + where
    return default, "default"


def parse_scale(items: list[str]) -> dict[str, float]:
    """``["trm=0.5", "0.8"]`` -> {"trm": 0.5, "*": 0.8} (``*``: every other method)."""
    out = {}
    for item in items:
        method, _, factor = item.rpartition("=")
        try:
            out[method or "*"] = float(factor)
        except ValueError:
            raise SystemExit(f"--scale takes METHOD=FACTOR or FACTOR; got {item!r}") from None
    return out


def scaled(table: pd.DataFrame, scale: dict[str, float]) -> pd.DataFrame:
    factor = table["method"].map(lambda m: scale.get(m, scale.get("*", 1.0)))
    return table.assign(seconds=table["seconds"] * factor)


def estimate(grid_path: str, workers: int, default: float, extra=(), scale=None) -> dict:
    grid = load_grid(grid_path)
    cfgs = expand_grid(grid)
    done, todo = plan(cfgs, grid.results_dir)
    table = scaled(pd.concat([recorded_seconds(d) for d in (grid.results_dir, *extra)],
                             ignore_index=True), scale or {})
    secs = {c.run_name(): run_seconds(c, table, default) for c in cfgs}
    total = sum(s for s, _ in secs.values())
    missing = sum(secs[c.run_name()][0] for c in todo)
    sources = pd.Series([w for _, w in secs.values()]).value_counts().to_dict()
    return {"grid": grid_path, "runs": len(cfgs), "done": len(done),
            "all runs, h": total / workers / 3600, "missing runs, h": missing / workers / 3600,
            "estimated from": ", ".join(f"{k} {v}" for k, v in sources.items())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grids", nargs="+")
    ap.add_argument("--workers", type=int, default=2, help="runs at a time (default 2)")
    ap.add_argument("--default-seconds", type=float, default=90.0,
                    help="seconds of a run with no recorded run to go by (default 90)")
    ap.add_argument("--extra-results", action="append", default=[], type=Path,
                    help="another folder of result files to take recorded seconds from")
    ap.add_argument("--scale", action="append", default=[], metavar="[METHOD=]FACTOR",
                    help="multiply the recorded seconds of METHOD (or of every other method)")
    args = ap.parse_args(argv)
    scale = parse_scale(args.scale)
    rows = [estimate(g, args.workers, args.default_seconds, args.extra_results, scale)
            for g in args.grids]
    out = pd.DataFrame(rows).set_index("grid")
    total = out[["runs", "done", "all runs, h", "missing runs, h"]].sum()
    out.loc["total"] = [*total.tolist(), ""]
    pd.set_option("display.width", 200)
    print(out.round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
