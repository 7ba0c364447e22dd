"""Resolve a chapter's parameters into runs, and load or compute them.

A chapter names *variants*: ``seq``, ``seq_full`` (full fine-tuning), ``pm[eps=0.3]``
(method options), ``magmax@ft`` (the fine-tuned start protocol). Each variant x seed
is one config; :func:`ensure_results` loads every existing result and computes only the
missing ones, then returns the tidy frame of exactly those runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from clmerge.experiment.config import ConfigError, ExperimentConfig, load_profile, make_config
from clmerge.experiment.results import load_results, result_path
from clmerge.experiment.runner import DEFAULT_RESULTS, get_or_run

_VARIANT = re.compile(r"^(?P<method>[a-z0-9_]+?)(?P<full>_full)?(?P<ft>@ft)?(\[(?P<args>[^\]]*)\])?$")


def parse_variant(label: str) -> tuple[str, dict]:
    """``"pm_full@ft[eps=0.3]"`` -> ``("pm", {"finetune": "full", "start": "finetuned",
    "pm.eps": "0.3"})``."""
    m = _VARIANT.match(label)
    if not m:
        raise ConfigError(f"cannot read variant {label!r}; write METHOD[_full][@ft][[k=v,...]]")
    method = m["method"]
    overrides: dict = {}
    if m["full"]:
        overrides["finetune"] = "full"
    if m["ft"]:
        overrides["start"] = "finetuned"
    for kv in filter(None, (m["args"] or "").split(",")):
        k, _, v = kv.partition("=")
        overrides[f"{method}.{k.strip()}"] = v.strip()
    return method, overrides


def profile_seeds(profile: str) -> list[int]:
    return list(load_profile(profile).get("seeds", [0]))


def configs(variants: Iterable[str], profile: str, benchmark: str | None = None,
            seeds: Iterable[int] | None = None, overrides: dict | None = None
            ) -> list[ExperimentConfig]:
    seeds = profile_seeds(profile) if seeds is None else list(seeds)
    out = []
    for label in variants:
        method, ov = parse_variant(label)
        out += [make_config(method, benchmark, profile, s, {**(overrides or {}), **ov})
                for s in seeds]
    return out


def ensure_results(variants: Iterable[str], profile: str, benchmark: str | None = None,
                   seeds: Iterable[int] | None = None, results_dir: str | Path | None = None,
                   force: bool = False, overrides: dict | None = None,
                   progress: bool = False) -> pd.DataFrame:
    """Load or compute every variant x seed; return their rows of the tidy frame."""
    results_dir = Path(results_dir) if results_dir else DEFAULT_RESULTS
    cfgs = configs(variants, profile, benchmark, seeds, overrides)
    for i, cfg in enumerate(cfgs):
        path = result_path(cfg, results_dir)
        if force or not path.exists():
            print(f"[{i + 1}/{len(cfgs)}] running {cfg.run_name()}", flush=True)
        get_or_run(cfg, results_dir, force=force, progress=progress)
    wanted = {str(result_path(c, results_dir)) for c in cfgs}
    df = load_results(results_dir)
    return df[df["path"].isin(wanted)].reset_index(drop=True)
