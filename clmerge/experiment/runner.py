"""Run one experiment: the pipeline of DESIGN.md, one experience at a time.

    theta_hat = pretrained backbone
    for experience t:
        train a fresh LoRA (or all weights) from theta_hat on experience t
        theta*_t = trained model; theta_hat = merger(theta_hat, theta*_t, context)
        evaluate theta_hat with heads 0..t on test experiences 0..t -> row t of R, R_til

``get_or_run`` loads an existing valid result instead of recomputing it (unless
``force``); a corrupt file is recomputed.
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

from clmerge.experiment import checkpoint
from clmerge.experiment.atomic import check_output_folder, file_lock, remove_stale_tmp
from clmerge.experiment import metrics as M
from clmerge.experiment.config import ExperimentConfig
from clmerge.experiment.provenance import device_name, git_commit, versions
from clmerge.experiment.results import CorruptResultError, read_result, result_path, write_result
from clmerge.experiment.seeding import seed_everything
from clmerge.plugins.guard import check_tensors

DEFAULT_RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"


def variant_label(cfg: ExperimentConfig) -> str:
    """A readable name of the method as configured: ``seq``, ``seq_full``, ``pm[eps=0.3]``."""
    from clmerge.strategies.methods import validate_method_args

    label = cfg.method + ("_full" if cfg.finetune == "full" and cfg.method not in ("probe", "nmc") else "")
    if cfg.start == "finetuned":
        label += "@ft"
    defaults = validate_method_args(cfg.method, {})
    changed = {k: v for k, v in cfg.method_args.items() if defaults.get(k) != v}
    if changed:
        label += "[" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                for k, v in sorted(changed.items())) + "]"
    return label


class Run:
    """The objects of one run, built from a config (also used by tests and chapters)."""

    def __init__(self, cfg: ExperimentConfig):
        from clmerge.backbones.heads import HeadedModel
        from clmerge.backbones.lora import LoRAAdapter
        from clmerge.backbones.registry import build_backbone
        from clmerge.benchmarks.registry import build_stream

        self.cfg = cfg
        self.generator = seed_everything(cfg.seed)
        self.stream = build_stream(cfg.benchmark, cfg.n_experiences, cfg.seed)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            from clmerge.experiment.config import ConfigError
            raise ConfigError("device cuda requested but no GPU is available; "
                              "use --set device=cpu")
        backbone = build_backbone(cfg.backbone, self.stream.input_shape, cfg.image_size,
                                  pretrained=cfg.pretrained)
        torch.manual_seed(cfg.seed)  # heads and LoRA init do not depend on backbone loading
        self.model = HeadedModel(backbone, self.stream.classes_per_exp, self.stream.n_classes,
                                 head=cfg.head, scale=cfg.head_scale)
        self.lora = None
        if cfg.finetune == "lora":
            self.lora = LoRAAdapter(backbone, backbone.lora_targets, cfg.lora_rank, cfg.lora_alpha)
            self.weights = self.lora.base_weights()
        else:
            self.weights = dict(backbone.named_parameters())
        self.theta0 = {k: v.detach().clone() for k, v in self.weights.items()}
        self.checkpoint_dir: Path | None = None
        self.resumed_from: int | None = None

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

    def train_batches(self, experience):
        """(x, y) batches of an experience's training data, fixed order."""
        for x, y, *_ in self.train_loader(experience, shuffle=False):
            yield x.to(self.cfg.device), y.to(self.cfg.device)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the data loaders: seed python, numpy and torch in a worker.

    The loader gives worker ``i`` the torch seed ``base_seed + i``, ``base_seed`` drawn
    from the loader's generator (the run's); python's and numpy's generators get the same
    seed here, so random augmentations in workers are reproducible for a given seed and
    worker count.
    """
    import random

    seed = torch.initial_seed()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _strategy(run: Run, plugins: list, evaluator):
    from clmerge.strategies.template import MergingTemplate, resolve_amp

    cfg = run.cfg
    return MergingTemplate(
        model=run.model, lora=run.lora, finetune=cfg.finetune, lr=cfg.lr, head_lr=cfg.head_lr,
        weight_decay=cfg.weight_decay, train_mb_size=cfg.batch_size, train_epochs=cfg.epochs,
        eval_mb_size=cfg.eval_batch_size, device=cfg.device, plugins=plugins,
        evaluator=evaluator, amp=resolve_amp(cfg.amp, cfg.device), num_workers=cfg.num_workers)


def _evaluator():
    from clmerge.avalanche_api import EvaluationPlugin, accuracy_metrics
    from clmerge.plugins.metrics import TaskIncrementalAccuracy

    with warnings.catch_warnings():  # results go to the result file, not to a logger
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(accuracy_metrics(experience=True), TaskIncrementalAccuracy(),
                                loggers=[])


def _evaluate(run: Run, strategy, upto: int) -> tuple[list[float], list[float]]:
    from clmerge.plugins.metrics import CIL_KEY, TIL_KEY, accuracy_row

    run.model.set_active_heads(range(upto + 1))
    res = strategy.eval(run.stream.test_stream[: upto + 1])
    return accuracy_row(res, CIL_KEY, upto + 1), accuracy_row(res, TIL_KEY, upto + 1)


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
    processes instead (``clmerge.report.study.ensure_results``).
    """
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
    from clmerge.strategies.methods import get_method

    spec = get_method(cfg.method)
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t_start = time.perf_counter()
    run = Run(cfg)
    run.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    T = run.stream.n_experiences
    if spec.kind == "probe":
        R, R_til, tasks = _run_probe(run)
    elif spec.kind == "nmc":
        R, R_til, tasks = _run_nmc(run)
    elif spec.kind == "joint":
        R, R_til, tasks = _run_joint(run, progress)
    else:
        R, R_til, tasks = _run_stream(run, spec, progress)
    return {
        "name": cfg.run_name(),
        "variant": variant_label(cfg),
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "stream": {"classes_per_exp": run.stream.classes_per_exp,
                   "n_train": [len(e.dataset) for e in run.stream.train_stream],
                   "n_test": [len(e.dataset) for e in run.stream.test_stream]},
        "R": _pad(R, T),
        "R_til": _pad(R_til, T),
        "metrics": {"cil": M.summarize(R), "til": M.summarize(R_til)},
        "tasks": tasks,
        "provenance": {"versions": versions(), "git_commit": git_commit(),
                       "device": device_name(cfg.device), "started": started,
                       "wall_seconds": time.perf_counter() - t_start,
                       "resumed_after_experience": run.resumed_from,
                       "torch_threads": torch.get_num_threads()},
    }


def _active_head_logits(model, x):
    """Logits through the model's active heads (the current task's, while merging)."""
    return model(x)


def merge_parts(run: Run, spec):
    """The merger of ``spec`` built from the run's options, the plugin that drives it, and
    the method's training-time plugins: what every merging strategy of a run is made of."""
    from clmerge.mergers.registry import MERGERS, load_builtin_mergers
    from clmerge.plugins.merge import MergePlugin

    load_builtin_mergers()
    cfg = run.cfg
    merger_cls = MERGERS[spec.merger]
    merger = merger_cls(merger_cls.Options(**cfg.method_args) if merger_cls.Options else None)
    merge = MergePlugin(merger, run.weights, run.theta0, lora=run.lora, start=cfg.start,
                        train_batches=run.train_batches, logits_fn=_active_head_logits)
    run.merge_plugin = merge  # method plugins may hand data to the merge (``extras``)
    extra = spec.plugins(cfg, run) if spec.plugins else []
    return merger, merge, extra


def _run_stream(run: Run, spec, progress: bool, extra_plugins: list | None = None):
    from clmerge.plugins.diagnostics import DiagnosticsPlugin
    from clmerge.plugins.progress import ProgressPlugin

    cfg = run.cfg
    merger, merge, extra = merge_parts(run, spec)
    diag = DiagnosticsPlugin(run.weights, run.lora, cfg.diag_steps, extras=merge.extras)
    plugins = [ProgressPlugin(variant_label(cfg), progress),
               diag, *extra, merge, *(extra_plugins or [])]
    strategy = _strategy(run, plugins, _evaluator())
    run.merger, run.strategy = merger, strategy
    R, R_til = [], []
    objects = {"merger": merger, "merge": merge, "diagnostics": diag, "clock": strategy.clock,
               **{f"plugin{i}": p for i, p in enumerate(extra)}}
    start = _resume(run, objects, R, R_til)
    for t, exp in enumerate(run.stream.train_stream):
        if t < start:
            continue
        strategy.train_heads = [t]
        strategy.train(exp)
        cil, til = _evaluate(run, strategy, t)
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
    restored = checkpoint.load(run.checkpoint_dir, run.cfg.config_hash(), run.model, objects)
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


def _run_joint(run: Run, progress: bool):
    """Train every head and the backbone on the union of all experiences at once."""
    from clmerge.avalanche_api import benchmark_from_datasets
    from clmerge.plugins.diagnostics import DiagnosticsPlugin
    from clmerge.plugins.progress import ProgressPlugin

    train = run.stream.train_stream
    data = train[0].dataset
    for e in list(train)[1:]:
        data = data.concat(e.dataset)
    joint_exp = benchmark_from_datasets(train=[data]).streams["train"][0]
    diag = DiagnosticsPlugin(run.weights, run.lora, run.cfg.diag_steps)
    strategy = _strategy(run, [ProgressPlugin("joint", progress), diag], _evaluator())
    T = run.stream.n_experiences
    strategy.train_heads = list(range(T))
    strategy.train(joint_exp)
    check_tensors(run.model.named_parameters(), 0, "training", "the parameters")
    cil, til = _evaluate(run, strategy, T - 1)
    return [cil], [til], diag.records


@torch.no_grad()
def _features(run: Run, stream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    run.model.eval()
    feats, ys, exps = [], [], []
    for e in stream:
        loader = torch.utils.data.DataLoader(e.dataset.eval(), batch_size=run.cfg.eval_batch_size)
        for x, y, *_ in loader:
            feats.append(run.model.backbone(x.to(run.cfg.device)).cpu().numpy())
            ys.append(y.numpy())
            exps.append(np.full(len(y), e.current_experience))
    return np.concatenate(feats), np.concatenate(ys), np.concatenate(exps)


def _run_probe(run: Run):
    """Logistic regression on frozen pretrained features of all training data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

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
    of computing it again. A result file that cannot be used is reported and recomputed.
    """
    path = result_path(cfg, out_dir)
    if path.exists() and not force:
        try:
            return read_result(path)
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
                with contextlib.suppress(CorruptResultError):
                    return read_result(path)
            remove_stale_tmp(path.parent, path.name)
            ckpt = checkpoint_path(cfg, out_dir)
            if force:  # recompute from scratch, not from a checkpoint of an earlier attempt
                _remove_checkpoints(ckpt)
            result = run_experiment(cfg, progress=progress, checkpoint_dir=ckpt)
            write_result(result, path)
            _remove_checkpoints(ckpt)  # the result now holds everything
            return read_result(path)
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
