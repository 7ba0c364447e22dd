"""Method registry: what ``clmerge run --method NAME`` runs.

A method is a merger (``clmerge.mergers``) plus optional training-time plugins, or a
reference that trains differently (``joint``) or not at all (``probe``). Method options
are the merger's ``Options`` dataclass; ``--set METHOD.KEY=VALUE`` sets them and
:func:`validate_method_args` checks names, types and ranges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from clmerge.experiment.config import ConfigError, coerce_option, short


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    kind: str = "merge"          # "merge" | "joint" | "probe" | "nmc"
    merger: str | None = None    # merger registry name, for kind == "merge"
    plugins: Callable[..., list] | None = None  # (cfg, run) -> training-time plugins


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


register_method(MethodSpec("seq", "sequential fine-tuning, no merge (LoRA, or all weights "
                                  "with --set finetune=full)", merger="seq"))
def _pm_plugins(cfg, run) -> list:
    from clmerge.plugins.perturbation import PerturbationPlugin

    o = cfg.method_args
    if o["perturbation"] == "none":
        return []
    return [PerturbationPlugin(run.weights, lora=run.lora, eps=o["eps"],
                               probs=(o["p0"], o["p_plus"], o["p_minus"]),
                               mode=o["perturbation"], seed=cfg.seed)]


register_method(MethodSpec("pm", "Perturb-and-Merge (arXiv 2505.22389): training with "
                                 "perturbation + Fisher closed-form merge coefficient",
                           merger="pm", plugins=_pm_plugins))
register_method(MethodSpec("joint", "upper bound: one model trained on all experiences at once",
                           kind="joint"))
register_method(MethodSpec("probe", "linear probe of the frozen pretrained features on all "
                                    "classes (bound on what any method reaches)", kind="probe"))
register_method(MethodSpec("nmc", "nearest class mean of the frozen pretrained features, cosine "
                                  "similarity, class means added experience by experience (the "
                                  "papers' frozen-feature reference, arXiv 2210.04428)",
                           kind="nmc"))
register_method(MethodSpec("average", "running mean of the fine-tuned models (P&M's Model "
                                      "Averaging)", merger="average"))
register_method(MethodSpec("coma", "CoMA (arXiv 2312.08977): fixed-coefficient continual model "
                                   "averaging", merger="coma"))
register_method(MethodSpec("cofima", "CoFiMA (arXiv 2312.08977): Fisher-weighted continual model "
                                     "averaging", merger="cofima"))
register_method(MethodSpec("task_arithmetic", "task arithmetic (arXiv 2212.04089): running sum "
                                              "of task vectors", merger="task_arithmetic"))
register_method(MethodSpec("ties", "TIES-Merging (arXiv 2306.01708) of all task vectors so far",
                           merger="ties"))
register_method(MethodSpec("dare", "DARE (arXiv 2311.03099) drop-and-rescale of each update, then "
                                   "the running mean", merger="dare"))
register_method(MethodSpec("magmax", "MagMax (arXiv 2407.06322): max-magnitude task vector "
                                     "(--set start=finetuned for the paper's protocol)",
                           merger="magmax"))


def _trm_plugins(cfg, run) -> list:
    from clmerge.plugins.trajectory import TrajectoryPlugin

    o = cfg.method_args
    return [TrajectoryPlugin(run.weights, run.merge_plugin.extras, lora=run.lora,
                             snapshots=o["snapshots"] if o["trajectory"] else 1,
                             keep_batches=o["batches"] + 1 if o["steps"] > 0 else 0)]


register_method(MethodSpec("trm", "Trajectory Regularized Merging (arXiv 2605.08311), "
                                  "reconstructed from its abstract: coefficients in a trajectory "
                                  "subspace optimised for alignment, consistency, responsiveness",
                           merger="trm", plugins=_trm_plugins))


def _ewc_plugins(cfg, run) -> list:
    from clmerge.plugins.regularization import EWC

    o = cfg.method_args
    return [EWC(o["ewc_lambda"], mode=o["mode"], decay_factor=o["decay_factor"], lora=run.lora)]


def _lwf_plugins(cfg, run) -> list:
    from clmerge.plugins.regularization import HeadedLwF

    o = cfg.method_args
    return [HeadedLwF(alpha=o["alpha"], temperature=o["temperature"])]


register_method(MethodSpec("ewc", "EWC (arXiv 1612.00796), Avalanche's plugin, no merge (LoRA: "
                                  "on the dense target weights)", merger="ewc",
                           plugins=_ewc_plugins))
register_method(MethodSpec("lwf", "LwF (arXiv 1606.09282), Avalanche's plugin distilling the "
                                  "previous heads, no merge", merger="lwf", plugins=_lwf_plugins))


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


def options_class(name: str):
    spec = get_method(name)
    if spec.merger is None:
        return None
    from clmerge.mergers.registry import MERGERS, load_builtin_mergers
    load_builtin_mergers()
    return MERGERS[spec.merger].Options


def validate_method_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Defaults of the method's options updated by ``args``, checked and typed."""
    opts = options_class(name)
    if opts is None:
        if args:
            raise ConfigError(f"method {name!r} takes no options; got "
                              f"{', '.join(short(a) for a in args)}")
        return {}
    fields = {f.name: f for f in dataclasses.fields(opts)}
    out = dataclasses.asdict(opts())
    for k, v in args.items():
        if k not in fields:
            raise ConfigError(f"unknown option {name}.{str(k)[:40]}; valid options of {name!r}: "
                              f"{', '.join(fields) or 'none'}")
        out[k] = coerce_option(f"option {name}.{k}", out[k], v)
    try:
        opts(**out)  # the Options dataclass validates ranges in __post_init__
    except ValueError as e:
        raise ConfigError(f"method {name!r}: {e}") from None
    return out
