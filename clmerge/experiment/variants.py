"""Variant labels: one readable name per configured method, written and read here.

A label is ``METHOD[_full][@ft][[k=v,...]]``: ``seq``, ``seq_full`` (full fine-tuning),
``pm[eps=0.3]`` (method options that differ from their defaults), ``magmax@ft`` (the
fine-tuned start protocol). :func:`variant_label` writes the label of a config (the
``variant`` of a result file); :func:`parse_variant` and :func:`variant_config` read one
back into a config, so ``variant_label(variant_config(label, ...)) == label``.
"""

from __future__ import annotations

import re

from clmerge.errors import ConfigError
from clmerge.experiment.config import ExperimentConfig, make_config, short
from clmerge.strategies.methods import validate_method_args

_VARIANT = re.compile(r"^(?P<method>[a-z0-9_]+?)(?P<full>_full)?(?P<ft>@ft)?(\[(?P<args>[^\]]*)\])?$")


def variant_label(cfg: ExperimentConfig) -> str:
    """A readable name of the method as configured: ``seq``, ``seq_full``, ``pm[eps=0.3]``."""
    label = cfg.method + ("_full" if cfg.finetune == "full" and cfg.method not in ("probe", "nmc") else "")
    if cfg.start == "finetuned":
        label += "@ft"
    defaults = validate_method_args(cfg.method, {})
    changed = {k: v for k, v in cfg.method_args.items() if defaults.get(k) != v}
    if changed:
        label += "[" + ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                                for k, v in sorted(changed.items())) + "]"
    return label


def parse_variant(label: str) -> tuple[str, dict]:
    """``"pm_full@ft[eps=0.3]"`` -> ``("pm", {"finetune": "full", "start": "finetuned",
    "pm.eps": "0.3"})``."""
    m = _VARIANT.match(label)
    if not m:
        raise ConfigError(f"cannot read variant {label!r}; write METHOD[_full][@ft][[k=v,...]]")
    method = m["method"]
    overrides: dict = {}
    if m["full"]:
        overrides["finetune"] = "full"
    if m["ft"]:
        overrides["start"] = "finetuned"
    for kv in filter(None, (m["args"] or "").split(",")):
        k, _, v = kv.partition("=")
        key = f"{method}.{k.strip()}"
        if key in overrides:
            raise ConfigError(f"variant {label!r} sets option {k.strip()!r} twice "
                              f"({overrides[key]!r} and {v.strip()!r}); give it once")
        overrides[key] = v.strip()
    return method, overrides


def variant_config(label: str, profile: str, benchmark: str | None = None, seed: int = 0,
                   overrides: dict | None = None) -> ExperimentConfig:
    """The config of one variant label at one seed."""
    method, ov = parse_variant(label)
    overrides = dict(overrides or {})
    for k, v in ov.items():
        if k in overrides and str(overrides[k]).lower() != str(v).lower():
            raise ConfigError(f"variant {label!r} sets {k}={v}, and the overrides set "
                              f"{k}={short(overrides[k])}; give it once")
    return make_config(method, benchmark, profile, seed, {**overrides, **ov})
