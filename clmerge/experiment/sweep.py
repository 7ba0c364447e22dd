"""``clmerge sweep GRID.yaml``: expand a grid of runs, skip the finished ones, compute the
rest in parallel (locally or on Slurm), and collect every run into one table.

The grid (reading, checking, expanding, planning) is :mod:`clmerge.experiment.grid`; the
executors (local pool, submitit) are :mod:`clmerge.experiment.executors`; this module
runs a grid through them and collects the table.

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
* **local** is the process pool ``clmerge.report.study.ensure_results`` also uses
  (:func:`~clmerge.experiment.executors.compute_local`): a *spawn* pool, each run
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
* **The table** holds the grid's own runs only: each run's file is read for its config
  (method, benchmark, seed and config hash checked against the file's own config), in
  grid order (benchmark, then variant, then seed): one row per run with its config,
  ``cil_*``/``til_*`` metrics and costs. The CLI prints :data:`TABLE_COLUMNS` and
  writes the whole frame to ``<results_dir>/sweep-<name>.csv``.
* Progress: a live bar on a terminal, one line per finished run in a log or notebook.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import pandas as pd

from clmerge.experiment.config import ExperimentConfig
# the grid and the executors, also reached through this module
from clmerge.experiment.executors import (DEFAULT_TIMEOUT_MIN, SweepError,  # noqa: F401
                                          _check_devices, _failed, compute_local,
                                          compute_submitit, local_workers, slurm_parameters)
from clmerge.experiment.grid import (MAX_GRID_RUNS, Executor, Grid,  # noqa: F401
                                     describe, expand_grid, format_plan, grid_size,
                                     load_grid, plan)
from clmerge.experiment.results import (CorruptResultError, read_result, result_path,
                                        result_row, warn_skipped)

TABLE_COLUMNS = ["variant", "benchmark", "seed", "cil_A_last", "cil_A_avg",
                 "cil_forgetting", "til_A_last", "til_A_avg", "til_forgetting",
                 "train_seconds"]


def collect(cfgs: list[ExperimentConfig], results_dir: str | os.PathLike) -> pd.DataFrame:
    """The tidy rows (``load_results``' columns) of ``cfgs``' result files, in ``cfgs``'
    order: each file is read for its own config (``read_result(path, cfg)``), so a file
    of another config under a grid run's name, or any other file of the folder, never
    enters the table; an unusable file is skipped with one warning line."""
    rows = []
    for cfg in cfgs:
        path = result_path(cfg, results_dir)
        if not path.exists():
            continue
        try:
            rows.append(result_row(path, read_result(path, cfg)))
        except CorruptResultError as e:
            warn_skipped(e)
    return pd.DataFrame(rows)


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
        start = time.monotonic()
        if g.executor.kind == "local":
            n, devices = local_workers(todo, g.executor.workers)
            print(f"in {n} process(es)" + (f" on GPUs {','.join(devices)}" if devices else ""),
                  flush=True)
            errors = compute_local(todo, g.results_dir, workers=n, devices=devices)
            failed = [(c, _failed(c, e)) for c, e in errors]
            cause = errors[0][1] if errors else None
        else:
            failed, cause = compute_submitit(todo, g.results_dir, g.executor, g.name), None
        print(f"computed {len(todo) - len(failed)} of {len(todo)} runs in "
              f"{duration(time.monotonic() - start)} (wall)", flush=True)
        if failed:
            raise SweepError(f"{len(failed)} of {len(todo)} runs failed (the results of the runs "
                             f"that finished are saved; run the sweep again to retry "
                             f"only these):\n  "
                             + "\n  ".join(msg for _, msg in failed)) from cause
    return collect(cfgs, g.results_dir)


def duration(seconds: float) -> str:
    """``42 s``, ``43 min 36 s``, ``2 h 05 min``: a wall time as a sweep reports it."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def table_path(grid: Grid) -> Path:
    return grid.results_dir / f"sweep-{grid.name}.csv"
