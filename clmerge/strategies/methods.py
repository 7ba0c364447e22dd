"""The method registry: what ``clmerge run --method NAME`` runs.

A :class:`MethodSpec` is everything a method adds to the shared pipeline:

- ``method``: the :class:`~clmerge.strategies.method.Method` class that runs it:
  :class:`~clmerge.strategies.merging.MergingMethod` (kind ``merge``: train each
  experience, then merge; the default), :class:`~clmerge.strategies.merging.JointMethod`
  (``joint``: one model on all experiences at once),
  :class:`~clmerge.strategies.frozen.ProbeMethod` (``probe``: no training, a linear
  probe of frozen features) or :class:`~clmerge.strategies.frozen.NMCMethod` (``nmc``:
  no training, nearest class mean of frozen features, experience by experience);
- ``merger``: the :class:`~clmerge.mergers.base.Merger` class that joins the fine-tuned
  model of each experience to the merged one (``Sequential``: no merge);
- ``options``: the typed options dataclass (fields with defaults and ``help``; bad values
  raise ``ValueError`` in ``__post_init__``); by default the merger's ``Options``;
- ``plugins``: a factory ``(options, ctx, observations) -> [SupervisedPlugin, ...]`` of
  the training-time plugins the method adds (P&M's perturbation, TRM's trajectory
  recorder, EWC, LwF). ``observations`` is the
  :class:`~clmerge.mergers.base.Observations` the merge reads (``MergeContext.task``)
  and ``ctx`` the run's :class:`~clmerge.strategies.context.RunContext`.

``--set METHOD.KEY=VALUE`` sets options; :func:`validate_method_args` checks names,
types and ranges before any work. A run resolves its method once (:func:`get_method`)
and builds its typed options once (:meth:`MethodSpec.make_options`), then the method
(:meth:`MethodSpec.build`).

EWC and LwF are methods without a merge: the ``Sequential`` merger plus a plugin whose
options (``EWCOptions``, ``LwFOptions``) live with the plugin.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from clmerge.errors import ConfigError
from clmerge.mergers.average import RunningAverage
from clmerge.mergers.base import Merger
from clmerge.mergers.cofima import CoFiMA
from clmerge.mergers.coma import CoMA
from clmerge.mergers.dare import Dare
from clmerge.mergers.magmax import MagMax
from clmerge.mergers.pm import PerturbAndMergeMerger
from clmerge.mergers.sequential import Sequential
from clmerge.mergers.task_arithmetic import TaskArithmetic
from clmerge.mergers.ties import Ties
from clmerge.mergers.trm import TrajectoryRegularizedMerger
from clmerge.plugins.perturbation import PerturbationPlugin
from clmerge.plugins.regularization import EWC, EWCOptions, HeadedLwF, LwFOptions
from clmerge.plugins.trajectory import TrajectoryPlugin
from clmerge.strategies.context import RunContext
from clmerge.strategies.frozen import NMCMethod, ProbeMethod
from clmerge.strategies.merging import JointMethod, MergingMethod
from clmerge.strategies.method import Method
from clmerge.values import coerce_option, short


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    method: type[Method] = MergingMethod
    merger: type[Merger] | None = None
    options: type | None = None
    plugins: Callable[[Any, RunContext, Any], list] | None = None

    def __post_init__(self):
        if (self.method is MergingMethod) != (self.merger is not None):
            raise ValueError(f"method {self.name!r}: a merger is required for a merging "
                             f"method and only there")

    @property
    def kind(self) -> str:
        """The method's family: ``merge``, ``joint``, ``probe`` or ``nmc``."""
        return self.method.kind

    @property
    def options_class(self) -> type | None:
        """The typed options of the method (None: it takes none)."""
        if self.options is not None:
            return self.options
        return self.merger.Options if self.merger is not None else None

    def validate_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Defaults of the options updated by ``args`` (strings from the command line
        are converted to each field's type), checked by the options' ``__post_init__``;
        :class:`ConfigError` names the valid options or the bad value."""
        name, opts = self.name, self.options_class
        if opts is None:
            if args:
                raise ConfigError(f"method {name!r} takes no options; got "
                                  f"{', '.join(short(a) for a in args)}")
            return {}
        fields = {f.name: f for f in dataclasses.fields(opts)}
        out = dataclasses.asdict(opts())
        for k, v in args.items():
            if k not in fields:
                raise ConfigError(f"unknown option {name}.{str(k)[:40]}; valid options of "
                                  f"{name!r}: {', '.join(fields) or 'none'}")
            out[k] = coerce_option(f"option {name}.{k}", out[k], v)
        for k in args:   # upper bounds of the options that cost time or memory
            limit = fields[k].metadata.get("max")
            if limit is not None and out[k] > limit:
                raise ConfigError(f"option {name}.{k} must be <= {limit} "
                                  f"({fields[k].metadata.get('why', 'its budget')}); "
                                  f"got {short(out[k])}")
        try:
            opts(**out)  # the Options dataclass validates ranges in __post_init__
        except ValueError as e:
            raise ConfigError(f"method {name!r}: {e}") from None
        return out

    def make_options(self, method_args: dict[str, Any]):
        """The options instance of a config's ``method_args`` (validated values)."""
        cls = self.options_class
        return cls(**method_args) if cls is not None else None

    def build(self, options, ctx: RunContext) -> Method:
        """The method, with every part it trains with, on the run's context."""
        return self.method(self, options, ctx)


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def options_class(name: str) -> type | None:
    return get_method(name).options_class


def validate_method_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Defaults of the method's options updated by ``args``, checked and typed."""
    return get_method(name).validate_args(args)


# ---------------------------------------------------------------------- plugin factories
def _pm_plugins(o, ctx, observations) -> list:
    if o.perturbation == "none":
        return []
    return [PerturbationPlugin(ctx.weights, lora=ctx.lora, eps=o.eps,
                               probs=(o.p0, o.p_plus, o.p_minus),
                               mode=o.perturbation, seed=ctx.config.seed)]


def _trm_plugins(o, ctx, observations) -> list:
    return [TrajectoryPlugin(ctx.weights, observations, lora=ctx.lora,
                             snapshots=o.snapshots if o.trajectory else 1,
                             keep_batches=o.batches + 1 if o.steps > 0 else 0)]


def _ewc_plugins(o, ctx, observations) -> list:
    return [EWC(o.ewc_lambda, mode=o.mode, decay_factor=o.decay_factor, lora=ctx.lora)]


def _lwf_plugins(o, ctx, observations) -> list:
    return [HeadedLwF(alpha=o.alpha, temperature=o.temperature)]


# ---------------------------------------------------------------------- the methods
register_method(MethodSpec("seq", "sequential fine-tuning, no merge (LoRA, or all weights "
                                  "with --set finetune=full)", merger=Sequential))
register_method(MethodSpec("pm", "Perturb-and-Merge (arXiv 2505.22389): training with "
                                 "perturbation + Fisher closed-form merge coefficient",
                           merger=PerturbAndMergeMerger, plugins=_pm_plugins))
register_method(MethodSpec("joint", "reference: the same LoRA and heads fine-tuned on all "
                                    "experiences at once (joint fine-tuning)", method=JointMethod))
register_method(MethodSpec("probe", "reference: a joint-softmax classifier over all classes "
                                    "trained on the frozen pretrained features",
                           method=ProbeMethod))
register_method(MethodSpec("nmc", "nearest class mean of the frozen pretrained features, cosine "
                                  "similarity, class means added experience by experience (the "
                                  "papers' frozen-feature reference, arXiv 2210.04428)",
                           method=NMCMethod))
register_method(MethodSpec("average", "running mean of the fine-tuned models (P&M's Model "
                                      "Averaging)", merger=RunningAverage))
register_method(MethodSpec("coma", "CoMA (arXiv 2312.08977): fixed-coefficient continual model "
                                   "averaging", merger=CoMA))
register_method(MethodSpec("cofima", "CoFiMA (arXiv 2312.08977): Fisher-weighted continual model "
                                     "averaging", merger=CoFiMA))
register_method(MethodSpec("task_arithmetic", "task arithmetic (arXiv 2212.04089): running sum "
                                              "of task vectors", merger=TaskArithmetic))
register_method(MethodSpec("ties", "TIES-Merging (arXiv 2306.01708) of all task vectors so far",
                           merger=Ties))
register_method(MethodSpec("dare", "DARE (arXiv 2311.03099) drop-and-rescale of each update, then "
                                   "the running mean", merger=Dare))
register_method(MethodSpec("magmax", "MagMax (arXiv 2407.06322): max-magnitude task vector "
                                     "(--set start=finetuned for the paper's protocol)",
                           merger=MagMax))
register_method(MethodSpec("trm", "Trajectory Regularized Merging (arXiv 2605.08311), "
                                  "reconstructed from its abstract: coefficients in a trajectory "
                                  "subspace optimised for alignment, consistency, responsiveness",
                           merger=TrajectoryRegularizedMerger, plugins=_trm_plugins))
register_method(MethodSpec("ewc", "EWC (arXiv 1612.00796), Avalanche's plugin, no merge (LoRA: "
                                  "on the dense target weights)", merger=Sequential,
                           options=EWCOptions, plugins=_ewc_plugins))
register_method(MethodSpec("lwf", "LwF (arXiv 1606.09282), Avalanche's plugin distilling the "
                                  "previous heads, no merge", merger=Sequential,
                           options=LwFOptions, plugins=_lwf_plugins))
