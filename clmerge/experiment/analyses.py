"""Cached analyses: computations a chapter shows that are not a whole run.

An analysis is a function of an ``ExperimentConfig`` (plus its own parameters) that
returns a JSON-serialisable dict. Its output is a result file like any run's:
``<dir>/analysis-<kind>-<hash>.json``, hashed over the config, the kind and the
parameters, written atomically with a checksum, and loaded instead of recomputed.
With ``out_dir=None`` (a chapter's default) it is read from the scratch folder
``_build/results`` or the committed ``data/results``, and written to the scratch folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from clmerge.experiment.config import ExperimentConfig
from clmerge.experiment.provenance import device_name, git_commit, versions
from clmerge.experiment.results import CorruptResultError, read_checked, write_result
from clmerge.experiment.runner import DEFAULT_RESULTS, SCRATCH_RESULTS, cpu_threads


def analysis_path(kind: str, cfg: ExperimentConfig, params: dict, out_dir) -> Path:
    blob = json.dumps({"kind": kind, "config": cfg.to_dict(), "params": params},
                      sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return Path(out_dir) / "analyses" / f"{kind}-{cfg.method}-{cfg.benchmark}-s{cfg.seed}-{h}.json"


def get_or_compute(kind: str, cfg: ExperimentConfig, fn: Callable[..., dict],
                   params: dict | None = None, out_dir=None, force: bool = False) -> dict:
    params = dict(params or {})
    read = [out_dir] if out_dir else [SCRATCH_RESULTS, DEFAULT_RESULTS]
    for folder in [] if force else read:
        found = analysis_path(kind, cfg, params, folder)
        if found.exists():
            try:
                return read_checked(found)["data"]
            except CorruptResultError as e:
                print(f"recomputing: {e}")
    path = analysis_path(kind, cfg, params, out_dir or SCRATCH_RESULTS)
    with cpu_threads(cfg):  # the same thread policy as runs, so numbers match them
        data = fn(cfg, **params)
    write_result({"kind": kind, "config": cfg.to_dict(), "params": params, "data": data,
                  "provenance": {"versions": versions(), "git_commit": git_commit(),
                                 "device": device_name(cfg.device)}}, path)
    return read_checked(path)["data"]
