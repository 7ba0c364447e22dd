"""The typed context every method runs in: what a run built, handed down to the method.

A :class:`RunContext` holds the run's objects (config, stream, model, LoRA adapter,
mergeable weights and their pretrained values, the loaders) and the operations every
method shares on them: the batches of an experience (:meth:`RunContext.batches`), a
training strategy with given plugins (:meth:`RunContext.make_strategy`) and one row of
the accuracy matrices (:meth:`RunContext.evaluate`). The experiment layer builds it
(:class:`clmerge.experiment.runner.Run`); a method (:mod:`clmerge.strategies.methods`)
reads it and never reaches back to what built it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from clmerge.avalanche_api import EvaluationPlugin, accuracy_metrics
from clmerge.backbones.heads import HeadedModel
from clmerge.backbones.lora import LoRAAdapter
from clmerge.benchmarks.loaders import Loaders, seed_worker
from clmerge.benchmarks.stream import Stream
from clmerge.plugins.metrics import CIL_KEY, TIL_KEY, TaskIncrementalAccuracy, accuracy_row
from clmerge.plugins.schedule import CosineEpochSchedule
from clmerge.strategies.template import MergingTemplate, resolve_amp
from clmerge.tensormath.tensordict import TensorDict


@dataclass
class RunContext:
    """What a method runs on.

    Attributes:
        config: the run's settings (an ``ExperimentConfig``, read only: the training
            settings, ``seed``, ``start``, ``diag_steps``...).
        label: the run's variant label (progress lines).
        stream: the class-incremental stream.
        model: the backbone with one head per experience.
        lora: the LoRA adapter (None under full fine-tuning).
        weights: the mergeable weights (LoRA target weights, or every backbone
            parameter), by name.
        theta0: their pretrained values.
        loaders: the run's data loaders (one generator for all).
        progress: print a progress line per experience.
        extra_plugins: plugins appended after the method's own (tests, timing scripts).
    """

    config: Any
    label: str
    stream: Stream
    model: HeadedModel
    lora: LoRAAdapter | None
    weights: dict
    theta0: TensorDict
    loaders: Loaders
    progress: bool = False
    extra_plugins: list = field(default_factory=list)

    def batches(self, experience, indices=None, batch_size=None):
        """(x, y) batches of an experience's training data (:meth:`Loaders.batches`)."""
        return self.loaders.batches(experience, indices=indices, batch_size=batch_size)

    def make_strategy(self, plugins: list) -> MergingTemplate:
        """A strategy on this run's model and settings with exactly ``plugins`` (and a
        fresh evaluator, and the lr_schedule plugin)."""
        cfg = self.config
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

    def evaluate(self, upto: int, strategy) -> tuple[list[float], list[float]]:
        """Class- and task-incremental accuracy on test experiences 0..``upto`` with heads
        0..``upto`` active (one row of R and R_til), through ``strategy``."""
        self.model.set_active_heads(range(upto + 1))
        res = strategy.eval(self.stream.test_stream[: upto + 1])
        return accuracy_row(res, CIL_KEY, upto + 1), accuracy_row(res, TIL_KEY, upto + 1)


def make_evaluator() -> EvaluationPlugin:
    """Avalanche's evaluator of class-incremental (per experience) and task-incremental
    accuracy, with no logger (results go to the result file)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(accuracy_metrics(experience=True), TaskIncrementalAccuracy(),
                                loggers=[])
