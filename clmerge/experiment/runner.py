"""Run one experiment, one experience at a time: the pipeline every method shares
(chapter 1 of the book).

    theta_hat = pretrained backbone
    for experience t:
        train a fresh LoRA (or all weights) from theta_hat on experience t
        theta*_t = trained model; theta_hat = merger(theta_hat, theta*_t, context)
        evaluate theta_hat with heads 0..t on test experiences 0..t -> row t of R, R_til

:class:`Run` builds every object of a run from its config, in a fixed order (the random
draws of a seed depend on it); :meth:`Run.execute` trains and evaluates. ``get_or_run``
loads an existing valid result instead of recomputing it (unless ``force``); a corrupt
file is recomputed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from clmerge.avalanche_api import EvaluationPlugin, accuracy_metrics, benchmark_from_datasets
from clmerge.backbones.heads import HeadedModel
from clmerge.backbones.lora import LoRAAdapter
from clmerge.backbones.registry import build_backbone
from clmerge.benchmarks.paper import Protocol
from clmerge.benchmarks.renditions import Renditions
from clmerge.benchmarks.registry import build_stream
from clmerge.errors import ConfigError
from clmerge.experiment import checkpoint
from clmerge.experiment import metrics as M
from clmerge.experiment.allocator import keep_freed_memory
from clmerge.experiment.atomic import check_output_folder, file_lock, remove_stale_tmp
from clmerge.experiment.config import ExperimentConfig
from clmerge.experiment.provenance import device_name, git_commit, versions
from clmerge.experiment.results import (CorruptResultError, read_result, result_path, set_aside,
                                        write_result)
from clmerge.experiment.seeding import seed_everything, seed_worker
from clmerge.experiment.variants import variant_label
from clmerge.plugins.diagnostics import DiagnosticsPlugin
from clmerge.plugins.guard import check_tensors
from clmerge.plugins.metrics import CIL_KEY, TIL_KEY, TaskIncrementalAccuracy, accuracy_row
from clmerge.plugins.progress import ProgressPlugin
from clmerge.plugins.schedule import CosineEpochSchedule
from clmerge.strategies.methods import MethodSpec, get_method
from clmerge.strategies.template import MergingTemplate, in_chunks, resolve_amp

DEFAULT_RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"
# where chapters write what they compute unless told otherwise (clmerge.report.study)
SCRATCH_RESULTS = Path(__file__).resolve().parents[2] / "_build" / "results"


class Run:
    """Every object of one run, built from a config (also used by tests, chapters and the
    timing scripts).

    Attributes (all set here):
        cfg: the config; label: its variant label. method: its :class:`MethodSpec`
        (resolved once); options: the method's typed options (None if it takes none).
        generator: the torch generator of the training loaders.
        stream, model, lora (None under full fine-tuning), weights (the mergeable
        weights), theta0 (their pretrained values).
        merger, merge, method_plugins: the method's parts (kind ``merge``; else None,
        None, []).
        diagnostics: the beginning-of-task diagnostics (None for ``probe`` and ``nmc``).
        strategy: the Avalanche strategy that trains and evaluates (None for ``probe``
        and ``nmc``),
        with the plugins progress, diagnostics, the method's plugins, the merge driver
        and ``extra_plugins``, in that order.
        checkpoint_dir: where checkpoints go (None: none); resumed_from: the experience
        a resumed run restarted after (None: not resumed).
    """

    def __init__(self, cfg: ExperimentConfig, progress: bool = False,
                 checkpoint_dir: str | Path | None = None, extra_plugins: list | None = None):
        self.cfg = cfg
        self.label = variant_label(cfg)
        self.method: MethodSpec = get_method(cfg.method)
        self.options = self.method.make_options(cfg.method_args)
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

        self.merger, self.merge, self.method_plugins = None, None, []
        self.diagnostics: DiagnosticsPlugin | None = None
        self.strategy: MergingTemplate | None = None
        kind = self.method.kind
        if kind == "merge":
            parts = self.method.build(self.options, self)
            self.merger, self.merge, self.method_plugins = parts.merger, parts.merge, parts.plugins
            self.diagnostics = DiagnosticsPlugin(self.weights, self.lora, cfg.diag_steps,
                                                 extras=self.merge.extras)
            self.strategy = self.make_strategy(
                [ProgressPlugin(self.label, progress), self.diagnostics,
                 *self.method_plugins, self.merge, *(extra_plugins or [])])
        elif kind == "joint":
            self.diagnostics = DiagnosticsPlugin(self.weights, self.lora, cfg.diag_steps)
            self.strategy = self.make_strategy(
                [ProgressPlugin("joint", progress), self.diagnostics, *(extra_plugins or [])])

    # ------------------------------------------------------------------ data
    def train_loader(self, experience, batch_size=None, shuffle=True):
        """Loader of an experience's training data (eval transforms), shuffled by the run's
        generator; ``cfg.num_workers`` persistent workers seeded by :func:`seed_worker`,
        pinned memory on CUDA. With 0 workers: a plain single-process loader."""
        workers = self.cfg.num_workers
        parallel = (dict(num_workers=workers, persistent_workers=True,
                         worker_init_fn=seed_worker) if workers > 0 else {})
        return torch.utils.data.DataLoader(
            experience.dataset.eval(), batch_size=batch_size or self.cfg.batch_size,
            shuffle=shuffle, generator=self.generator,
            pin_memory=self.cfg.device.startswith("cuda"), **parallel)

    def train_batches(self, experience, indices=None, batch_size=None):
        """(x, y) batches of an experience's training data, fixed order; with ``indices``,
        only those samples, in that order."""
        if indices is None:
            loader = self.train_loader(experience, batch_size=batch_size, shuffle=False)
        else:
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(experience.dataset.eval(), list(indices)),
                batch_size=batch_size or self.cfg.batch_size, shuffle=False,
                pin_memory=self.cfg.device.startswith("cuda"))
        for x, y, *_ in loader:
            yield x.to(self.cfg.device), y.to(self.cfg.device)

    # ------------------------------------------------------------------ strategies
    def make_strategy(self, plugins: list) -> MergingTemplate:
        """A strategy on this run's model and settings with exactly ``plugins`` (and a
        fresh evaluator, and the lr_schedule plugin): what the run's own strategy is made with."""
        cfg = self.cfg
        if cfg.lr_schedule == "cosine":
            plugins = [*plugins, CosineEpochSchedule(cfg.epochs)]
        return MergingTemplate(
            model=self.model, lora=self.lora, finetune=cfg.finetune, lr=cfg.lr,
            head_lr=cfg.head_lr, weight_decay=cfg.weight_decay, head_init=cfg.head_init,
            train_mb_size=cfg.batch_size,
            train_epochs=cfg.epochs, eval_mb_size=cfg.eval_batch_size, device=cfg.device,
            plugins=plugins, evaluator=make_evaluator(),
            amp=resolve_amp(cfg.amp, cfg.device), num_workers=cfg.num_workers,
            worker_init_fn=seed_worker)

    def add_plugin(self, plugin) -> None:
        """Append ``plugin`` to the run's strategy (after every plugin it was built with)."""
        self.strategy.plugins.append(plugin)

    def evaluate(self, upto: int, strategy=None) -> tuple[list[float], list[float]]:
        """Class- and task-incremental accuracy on test experiences 0..``upto`` with heads
        0..``upto`` active (one row of R and R_til), through ``strategy`` (default: the
        run's)."""
        strategy = strategy or self.strategy
        self.model.set_active_heads(range(upto + 1))
        res = strategy.eval(self.stream.test_stream[: upto + 1])
        return accuracy_row(res, CIL_KEY, upto + 1), accuracy_row(res, TIL_KEY, upto + 1)

    # ------------------------------------------------------------------ execution
    def execute(self) -> tuple[list, list, list]:
        """Train and evaluate as the method's kind says: (R rows, R_til rows, per-task
        records)."""
        if self.method.kind == "probe":
            return _run_probe(self)
        if self.method.kind == "nmc":
            return _run_nmc(self)
        if self.method.kind == "joint":
            return _run_joint(self)
        return _run_stream(self)


def make_evaluator() -> EvaluationPlugin:
    """Avalanche's evaluator of class-incremental (per experience) and task-incremental
    accuracy, with no logger (results go to the result file)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(accuracy_metrics(experience=True), TaskIncrementalAccuracy(),
                                loggers=[])


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


def _run_stream(run: Run):
    """Train, merge and evaluate experience after experience (kind ``merge``)."""
    cfg, strategy, merger, merge, diag = (run.cfg, run.strategy, run.merger, run.merge,
                                          run.diagnostics)
    extra = run.method_plugins
    R, R_til = [], []
    objects = {"merger": merger, "merge": merge, "diagnostics": diag, "clock": strategy.clock,
               **{f"plugin{i}": p for i, p in enumerate(extra)}}
    start = _resume(run, objects, R, R_til)
    for t, exp in enumerate(run.stream.train_stream):
        if t < start:
            continue
        strategy.train_heads = [t]
        strategy.train(exp)
        cil, til = run.evaluate(t)
        R.append(cil)
        R_til.append(til)
        if run.checkpoint_dir is not None:
            checkpoint.save(run.checkpoint_dir, t, cfg.config_hash(), run.model, objects,
                            {"R": R, "R_til": R_til,
                             "rng": checkpoint.rng_state({"loader": run.generator})})
    tasks = []
    for t in range(len(R)):
        rec = {"experience": t}
        rec.update(diag.records[t])
        rec.update(merge.records[t])
        if t < len(merger.records):
            rec.update(merger.records[t])
        for p in extra:
            if hasattr(p, "records") and t < len(p.records):
                rec.update(p.records[t])
        tasks.append(rec)
    return R, R_til, tasks


def _resume(run: Run, objects: dict, R: list, R_til: list) -> int:
    """Restore the run's last checkpoint, if any: the first experience still to train."""
    if run.checkpoint_dir is None:
        return 0
    restored = checkpoint.load(run.checkpoint_dir, run.cfg.config_hash(), run.model, objects,
                               run.stream.n_experiences)
    if restored is None:
        return 0
    done, extra = restored
    R.extend(extra["R"])
    R_til.extend(extra["R_til"])
    checkpoint.set_rng_state(extra["rng"])
    run.generator.set_state(extra["rng"]["generators"]["loader"].get_state())
    run.resumed_from = done
    print(f"resuming {run.cfg.run_name()} after experience {done}", flush=True)
    return done + 1


def _run_joint(run: Run):
    """Train every head and the backbone on the union of all experiences at once."""
    train = run.stream.train_stream
    data = train[0].dataset
    for e in list(train)[1:]:
        data = data.concat(e.dataset)
    joint_exp = benchmark_from_datasets(train=[data]).streams["train"][0]
    T = run.stream.n_experiences
    run.strategy.train_heads = list(range(T))
    run.strategy.train(joint_exp)
    check_tensors(run.model.named_parameters(), 0, "training", "the parameters")
    cil, til = run.evaluate(T - 1)
    return [cil], [til], run.diagnostics.records


@torch.no_grad()
def _features(run: Run, stream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backbone features (float32), labels and experience ids of every sample of
    ``stream``, the backbone's forward under the config's autocast (``amp``)."""
    run.model.eval()
    dtype = resolve_amp(run.cfg.amp, run.cfg.device)
    cast = (torch.autocast(device_type=torch.device(run.cfg.device).type, dtype=dtype)
            if dtype is not None else contextlib.nullcontext())
    feats, ys, exps = [], [], []
    for e in stream:
        loader = torch.utils.data.DataLoader(e.dataset.eval(), batch_size=run.cfg.eval_batch_size)
        for x, y, *_ in loader:
            with cast:
                f = in_chunks(run.model.backbone, x.to(run.cfg.device))
            feats.append(f.float().cpu().numpy())
            ys.append(y.numpy())
            exps.append(np.full(len(y), e.current_experience))
    return np.concatenate(feats), np.concatenate(ys), np.concatenate(exps)


def _run_probe(run: Run):
    """Logistic regression on frozen pretrained features of all training data."""
    t0 = time.perf_counter()
    xtr, ytr, _ = _features(run, run.stream.train_stream)
    xte, yte, ete = _features(run, run.stream.test_stream)
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=run.cfg.seed)
    clf.fit(scaler.transform(xtr), ytr)
    proba = clf.predict_proba(scaler.transform(xte))
    classes = list(clf.classes_)
    pred = np.array(classes)[proba.argmax(1)]
    cil, til = [], []
    for j, cls in enumerate(run.stream.classes_per_exp):
        m = ete == j
        cil.append(float((pred[m] == yte[m]).mean()))
        cols = [classes.index(c) for c in cls]
        til_pred = np.array(cls)[proba[m][:, cols].argmax(1)]
        til.append(float((til_pred == yte[m]).mean()))
    return [cil], [til], [{"train_seconds": time.perf_counter() - t0}]


def _run_nmc(run: Run):
    """Nearest class mean on frozen pretrained features, cosine similarity (the
    frozen-feature reference of arXiv 2210.04428, which reports 83.70 on CIFAR-100 in 10
    tasks with ViT-B/16).

    A continual method that trains nothing: at experience t the mean ``mu_c`` of the
    L2-normalised training features of each class c of experience t is added to the
    class means; a test input x is assigned ``argmax_c cos(f(x), mu_c)`` over every class
    seen so far (class-incremental) or over its experience's classes (task-incremental).
    Row t of ``R`` / ``R_til`` is the accuracy on test experiences 0..t after experience
    t. The backbone's features do not change, so earlier class means never go stale;
    forgetting comes only from new classes competing in the argmax. Computing the
    features of the training data once, rather than once per experience, gives the same
    means.
    """
    t0 = time.perf_counter()
    xtr, ytr, _ = _features(run, run.stream.train_stream)
    xte, yte, ete = _features(run, run.stream.test_stream)

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    xtr, xte = unit(xtr.astype(np.float64)), unit(xte.astype(np.float64))
    means = np.zeros((run.stream.n_classes, xtr.shape[1]))
    R, R_til, tasks = [], [], []
    seen: list[int] = []
    for t, cls in enumerate(run.stream.classes_per_exp):
        for c in cls:
            means[c] = unit(xtr[ytr == c].mean(0, keepdims=True))[0]
        seen.extend(cls)
        sims = xte @ means.T
        cil, til = [], []
        for j in range(t + 1):
            m = ete == j
            pred = np.array(seen)[sims[m][:, seen].argmax(1)]
            cil.append(float((pred == yte[m]).mean()))
            own = run.stream.classes_per_exp[j]
            til_pred = np.array(own)[sims[m][:, own].argmax(1)]
            til.append(float((til_pred == yte[m]).mean()))
        R.append(cil)
        R_til.append(til)
        tasks.append({"experience": t})
    tasks[-1]["train_seconds"] = time.perf_counter() - t0
    return R, R_til, tasks


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
