"""Resolve a chapter's parameters into runs, and load or compute them.

A chapter names *variants*: ``seq``, ``seq_full`` (full fine-tuning), ``pm[eps=0.3]``
(method options), ``magmax@ft`` (the fine-tuned start protocol); labels are written and
read by :mod:`clmerge.experiment.variants`. Each variant x seed
is one config; :func:`ensure_results` loads every existing result and computes only the
missing ones, then returns the tidy frame of exactly those runs.

Where results go: a chapter's ``results_dir = None`` reads the committed results
(``data/results``) and writes anything it computes (missing runs, or every run with
``force``) to the scratch folder ``_build/results`` (not tracked by git), where later
reads find it first. A chapter rerun with papermill therefore never changes the
committed results; ``results_dir=PATH`` reads and writes ``PATH`` only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd
import yaml

from clmerge.experiment.config import ExperimentConfig, load_profile
from clmerge.experiment.results import accuracy_long, load_results, result_path
from clmerge.experiment.executors import compute_local
from clmerge.experiment.grid import plan
from clmerge.experiment.runner import DEFAULT_RESULTS, SCRATCH_RESULTS
# variant labels are read and written in clmerge.experiment.variants; chapters reach
# them through this module
from clmerge.experiment.variants import parse_variant, variant_config  # noqa: F401


def as_list(value) -> list | None:
    """A chapter parameter that should be a list: papermill's ``-p seeds "[0, 1]"`` passes
    the text, which is read as YAML here; None stays None."""
    if isinstance(value, str):
        parsed = yaml.safe_load(value)
        value = parsed if isinstance(parsed, list) else [parsed]
    return None if value is None else list(value)


def profile_seeds(profile: str) -> list[int]:
    return list(load_profile(profile).get("seeds", [0]))


def configs(variants: Iterable[str], profile: str, benchmark: str | None = None,
            seeds: Iterable[int] | None = None, overrides: dict | None = None
            ) -> list[ExperimentConfig]:
    seeds = profile_seeds(profile) if seeds is None else list(seeds)
    return [variant_config(label, profile, benchmark, s, overrides)
            for label in variants for s in seeds]


def folders(results_dir: str | Path | None) -> tuple[list[Path], Path]:
    """(folders read, most preferred first; folder written) for a chapter's
    ``results_dir``: None reads scratch then committed results and writes scratch."""
    if results_dir:
        return [Path(results_dir)], Path(results_dir)
    return [SCRATCH_RESULTS, DEFAULT_RESULTS], SCRATCH_RESULTS


def ensure_results(variants: Iterable[str], profile: str, benchmark: str | None = None,
                   seeds: Iterable[int] | None = None, results_dir: str | Path | None = None,
                   force: bool = False, overrides: dict | None = None,
                   workers: int | None = None, compute: bool = True) -> pd.DataFrame:
    """Load or compute every variant x seed; return their rows of the tidy frame, with
    ``variant`` as spelled in ``variants``.

    Missing runs are computed in ``workers`` processes (default: one per CPU core; each
    run uses one thread, see ``clmerge.experiment.runner``), with a progress bar.
    ``compute=False`` computes nothing: the frame holds the runs that exist, and a line
    says how many are missing.
    """
    read, write = folders(results_dir)
    variants = as_list(variants)
    seeds = profile_seeds(profile) if seeds is None else as_list(seeds)
    cfgs = configs(variants, profile, benchmark, seeds, overrides)
    labels = [label for label in variants for _ in seeds]
    # each config from the first folder that has it (``force``: recompute into ``write``)
    found = {}
    for folder in ([] if force else read):
        _, missing = plan([c for c in cfgs if id(c) not in found], folder, False)
        missing_ids = {id(c) for c in missing}
        found.update({id(c): folder for c in cfgs
                      if id(c) not in found and id(c) not in missing_ids})
    todo = [c for c in cfgs if id(c) not in found]
    if todo and not compute:
        print(f"{len(todo)} of {len(cfgs)} runs have no result in "
              f"{', '.join(map(str, read))}; not computed (compute=False)", flush=True)
        todo = []
    if todo:
        workers = min(len(todo), workers or os.cpu_count() or 1)
        print(f"computing {len(todo)} of {len(cfgs)} runs in {workers} process(es) "
              f"into {write}", flush=True)
        compute_local(todo, write, force=force, workers=workers, keep_going=False)
        found.update({id(c): write for c in todo})
    wanted = {str(result_path(c, found[id(c)])): label for c, label in zip(cfgs, labels)
              if id(c) in found}
    frames = [load_results(folder) for folder in dict.fromkeys(found.values())]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path"])
    df = df[df["path"].isin(wanted)].drop_duplicates("path").reset_index(drop=True)
    # the chapter's own spelling of each variant (``trm[trajectory=false]``), whatever
    # label the result file was written with
    df["variant"] = df["path"].map(wanted)
    return df


def accuracy_long_of(df: pd.DataFrame) -> pd.DataFrame:
    """Every accuracy-matrix entry (``accuracy_long``) of exactly the runs in ``df``."""
    paths = set(df["path"])
    frames = [accuracy_long(folder) for folder in sorted({str(Path(p).parent) for p in paths})]
    if not frames:
        return pd.DataFrame(columns=["variant", "protocol", "seed", "after", "on", "accuracy", "path"])
    long = pd.concat(frames, ignore_index=True)
    long = long[long["path"].isin(paths)].reset_index(drop=True)
    long["variant"] = long["path"].map(dict(zip(df["path"], df["variant"])))
    return long
