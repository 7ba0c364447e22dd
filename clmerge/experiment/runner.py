"""Run one experiment: build its objects, hand them to its method, write the result.

:class:`Run` builds every object of a run from its config, in a fixed order (the random
draws of a seed depend on it), puts them in a
:class:`~clmerge.strategies.context.RunContext` and builds the method on it
(:meth:`clmerge.strategies.methods.MethodSpec.build`). :meth:`Run.execute` lets the
method train and evaluate (:meth:`clmerge.strategies.method.Method.run`), one row of the
accuracy matrices at a time, writing a checkpoint after each row of a method that has
state to checkpoint and resuming from one. ``get_or_run`` loads an existing valid result
instead of recomputing it (unless ``force``); a corrupt file is recomputed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import time
from pathlib import Path

import torch

from clmerge.backbones.heads import HeadedModel
from clmerge.backbones.lora import LoRAAdapter
from clmerge.backbones.registry import build_backbone
from clmerge.benchmarks.loaders import Loaders
from clmerge.benchmarks.paper import Protocol
from clmerge.benchmarks.renditions import Renditions
from clmerge.benchmarks.registry import build_stream
from clmerge.errors import ConfigError
from clmerge.experiment import checkpoint, lifeline
from clmerge.experiment import metrics as M
from clmerge.experiment.allocator import keep_freed_memory
from clmerge.experiment.atomic import check_output_folder, file_lock, remove_stale_tmp
from clmerge.experiment.config import ExperimentConfig
from clmerge.experiment.provenance import device_name, git_commit, versions
from clmerge.experiment.results import (CorruptResultError, read_result, result_path, set_aside,
                                        write_result)
from clmerge.experiment.seeding import seed_everything
from clmerge.experiment.variants import variant_label
from clmerge.paths import results_dir, scratch_dir
from clmerge.strategies.context import RunContext
from clmerge.strategies.method import Method
from clmerge.strategies.methods import MethodSpec, get_method
from clmerge.strategies.template import MergingTemplate

# where results go unless told otherwise, and where chapters write what they compute
# unless told otherwise (clmerge.report.study): from settings or the working directory
DEFAULT_RESULTS = results_dir()
SCRATCH_RESULTS = scratch_dir()


class Run:
    """Every object of one run, built from a config (also used by tests, chapters and the
    timing scripts).

    Attributes (all set here):
        cfg: the config; label: its variant label. spec: its :class:`MethodSpec`
        (resolved once); options: the method's typed options (None if it takes none).
        generator: the torch generator of the training loaders.
        stream, model, lora (None under full fine-tuning), weights (the mergeable
        weights), theta0 (their pretrained values).
        context: the :class:`RunContext` the method runs on.
        method: the :class:`~clmerge.strategies.method.Method`, built on ``context``;
        its parts are read through ``strategy``, ``merger``, ``merge``,
        ``diagnostics`` and ``method_plugins`` (None, or [], for a method without them).
        checkpoint_dir: where checkpoints go (None: none); resumed_from: the experience
        a resumed run restarted after (None: not resumed).
    """

    def __init__(self, cfg: ExperimentConfig, progress: bool = False,
                 checkpoint_dir: str | Path | None = None, extra_plugins: list | None = None):
        self.cfg = cfg
        self.label = variant_label(cfg)
        self.spec: MethodSpec = get_method(cfg.method)
        self.options = self.spec.make_options(cfg.method_args)
        self.generator = seed_everything(cfg.seed)
        self.stream = build_stream(cfg.benchmark, cfg.n_experiences, cfg.seed,
                                   protocol=Protocol.from_config(cfg),
                                   rendition=Renditions.from_config(cfg))
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device cuda requested but no GPU is available; "
                              "use --set device=cpu")
        backbone = build_backbone(cfg.backbone, self.stream.input_shape, cfg.image_size,
                                  pretrained=cfg.pretrained, vit_weights=cfg.vit_weights)
        torch.manual_seed(cfg.seed)  # heads and LoRA init do not depend on backbone loading
        self.model = HeadedModel(backbone, self.stream.classes_per_exp, self.stream.n_classes,
                                 head=cfg.head, scale=cfg.head_scale)
        self.lora: LoRAAdapter | None = None
        if cfg.finetune == "lora":
            self.lora = LoRAAdapter(backbone, backbone.lora_targets, cfg.lora_rank, cfg.lora_alpha)
            self.weights = self.lora.base_weights()
        else:
            self.weights = dict(backbone.named_parameters())
        self.theta0 = {k: v.detach().clone() for k, v in self.weights.items()}
        self.checkpoint_dir: Path | None = Path(checkpoint_dir) if checkpoint_dir else None
        self.resumed_from: int | None = None
        self.context = RunContext(
            config=cfg, label=self.label, stream=self.stream, model=self.model,
            lora=self.lora, weights=self.weights, theta0=self.theta0,
            loaders=Loaders(cfg.batch_size, cfg.device, cfg.num_workers, self.generator),
            progress=progress, extra_plugins=list(extra_plugins or []))
        self.method: Method = self.spec.build(self.options, self.context)

    # ------------------------------------------------------------------ the method's parts
    @property
    def strategy(self) -> MergingTemplate | None:
        return getattr(self.method, "strategy", None)

    @property
    def merger(self):
        return getattr(self.method, "merger", None)

    @property
    def merge(self):
        return getattr(self.method, "merge", None)

    @property
    def diagnostics(self):
        return getattr(self.method, "diagnostics", None)

    @property
    def method_plugins(self) -> list:
        return getattr(self.method, "plugins", [])

    def train_loader(self, experience, batch_size=None, shuffle=True):
        """Loader of an experience's training data (:meth:`Loaders.loader`)."""
        return self.context.loaders.loader(experience, batch_size=batch_size, shuffle=shuffle)

    def train_batches(self, experience, indices=None, batch_size=None):
        """(x, y) batches of an experience's training data (:meth:`Loaders.batches`)."""
        return self.context.batches(experience, indices=indices, batch_size=batch_size)

    def make_strategy(self, plugins: list) -> MergingTemplate:
        """A strategy on this run's model and settings with exactly ``plugins``
        (:meth:`RunContext.make_strategy`)."""
        return self.context.make_strategy(plugins)

    def add_plugin(self, plugin) -> None:
        """Append ``plugin`` to the run's strategy (after every plugin it was built with)."""
        self.strategy.plugins.append(plugin)

    def evaluate(self, upto: int, strategy=None) -> tuple[list[float], list[float]]:
        """One row of R and R_til through ``strategy`` (default: the run's)."""
        return self.context.evaluate(upto, strategy or self.strategy)

    # ------------------------------------------------------------------ execution
    def execute(self) -> tuple[list, list, list]:
        """Let the method train and evaluate: (R rows, R_til rows, per-task records).
        After each row, a checkpoint (when the method has state to checkpoint and the
        run a checkpoint folder); a checkpoint found first is resumed from."""
        objects = self.method.checkpointed()
        saving = objects is not None and self.checkpoint_dir is not None
        R, R_til = [], []
        start = self._resume(objects, R, R_til) if saving else 0
        for t, (cil, til) in enumerate(self.method.run(self.context, start), start):
            R.append(cil)
            R_til.append(til)
            if saving:
                checkpoint.save(self.checkpoint_dir, t, self.cfg.config_hash(), self.model,
                                objects, {"R": R, "R_til": R_til,
                                          "rng": checkpoint.rng_state({"loader": self.generator})})
        return R, R_til, self.method.records()

    def _resume(self, objects: dict, R: list, R_til: list) -> int:
        """Restore the run's last checkpoint, if any: the first experience still to train."""
        restored = checkpoint.load(self.checkpoint_dir, self.cfg.config_hash(), self.model,
                                   objects, self.stream.n_experiences)
        if restored is None:
            return 0
        done, extra = restored
        R.extend(extra["R"])
        R_til.extend(extra["R_til"])
        checkpoint.set_rng_state(extra["rng"])
        self.generator.set_state(extra["rng"]["generators"]["loader"].get_state())
        self.resumed_from = done
        print(f"resuming {self.cfg.run_name()} after experience {done}", flush=True)
        return done + 1


def _pad(rows: list[list[float]], T: int) -> list[list[float | None]]:
    return [list(r) + [None] * (T - len(r)) for r in rows]


CPU_THREADS = 1


def run_experiment(cfg: ExperimentConfig, progress: bool = True,
                   checkpoint_dir: str | Path | None = None) -> dict:
    """Run ``cfg`` and return the result dict (not yet written).

    With ``checkpoint_dir``, a checkpoint is written there after each experience
    (:mod:`clmerge.experiment.checkpoint`) and a run that finds one resumes after the
    experience it records, ending with the same result as an uninterrupted run.

    On the CPU a run uses ``CPU_THREADS`` (1) intra-op threads, whatever the machine:
    float reductions then happen in the same order everywhere, so a config gives the
    same numbers bit for bit on any CPU count, and independent runs parallelise across
    processes instead (``clmerge.report.study.ensure_results``). Freed memory stays in
    the process (:mod:`clmerge.experiment.allocator`: the same numbers, less system time).
    """
    keep_freed_memory()
    with cpu_threads(cfg):
        return _run_experiment(cfg, progress, checkpoint_dir)


@contextlib.contextmanager
def cpu_threads(cfg: ExperimentConfig):
    """Run the body with ``CPU_THREADS`` intra-op threads when ``cfg`` runs on the CPU."""
    if cfg.device != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_experiment(cfg: ExperimentConfig, progress: bool, checkpoint_dir=None) -> dict:
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    run = Run(cfg, progress=progress, checkpoint_dir=checkpoint_dir)
    T = run.stream.n_experiences
    R, R_til, tasks = run.execute()
    n_test = [len(e.dataset) for e in run.stream.test_stream]
    return {
        "name": cfg.run_name(),
        "variant": run.label,
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "stream": {"classes_per_exp": run.stream.classes_per_exp,
                   "n_train": [len(e.dataset) for e in run.stream.train_stream],
                   "n_test": n_test},
        "R": _pad(R, T),
        "R_til": _pad(R_til, T),
        "metrics": {"cil": M.summarize(R, n_test), "til": M.summarize(R_til, n_test)},
        "tasks": tasks,
        "provenance": {"versions": versions(), "git_commit": git_commit(),
                       "device": device_name(cfg.device), "started": started,
                       "wall_seconds": time.perf_counter() - t_start,
                       "resumed_after_experience": run.resumed_from,
                       "torch_threads": torch.get_num_threads(),
                       "malloc_keeps_freed_memory": keep_freed_memory()},
    }


def get_or_run(cfg: ExperimentConfig, out_dir=DEFAULT_RESULTS, force: bool = False,
               progress: bool = True) -> dict:
    """The result of ``cfg``: loaded if a valid file exists, else computed and written.

    The computation holds a lock next to the result (``<result>.lock``), so a second
    process asking for the same run waits and then loads the first one's result instead
    of computing it again. A result file that cannot be used (unreadable, out of range,
    or another config's: :func:`~clmerge.experiment.results.read_result`) is reported in
    one line, set aside as ``<name>.corrupt`` and recomputed.
    """
    path = result_path(cfg, out_dir)
    if path.exists() and not force:
        try:
            return read_result(path, cfg)
        except CorruptResultError as e:
            print(f"recomputing: {e}", flush=True)
    check_output_folder(out_dir)
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)

    def waiting():
        print(f"waiting for another process computing {path.name}", flush=True)

    try:
        with file_lock(path, on_wait=waiting):
            if path.exists() and not force:  # computed by the process we waited for
                try:
                    return read_result(path, cfg)
                except CorruptResultError:
                    set_aside(path)   # kept as <name>.corrupt, never read again
            remove_stale_tmp(path.parent, path.name)
            ckpt = checkpoint_path(cfg, out_dir)
            if force:  # recompute from scratch, not from a checkpoint of an earlier attempt
                _remove_checkpoints(ckpt)
            result = run_experiment(cfg, progress=progress, checkpoint_dir=ckpt)
            if not lifeline.parent_alive():   # the command that started us has ended
                raise SystemExit(1)
            write_result(result, path)
            _remove_checkpoints(ckpt)  # the result now holds everything
            return read_result(path, cfg)
    except BaseException:
        for folder in created:  # a run that wrote nothing leaves no empty folders
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _remove_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only when no other run has checkpoints there


def checkpoint_path(cfg: ExperimentConfig, out_dir=DEFAULT_RESULTS) -> Path:
    """Where a run's checkpoints live while it is unfinished."""
    return Path(out_dir) / "_checkpoints" / cfg.run_name()
