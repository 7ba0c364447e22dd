"""``clmerge sweep GRID.yaml``: expand a grid of runs, skip the finished ones, compute the
rest in parallel (locally or on Slurm), and collect every run into one table.

A grid file (see ``examples/sweep_quick.yaml``)::

    profile: quick                    # default quick
    benchmarks: [split_mnist5k]       # default: the profile's benchmark
    variants: [seq, seq_full, "pm[eps=0.3]", magmax@ft]   # labels as in the chapters
    seeds: [0, 1, 2]                  # default: the profile's seeds
    overrides: {epochs: 2}            # settings applied to every run
    results_dir: data/results         # default data/results (the book's results)
    name: my-sweep                    # default: the file's name; names the table and jobs
    executor:
      kind: local                     # local | submitit_local | slurm
      workers: 4                      # processes / jobs at a time
      slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 240}

Design, and why:

* **One run is one result file.** Results are content-addressed by their config
  (``clmerge.experiment.results``), so "finished" needs no bookkeeping of its own: a run
  is done when its file exists and passes its checksum (:func:`plan`); a truncated or
  edited file counts as not done and is recomputed. Killing a sweep and starting it
  again therefore computes only what is missing, and a sweep that writes to
  ``data/results`` fills in the book's results too.
* **Every config is resolved before any run starts.** The grid's keys, the executor
  block, each variant label, benchmark and override go through ``make_config`` first;
  any mistake is a :class:`~clmerge.experiment.config.ConfigError` naming the valid
  choices, before a process starts or a file is written, so a typo costs seconds,
  not the first hour of a cluster allocation. Overrides may not set ``seed``,
  ``benchmark``, ``profile`` or ``method``: ``make_config`` would silently ignore
  them, and the grid has keys of its own for those.
* **Equal configs run once.** Two labels may resolve to the same config (``pm`` and
  ``pm[eps=<its default>]``); the grid keeps the first, since both name one file.
* **local** reuses the process pool of ``clmerge.report.study.ensure_results``
  (:func:`compute_local`, which that function now calls): a *spawn* pool, each run
  single-threaded on the CPU (``runner.run_experiment`` sets one torch thread, so a
  config gives the same bits whatever the parallelism), one process per core by
  default, or one per GPU when the runs are on CUDA, each worker pinned to its own
  GPU through ``CUDA_VISIBLE_DEVICES`` (set before the worker touches CUDA; more
  workers than GPUs share them round robin). A failed run does not stop the others;
  the sweep reports every failure at the end.
* **submitit** (``slurm``, and ``submitit_local`` that runs the very same job
  function in local subprocesses, which is how the Slurm path is tested without a
  cluster): one job per missing run; the job calls ``get_or_run`` and writes the
  result file itself, so the submitting process only waits and collects. Slurm gets
  one job array (``array_parallelism`` = ``workers`` when given); ``submitit_local``
  starts every job at once, so the sweep keeps at most ``workers`` jobs in flight
  itself, and hands each CUDA job a GPU slot (one per GPU, or round robin when
  ``workers`` exceeds the GPUs; the local executor hides the GPUs from a job it gives
  none, which suits CPU jobs). The job function is a module-level
  function because submitit pickles it by reference for a fresh interpreter. Jobs
  on the CPU get ``OMP_NUM_THREADS=1`` (a Slurm CPU job usually owns one core).
  Submitit's own defaults would kill a run after 2 (local) or 5 (Slurm) minutes, so
  ``timeout_min`` defaults to :data:`DEFAULT_TIMEOUT_MIN`. Logs go to
  ``<results_dir>/_submitit/<name>-<time>/``, a folder per sweep, because local job
  ids are process ids and would otherwise collide with old sweeps' files. The
  ``slurm`` block takes submitit's generic parameters (``timeout_min``, ``mem_gb``,
  ``gpus_per_node``, ``cpus_per_task``, ...) and Slurm's (``partition``, ``account``,
  ``qos``, ``constraint``, ``setup``, ...); ``submitit_local`` uses its
  ``timeout_min``, ``signal_delay_s``, ``stderr_to_stdout`` and ``setup`` and ignores
  the rest, so one grid runs both ways. A failed job raises :class:`SweepError`
  naming the run and its log file, after the other jobs have finished.
* **The table** is ``load_results`` of the results folder, keeping the grid's files,
  in grid order (benchmark, then variant, then seed): one row per run with its config,
  ``cil_*``/``til_*`` metrics and costs. The CLI prints :data:`TABLE_COLUMNS` and
  writes the whole frame to ``<results_dir>/sweep-<name>.csv``.
* Progress: a live bar on a terminal, one line per finished run in a log or notebook.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml
from tqdm import tqdm

from clmerge.experiment.config import (ConfigError, ExperimentConfig, _article, load_profile,
                                      read_yaml, short)
from clmerge.experiment.results import (CorruptResultError, load_results, read_result,
                                        result_path)
from clmerge.experiment.runner import DEFAULT_RESULTS, get_or_run, variant_label

GRID_KEYS = ("profile", "benchmarks", "variants", "seeds", "overrides", "results_dir",
             "name", "executor")
EXECUTOR_KEYS = ("kind", "workers", "slurm")
EXECUTOR_KINDS = ("local", "submitit_local", "slurm")
# submitit's generic parameters (translated per cluster) and their types
GENERIC_PARAMETERS: dict[str, type | tuple[type, ...]] = {
    "name": str, "timeout_min": int, "mem_gb": (int, float), "nodes": int,
    "cpus_per_task": int, "gpus_per_node": int, "tasks_per_node": int,
    "stderr_to_stdout": bool}
# what submitit's local executor understands of the slurm block
LOCAL_PARAMETERS = ("timeout_min", "signal_delay_s", "stderr_to_stdout", "setup")
DEFAULT_TIMEOUT_MIN = 720
RESERVED_OVERRIDES = ("method", "benchmark", "profile", "seed")
TABLE_COLUMNS = ["variant", "benchmark", "seed", "cil_A_last", "cil_A_avg",
                 "cil_forgetting", "til_A_last", "til_A_avg", "til_forgetting",
                 "train_seconds"]


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the message names each and where its log is."""


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


# --------------------------------------------------------------------------- the grid
def _slurm_keys() -> list[str]:
    import submitit
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


def _executor(block: Any, kind: str | None, workers: int | None) -> Executor:
    if block is None:
        block = {}
    if not isinstance(block, Mapping):
        raise ConfigError(f"grid key 'executor' must be a mapping with keys "
                          f"{', '.join(EXECUTOR_KEYS)}; got {short(block)}")
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
    valid = _slurm_keys()
    for k, v in slurm.items():
        if k not in valid:
            raise ConfigError(f"unknown slurm parameter {k!r}; valid parameters: "
                              f"{', '.join(valid)}")
        typ = GENERIC_PARAMETERS.get(k)
        if typ is not None and (not isinstance(v, typ) or (typ is int and isinstance(v, bool))):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise ConfigError(f"slurm parameter {k!r} expects {_article(names)}; got {short(v)}")
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
        if not path.is_file():
            raise ConfigError(f"cannot read grid file {str(path)!r} (no such file); "
                              f"give the path of a YAML grid such as "
                              f"examples/sweep_quick.yaml")
        data = read_yaml(path, "grid file")
        if not isinstance(data, Mapping):
            raise ConfigError(f"grid file {str(path)!r} must hold a mapping with keys "
                              f"{', '.join(GRID_KEYS)}")
        source = data
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
    from clmerge.benchmarks.registry import BENCHMARKS
    from clmerge.report.study import variant_config

    g = load_grid(grid)
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
                    raise ConfigError(f"variant {label!r}: {e}") from None
                out.setdefault(cfg.run_name(), cfg)
    return list(out.values())


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
            read_result(path)
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


def _failed(cfg: ExperimentConfig, exc: BaseException) -> str:
    return f"run {cfg.run_name()} ({_label(cfg)}, seed {cfg.seed}) failed with {_one_line(exc)}"


def format_plan(done: list[ExperimentConfig], todo: list[ExperimentConfig]) -> str:
    lines = [f"{len(done)} of {len(done) + len(todo)} runs already finished; "
             f"computing {len(todo)}"]
    lines += [f"  done     {describe(c)}" for c in done]
    lines += [f"  to run   {describe(c)}" for c in todo]
    return "\n".join(lines)


# --------------------------------------------------------------------------- progress
class _Progress:
    """A live bar on a terminal; one line per finished run in a notebook or a log."""

    def __init__(self, total: int):
        self.total, self.k = total, 0
        self.bar = tqdm(total=total, desc="runs", file=sys.stdout, mininterval=5,
                        disable=not sys.stdout.isatty())

    def start(self, name: str) -> None:
        self.bar.set_postfix_str(name)

    def done(self, name: str, error: str | None = None) -> None:
        self.k += 1
        self.bar.set_postfix_str(name)
        self.bar.update()
        line = f"  [{self.k}/{self.total}] {name}" + (f" FAILED: {error}" if error else "")
        if self.bar.disable:
            print(line, flush=True)
        elif error:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    last = text.splitlines()[-1].strip() if text else ""
    return f"{type(exc).__name__}: {last}" if last else type(exc).__name__


# --------------------------------------------------------------------------- local pool
def _run_one(args) -> str:
    cfg, results_dir, force = args
    get_or_run(cfg, results_dir, force=force, progress=False)
    return cfg.run_name()


def _init_worker(devices) -> None:
    """Pool initializer: take one GPU for this worker before it touches CUDA."""
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cuda_devices() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def _on_cuda(cfgs: Iterable[ExperimentConfig]) -> bool:
    cfgs = list(cfgs)
    return bool(cfgs) and all(c.device == "cuda" for c in cfgs)


def compute_local(todo: list[ExperimentConfig], results_dir: str | os.PathLike, *,
                  force: bool = False, workers: int = 1, devices: list[str] | None = None,
                  keep_going: bool = True) -> list[tuple[ExperimentConfig, BaseException]]:
    """Compute ``todo`` in ``workers`` spawned processes (in this process when 1), with a
    progress bar; ``devices``: GPUs to hand out to the workers, round robin.

    Returns the failed runs with their exceptions. With ``keep_going=False`` a serial
    run stops at the first failure and a pool raises the first failure's own exception
    once every run has ended (the behaviour of ``study.ensure_results``).
    """
    failures: list[tuple[ExperimentConfig, BaseException]] = []
    progress = _Progress(len(todo))
    if workers == 1:
        for cfg in todo:
            progress.start(cfg.run_name())
            try:
                _run_one((cfg, results_dir, force))
            except Exception as e:
                if not keep_going:
                    raise
                failures.append((cfg, e))
                progress.done(cfg.run_name(), _one_line(e))
            else:
                progress.done(cfg.run_name())
    else:
        ctx = multiprocessing.get_context("spawn")
        queue = None
        if devices:
            queue = ctx.Queue()
            for i in range(workers):
                queue.put(devices[i % len(devices)])
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(queue,)) as pool:
            futures = {pool.submit(_run_one, (cfg, results_dir, force)): cfg for cfg in todo}
            try:
                for fut in as_completed(futures):
                    cfg, exc = futures[fut], fut.exception()
                    if exc is not None:
                        failures.append((cfg, exc))
                    progress.done(cfg.run_name(), exc and _one_line(exc))
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    progress.close()
    if failures and not keep_going:
        exc = failures[0][1]
        if len(failures) > 1 and hasattr(exc, "add_note"):
            exc.add_note(f"{len(failures)} runs failed: "
                         f"{', '.join(c.run_name() for c, _ in failures)}")
        raise exc
    return failures


# --------------------------------------------------------------------------- submitit
def _submitit_job(cfg: ExperimentConfig, results_dir: str) -> str:
    """What one submitit job runs (module level: submitit pickles it by reference)."""
    get_or_run(cfg, Path(results_dir), progress=False)
    return cfg.run_name()


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]):
    """Set environment variables for the body, then restore them (or remove them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _job_env(cfgs: list[ExperimentConfig]) -> dict[str, str]:
    """One BLAS/OpenMP thread for jobs on the CPU (torch's is set by the runner)."""
    return ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            if all(c.device == "cpu" for c in cfgs) else {})


def slurm_parameters(executor: Executor, name: str, cuda: bool) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` keywords from the grid's slurm block: generic
    parameters as they are, Slurm's own prefixed ``slurm_``, and the sweep's defaults."""
    params: dict[str, Any] = {"timeout_min": DEFAULT_TIMEOUT_MIN, "name": f"clmerge-{name}"}
    if cuda:
        params["gpus_per_node"] = 1
    if executor.workers:
        params["slurm_array_parallelism"] = executor.workers
    for k, v in executor.slurm.items():
        params[k if k in GENERIC_PARAMETERS else f"slurm_{k}"] = v
    return params


def _job_error(job) -> BaseException | None:
    from submitit.core.utils import UncompletedJobError
    try:
        return job.exception()
    except UncompletedJobError as e:
        return e


def compute_submitit(todo: list[ExperimentConfig], results_dir: Path, executor: Executor,
                     name: str, poll_s: float | None = None
                     ) -> list[tuple[ExperimentConfig, str]]:
    """One submitit job per run of ``todo``; wait for all of them with a progress bar.
    Returns the failed runs, each with a one-line message naming its log file."""
    import submitit

    folder = results_dir / "_submitit" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    progress = _Progress(len(todo))
    running: dict[Any, tuple[ExperimentConfig, int | None]] = {}
    failures: list[tuple[ExperimentConfig, str]] = []
    pending: list[ExperimentConfig] = list(todo)
    if executor.kind == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(**slurm_parameters(executor, name, _on_cuda(todo)))
        with temporary_environ(_job_env(todo)):  # sbatch exports this process's environment
            jobs = ex.map_array(_submitit_job, todo, [str(results_dir)] * len(todo))
        running = {job: (cfg, None) for job, cfg in zip(jobs, todo)}
        pending, slots, limit = [], [], len(todo)
        poll_s = 15.0 if poll_s is None else poll_s
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(**{"timeout_min": DEFAULT_TIMEOUT_MIN, **{
            k: v for k, v in executor.slurm.items() if k in LOCAL_PARAMETERS}})
        # the local executor takes GPUs by index; it hides them all from a job without
        gpus = ([int(d) for d in cuda_devices() if d.isdigit()] or [0]
                if any(c.device == "cuda" for c in todo) else [])
        limit = min(len(todo), executor.workers
                    or (len(gpus) if _on_cuda(todo) else cpu_count()))
        slots = [gpus[i % len(gpus)] for i in range(limit)] if gpus else []
        poll_s = 0.5 if poll_s is None else poll_s
    print(f"submitit {executor.kind}: {len(todo)} job(s), at most {limit} at a time; "
          f"logs in {folder}", flush=True)
    try:
        while pending or running:
            while pending and len(running) < limit:
                cfg, gpu = pending[0], None
                if cfg.device == "cuda":
                    if not slots:
                        break  # wait for a GPU
                    gpu = slots.pop(0)
                    ex.update_parameters(gpus_per_node=1, visible_gpus=(gpu,))
                else:
                    ex.update_parameters(gpus_per_node=0, visible_gpus=())
                pending.pop(0)
                progress.start(cfg.run_name())
                with temporary_environ(_job_env([cfg])):  # the job's process inherits it
                    running[ex.submit(_submitit_job, cfg, str(results_dir))] = (cfg, gpu)
            for job in [j for j in running if j.done()]:
                cfg, gpu = running.pop(job)
                if gpu is not None:
                    slots.append(gpu)
                exc = _job_error(job)
                if exc is not None:
                    failures.append((cfg, f"{_failed(cfg, exc)}; log: {job.paths.stderr}"))
                progress.done(cfg.run_name(),
                              exc and f"{_one_line(exc)} (log: {job.paths.stderr})")
            if pending or running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in running:
            job.cancel(check=False)
        raise
    progress.close()
    return failures


# --------------------------------------------------------------------------- the sweep
def collect(cfgs: list[ExperimentConfig], results_dir: str | os.PathLike) -> pd.DataFrame:
    """The tidy rows (``load_results``) of ``cfgs``' result files, in ``cfgs``' order."""
    wanted = [str(result_path(c, results_dir)) for c in cfgs]
    df = load_results(results_dir)
    if df.empty:
        return df
    order = {p: i for i, p in enumerate(wanted)}
    df = df[df["path"].isin(order)]
    return df.sort_values("path", key=lambda s: s.map(order)).reset_index(drop=True)


def _check_devices(todo: list[ExperimentConfig], kind: str) -> None:
    if kind == "slurm":
        if shutil.which("srun") is None or shutil.which("sbatch") is None:
            raise ConfigError("executor slurm needs a Slurm cluster (no sbatch/srun found "
                              "here); valid executors on this machine: local, submitit_local")
        return
    if any(c.device == "cuda" for c in todo) and not cuda_devices():
        raise ConfigError("the grid runs on device cuda but this machine has no GPU; "
                          "set overrides: {device: cpu} or use executor slurm")


def local_workers(todo: list[ExperimentConfig], workers: int | None) -> tuple[int, list | None]:
    """How many processes, and which GPUs they share out (None on the CPU)."""
    devices = cuda_devices() if _on_cuda(todo) else None
    default = len(devices) if devices else cpu_count()
    return min(len(todo), workers or default), devices


def run_sweep(grid: str | os.PathLike | Mapping | Grid, executor: str | None = None,
              workers: int | None = None, results_dir: str | os.PathLike | None = None
              ) -> pd.DataFrame:
    """Run every missing run of ``grid`` and return the table of all its runs.

    ``executor`` (local, submitit_local, slurm), ``workers`` and ``results_dir``
    override the grid's. Raises :class:`ConfigError` before any work for a bad grid,
    and :class:`SweepError` naming the failed runs after the others have finished.
    """
    g = load_grid(grid, executor, workers, results_dir)
    cfgs = expand_grid(g)
    done, todo = plan(cfgs, g.results_dir)
    print(f"{len(done)} of {len(cfgs)} runs already finished; computing {len(todo)}",
          flush=True)
    if todo:
        _check_devices(todo, g.executor.kind)
        if g.executor.kind == "local":
            n, devices = local_workers(todo, g.executor.workers)
            print(f"in {n} process(es)" + (f" on GPUs {','.join(devices)}" if devices else ""),
                  flush=True)
            errors = compute_local(todo, g.results_dir, workers=n, devices=devices)
            failed = [(c, _failed(c, e)) for c, e in errors]
            cause = errors[0][1] if errors else None
        else:
            failed, cause = compute_submitit(todo, g.results_dir, g.executor, g.name), None
        if failed:
            raise SweepError(f"{len(failed)} of {len(todo)} runs failed (the results of the runs "
                             f"that finished are saved; run the sweep again to retry "
                             f"only these):\n  "
                             + "\n  ".join(msg for _, msg in failed)) from cause
    return collect(cfgs, g.results_dir)


def table_path(grid: Grid) -> Path:
    return grid.results_dir / f"sweep-{grid.name}.csv"
