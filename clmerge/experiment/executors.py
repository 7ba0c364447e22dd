"""Where the runs of a sweep go: a local process pool, or submitit (local subprocesses
or Slurm jobs). Each executor computes a list of configs through
:func:`clmerge.experiment.runner.get_or_run`, so every run writes its own result file, and
reports the failed runs after the others have finished. How each executor behaves and
why is described in :mod:`clmerge.experiment.sweep`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterable

import submitit
import torch
from submitit.core.utils import UncompletedJobError
from tqdm import tqdm

from clmerge.errors import ConfigError
from clmerge.experiment import lifeline
from clmerge.experiment.config import ExperimentConfig
from clmerge.experiment.grid import GENERIC_PARAMETERS, Executor, _label
from clmerge.experiment.runner import get_or_run

# what submitit's local executor understands of the slurm block
LOCAL_PARAMETERS = ("timeout_min", "signal_delay_s", "stderr_to_stdout", "setup")
DEFAULT_TIMEOUT_MIN = 720


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the message names each and where its log is."""


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


def _failed(cfg: ExperimentConfig, exc: BaseException) -> str:
    return f"run {cfg.run_name()} ({_label(cfg)}, seed {cfg.seed}) failed with {_one_line(exc)}"


def _run_one(args) -> str:
    cfg, results_dir, force = args
    get_or_run(cfg, results_dir, force=force, progress=False)
    return cfg.run_name()


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in the body (in the main thread; elsewhere nothing changes).

    The pool's workers are started in ``submit``; a process started while SIGINT is
    ignored keeps it ignored from its first instruction, so a Ctrl-C (or the SIGINT a
    Jupyter kernel's interrupt sends to its process group) never lands in a worker's
    start-up imports. The command that started the pool ends its workers itself."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield   # not Python's to change here
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _init_worker(devices, parent: int) -> None:
    """Pool initializer: end with ``parent``, the process that started the pool
    (:func:`~clmerge.experiment.lifeline.die_with_parent`; named by it, as a worker whose
    parent ended while it started has another parent by now); take one GPU for this
    worker before it touches CUDA."""
    lifeline.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the
    if devices is not None:                        # sweep ends its workers itself
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
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(queue, os.getpid()))
        try:
            with _sigint_ignored():   # the workers start with Ctrl-C ignored (see below)
                futures = {pool.submit(_run_one, (cfg, results_dir, force)): cfg
                           for cfg in todo}
            for fut in as_completed(futures):
                cfg, exc = futures[fut], fut.exception()
                if exc is not None:
                    failures.append((cfg, exc))
                progress.done(cfg.run_name(), exc and _one_line(exc))
        except BaseException:   # stopped: the workers end now, not after their runs
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                with contextlib.suppress(OSError, AttributeError):
                    process.kill()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    progress.close()
    if failures and not keep_going:
        exc = failures[0][1]
        if len(failures) > 1 and hasattr(exc, "add_note"):
            exc.add_note(f"{len(failures)} runs failed: "
                         f"{', '.join(c.run_name() for c, _ in failures)}")
        raise exc
    return failures


def _submitit_job(cfg: ExperimentConfig, results_dir: str) -> str:
    """What one submitit job runs (module level: submitit pickles it by reference); it
    ends with the sweep that submitted it (``CLMERGE_PARENT_PID``), if that is known."""
    if os.environ.get(lifeline.PARENT_ENV):
        lifeline.die_with_parent()
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
    try:
        return job.exception()
    except UncompletedJobError as e:
        return e


def compute_submitit(todo: list[ExperimentConfig], results_dir: Path, executor: Executor,
                     name: str, poll_s: float | None = None
                     ) -> list[tuple[ExperimentConfig, str]]:
    """One submitit job per run of ``todo``; wait for all of them with a progress bar.
    Returns the failed runs, each with a one-line message naming its log file."""
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
    # a local job ends with this process (a Slurm job outlives it by design)
    parent = {lifeline.PARENT_ENV: str(os.getpid())}
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
                with temporary_environ({**_job_env([cfg]), **parent}):  # the job inherits it
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
    except BaseException:   # stopped: cancel what is running (the local jobs also watch us)
        for job in running:
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        raise
    progress.close()
    return failures


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
