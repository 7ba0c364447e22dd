"""Merging methods (train each experience, then merge) and joint training.

:class:`MergingMethod` is the pipeline of chapter 1:

    theta_hat = pretrained backbone
    for experience t:
        train a fresh LoRA (or all weights) from theta_hat on experience t
        theta*_t = trained model; theta_hat = merger(theta_hat, theta*_t, context)
        evaluate theta_hat with heads 0..t on test experiences 0..t -> row t of R, R_til

Its parts, built in this order (the random draws of a seed depend on it): the merger,
the method's training-time plugins, the merge driver
(:class:`~clmerge.plugins.merge.MergePlugin`), the beginning-of-task diagnostics and the
strategy, whose plugins are progress, diagnostics, the method's plugins, the merge
driver and the context's ``extra_plugins``, in that order.

:class:`JointMethod` trains every head and the backbone on the union of all experiences
at once (the upper bound), and evaluates once.
"""

from __future__ import annotations

from typing import Iterator

from clmerge.avalanche_api import benchmark_from_datasets
from clmerge.mergers.base import Observations
from clmerge.plugins.diagnostics import DiagnosticsPlugin
from clmerge.plugins.guard import check_tensors
from clmerge.plugins.merge import MergePlugin, active_head_logits
from clmerge.plugins.progress import ProgressPlugin
from clmerge.strategies.context import RunContext
from clmerge.strategies.method import Method, Row


class MergingMethod(Method):
    """Attributes: merger, plugins (the method's training-time plugins), merge (the merge
    driver), diagnostics, strategy."""

    kind = "merge"

    def __init__(self, spec, options, ctx: RunContext):
        cfg = ctx.config
        self.merger = spec.merger(options if spec.merger.Options is not None else None)
        observations = Observations()
        self.plugins = spec.plugins(options, ctx, observations) if spec.plugins else []
        self.merge = MergePlugin(
            self.merger, ctx.weights, ctx.theta0, lora=ctx.lora, start=cfg.start,
            batches=ctx.loaders.batches, logits_fn=active_head_logits,
            observations=observations, seed=cfg.seed,
            state_sources=[p for p in self.plugins if hasattr(p, "state_bytes")])
        self.diagnostics = DiagnosticsPlugin(ctx.weights, ctx.lora, cfg.diag_steps,
                                             observations=observations)
        self.strategy = ctx.make_strategy(
            [ProgressPlugin(ctx.label, ctx.progress), self.diagnostics, *self.plugins,
             self.merge, *ctx.extra_plugins])

    def run(self, ctx: RunContext, start: int = 0) -> Iterator[Row]:
        for t, exp in enumerate(ctx.stream.train_stream):
            if t < start:
                continue
            self.strategy.train_heads = [t]
            self.strategy.train(exp)
            yield ctx.evaluate(t, self.strategy)

    def records(self) -> list[dict]:
        tasks = []
        for t in range(len(self.merge.records)):
            rec = {"experience": t}
            rec.update(self.diagnostics.records[t])
            rec.update(self.merge.records[t])
            if t < len(self.merger.records):
                rec.update(self.merger.records[t])
            for p in self.plugins:
                if hasattr(p, "records") and t < len(p.records):
                    rec.update(p.records[t])
            tasks.append(rec)
        return tasks

    def checkpointed(self) -> dict[str, object]:
        return {"merger": self.merger, "merge": self.merge, "diagnostics": self.diagnostics,
                "clock": self.strategy.clock,
                **{f"plugin{i}": p for i, p in enumerate(self.plugins)}}


class JointMethod(Method):
    """Attributes: diagnostics, strategy."""

    kind = "joint"

    def __init__(self, spec, options, ctx: RunContext):
        self.diagnostics = DiagnosticsPlugin(ctx.weights, ctx.lora, ctx.config.diag_steps)
        self.strategy = ctx.make_strategy(
            [ProgressPlugin("joint", ctx.progress), self.diagnostics, *ctx.extra_plugins])

    def run(self, ctx: RunContext, start: int = 0) -> Iterator[Row]:
        train = ctx.stream.train_stream
        data = train[0].dataset
        for e in list(train)[1:]:
            data = data.concat(e.dataset)
        joint_exp = benchmark_from_datasets(train=[data]).streams["train"][0]
        T = ctx.stream.n_experiences
        self.strategy.train_heads = list(range(T))
        self.strategy.train(joint_exp)
        check_tensors(ctx.model.named_parameters(), 0, "training", "the parameters")
        yield ctx.evaluate(T - 1, self.strategy)

    def records(self) -> list[dict]:
        return self.diagnostics.records
