"""The grid of a sweep: read and check a grid file, expand it into configs, plan which
runs are finished.

Every config is resolved here, before any run starts: the grid's keys, the executor block
(submitit/Slurm parameter names and types), each variant label, benchmark and override
go through ``make_config``, so a mistake is a :class:`~clmerge.errors.ConfigError`
naming the valid choices before a process starts or a file is written. What runs the
missing configs is in :mod:`clmerge.experiment.executors`; the command's flow and the
grid file's format are described in :mod:`clmerge.experiment.sweep`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import submitit

from clmerge.benchmarks.registry import BENCHMARKS
from clmerge.errors import ConfigError
from clmerge.experiment.config import ExperimentConfig, _article, load_profile, read_yaml, short
from clmerge.experiment.results import CorruptResultError, read_result, result_path
from clmerge.experiment.runner import DEFAULT_RESULTS
from clmerge.experiment.variants import variant_config, variant_label

GRID_KEYS = ("profile", "benchmarks", "variants", "seeds", "overrides", "results_dir",
             "name", "executor")
EXECUTOR_KEYS = ("kind", "workers", "slurm")
EXECUTOR_KINDS = ("local", "submitit_local", "slurm")
# submitit's generic parameters (translated per cluster) and their types
GENERIC_PARAMETERS: dict[str, type | tuple[type, ...]] = {
    "name": str, "timeout_min": int, "mem_gb": (int, float), "nodes": int,
    "cpus_per_task": int, "gpus_per_node": int, "tasks_per_node": int,
    "stderr_to_stdout": bool}
RESERVED_OVERRIDES = ("method", "benchmark", "profile", "seed")
# Bounds of the numeric generic parameters: a job must have finite memory, at least a
# minute (submitit kills a job at its timeout: below a minute not even the imports end)
# and at most a year, and counts that a cluster can give.
PARAMETER_RANGES: dict[str, tuple[float, float]] = {
    "timeout_min": (1, 525_600), "mem_gb": (0.001, 100_000), "nodes": (1, 100_000),
    "cpus_per_task": (1, 100_000), "gpus_per_node": (0, 1024), "tasks_per_node": (1, 100_000)}
# The most runs one grid may hold: every run is resolved (about 4 ms each) before any
# starts, so a larger grid would first spend minutes in silence; split it into files.
MAX_GRID_RUNS = 5000


@dataclass(frozen=True)
class Executor:
    kind: str = "local"
    workers: int | None = None
    slurm: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    name: str
    profile: str
    benchmarks: list
    variants: list
    seeds: list
    overrides: dict
    results_dir: Path
    executor: Executor


def _slurm_keys() -> list[str]:
    return sorted(set(GENERIC_PARAMETERS) | set(submitit.SlurmExecutor._valid_parameters()))


def _string_list(key: str, value: Any) -> list[str]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise ConfigError(f"grid key {key!r} must be a non-empty list of names; got {short(value)}")
    return list(value)


def _positive_int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer; got {short(value)}")
    return value


def _string_keys(what: str, mapping: Mapping) -> None:
    """Refuse a mapping with a key that is not a string (YAML reads ``1:``, ``null:`` and
    ``{1: 2}`` as a number, None and a mapping)."""
    for k in mapping:
        if not isinstance(k, str):
            raise ConfigError(f"{what} has the key {short(k)}, which is not a name; "
                              f"keys are names such as epochs")


def _executor(block: Any, kind: str | None, workers: int | None) -> Executor:
    if block is None:
        block = {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"grid key 'executor' must be a mapping with keys "
                          f"{', '.join(EXECUTOR_KEYS)}; got {short(block)}")
    _string_keys("grid key 'executor'", block)
    unknown = sorted(set(block) - set(EXECUTOR_KEYS))
    if unknown:
        raise ConfigError(f"unknown executor key {unknown[0]!r}; valid keys: "
                          f"{', '.join(EXECUTOR_KEYS)}")
    kind = kind or block.get("kind", "local")
    if kind not in EXECUTOR_KINDS:
        raise ConfigError(f"unknown executor {kind!r}; valid executors: "
                          f"{', '.join(EXECUTOR_KINDS)}")
    workers = workers if workers is not None else block.get("workers")
    if workers is not None:
        _positive_int("executor workers", workers)
    slurm = block.get("slurm") or {}
    if not isinstance(slurm, Mapping):
        raise ConfigError(f"executor key 'slurm' must be a mapping of submitit/Slurm "
                          f"parameters; got {short(slurm)}")
    _string_keys("executor key 'slurm'", slurm)
    valid = _slurm_keys()
    for k, v in slurm.items():
        if k not in valid:
            raise ConfigError(f"unknown slurm parameter {k!r}; valid parameters: "
                              f"{', '.join(valid)}")
        typ = GENERIC_PARAMETERS.get(k)
        if typ is not None and (not isinstance(v, typ) or (typ is int and isinstance(v, bool))):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise ConfigError(f"slurm parameter {k!r} expects {_article(names)}; got {short(v)}")
        if k in PARAMETER_RANGES:
            low, high = PARAMETER_RANGES[k]
            if not (math.isfinite(v) and low <= v <= high):
                raise ConfigError(f"slurm parameter {k!r} must be in [{low:g}, {high:g}] "
                                  f"(finite memory, a timeout of at least a minute); got "
                                  f"{short(v)}")
    return Executor(kind, workers, dict(slurm))


def load_grid(source: str | os.PathLike | Mapping | Grid, executor: str | None = None,
              workers: int | None = None, results_dir: str | os.PathLike | None = None
              ) -> Grid:
    """Read and check a grid (a YAML file or its dict); ``executor``, ``workers`` and
    ``results_dir`` override the grid's own (the CLI's flags)."""
    if isinstance(source, Grid):
        if executor is None and workers is None and results_dir is None:
            return source
        source = {"profile": source.profile, "benchmarks": source.benchmarks,
                  "variants": source.variants, "seeds": source.seeds,
                  "overrides": source.overrides, "results_dir": str(source.results_dir),
                  "name": source.name,
                  "executor": {"kind": source.executor.kind,
                               "workers": source.executor.workers,
                               "slurm": source.executor.slurm}}
    default_name = "grid"
    if not isinstance(source, Mapping):
        path = Path(source)
        default_name = path.stem
        if path.exists() and not path.is_file():
            read_yaml(path, "grid file")   # NotRegularFileError: one sentence, never a read
        if not path.is_file():
            raise ConfigError(f"cannot read grid file {str(path)!r} (no such file); "
                              f"give the path of a YAML grid such as "
                              f"examples/sweep_quick.yaml")
        data = read_yaml(path, "grid file")
        if not isinstance(data, Mapping):
            raise ConfigError(f"grid file {str(path)!r} must hold a mapping with keys "
                              f"{', '.join(GRID_KEYS)}")
        source = data
    _string_keys("the grid", source)
    unknown = sorted(set(source) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"unknown grid key {short(unknown[0])}; valid keys: {', '.join(GRID_KEYS)}")
    if "variants" not in source:
        raise ConfigError(f"the grid needs 'variants' (labels such as seq, seq_full, "
                          f"pm[eps=0.3], magmax@ft); valid keys: {', '.join(GRID_KEYS)}")

    profile = source.get("profile", "quick")
    if not isinstance(profile, str):
        raise ConfigError(f"grid key 'profile' must be a profile name; got {short(profile)}")
    prof = load_profile(profile)  # ConfigError naming the profiles
    variants = _string_list("variants", source["variants"])
    benchmarks = (_string_list("benchmarks", source["benchmarks"])
                  if source.get("benchmarks") is not None else [None])
    seeds = source.get("seeds")
    if seeds is None:
        seeds = list(prof.get("seeds", [0]))
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 2**32 - 1
                        for s in seeds)):
        raise ConfigError(f"grid key 'seeds' must be a non-empty list of integers in 0..4294967295, "
                          f"e.g. [0, 1, 2]; got {short(seeds)}")
    overrides = source.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"grid key 'overrides' must map settings to values, e.g. "
                          f"{{epochs: 1}}; got {short(overrides)}")
    _string_keys("grid key 'overrides'", overrides)
    for k in overrides:
        if k in RESERVED_OVERRIDES:
            raise ConfigError(f"overrides cannot set {k!r}; use the grid keys profile, "
                              f"benchmarks, variants and seeds for those")
    name = source.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"grid key 'name' must be a file-name-like string; got {short(name)}")
    rd = results_dir if results_dir is not None else source.get("results_dir")
    if rd is not None and not isinstance(rd, (str, os.PathLike)):
        raise ConfigError(f"grid key 'results_dir' must be a folder path; got {short(rd)}")
    rd = Path(rd).expanduser().resolve() if rd is not None else DEFAULT_RESULTS
    return Grid(name, profile, benchmarks, variants, list(seeds), dict(overrides), rd,
                _executor(source.get("executor"), executor, workers))


def expand_grid(grid: str | os.PathLike | Mapping | Grid) -> list[ExperimentConfig]:
    """Every run of the grid, resolved: benchmark x variant x seed, in that order,
    each distinct config once."""
    g = load_grid(grid)
    size = grid_size(g)
    if size > MAX_GRID_RUNS:
        raise ConfigError(f"grid {g.name!r} holds {size} runs ({len(g.benchmarks)} benchmarks x "
                          f"{len(g.variants)} variants x {len(g.seeds)} seeds), more than "
                          f"{MAX_GRID_RUNS}: each is resolved before any starts; split it "
                          f"into several grid files")
    for b in g.benchmarks:
        if b is not None and b not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {b!r}; valid benchmarks: "
                              f"{', '.join(BENCHMARKS)}")
    out: dict[str, ExperimentConfig] = {}
    for benchmark in g.benchmarks:
        for label in g.variants:
            for seed in g.seeds:
                try:
                    cfg = variant_config(label, g.profile, benchmark, seed, g.overrides)
                except ConfigError as e:
                    text = str(e)
                    raise ConfigError(text if text.startswith(f"variant {label!r}")
                                      else f"variant {label!r}: {text}") from None
                out.setdefault(cfg.run_name(), cfg)
    return list(out.values())


def grid_size(grid: Grid) -> int:
    """Runs of the grid before equal configs are merged: benchmarks x variants x seeds."""
    return len(grid.benchmarks) * len(grid.variants) * len(grid.seeds)


def plan(cfgs: Iterable[ExperimentConfig], results_dir: str | os.PathLike,
         force: bool = False) -> tuple[list[ExperimentConfig], list[ExperimentConfig]]:
    """``(done, todo)``: runs with a valid result file, and the rest (missing, corrupt,
    or everything when ``force``)."""
    done, todo = [], []
    for cfg in cfgs:
        path = result_path(cfg, results_dir)
        if force or not path.exists():
            todo.append(cfg)
            continue
        try:
            read_result(path, cfg)
        except CorruptResultError:
            todo.append(cfg)
        else:
            done.append(cfg)
    return done, todo


def _label(cfg: ExperimentConfig) -> str:
    try:
        return variant_label(cfg)
    except ConfigError:  # a config made by hand; a report of failures must not fail
        return cfg.method


def describe(cfg: ExperimentConfig) -> str:
    return f"{_label(cfg)} on {cfg.benchmark}, seed {cfg.seed} ({cfg.run_name()})"


def format_plan(done: list[ExperimentConfig], todo: list[ExperimentConfig]) -> str:
    lines = [f"{len(done)} of {len(done) + len(todo)} runs already finished; "
             f"computing {len(todo)}"]
    lines += [f"  done     {describe(c)}" for c in done]
    lines += [f"  to run   {describe(c)}" for c in todo]
    return "\n".join(lines)
