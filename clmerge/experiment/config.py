"""Experiment configuration as data.

``ExperimentConfig`` holds every knob of one run, each with help text. Values resolve in
this order, later wins:

1. the dataclass defaults below;
2. the profile's ``defaults`` (``clmerge/profiles/<profile>.yaml``);
3. the profile's per-benchmark block (``benchmarks: {name: {...}}``);
4. the profile's ``finetune_full`` block when the run fine-tunes all weights (full
   fine-tuning needs a much smaller learning rate than LoRA);
5. explicit overrides (``--set key=value`` on the command line, or a dict from a
   papermill parameter).

Method-specific options live in ``method_args`` and are set as ``--set pm.eps=0.3``;
each method declares and validates its own options (``clmerge.strategies.methods``).
Every error is a :class:`ConfigError` whose message names the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad name or value in a configuration; the message lists the valid choices."""


def _f(default, help: str, choices: tuple | None = None, minimum: float | None = None):
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if minimum is not None:
        meta["min"] = minimum
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ExperimentConfig:
    method: str = _f("seq", "continual-learning method (see `clmerge list methods`)")
    benchmark: str = _f("split_mnist5k", "benchmark stream (see `clmerge list benchmarks`)")
    profile: str = _f("quick", "profile whose defaults were applied")
    backbone: str = _f("mobilenet_v2", "feature extractor (see `clmerge list backbones`)")
    pretrained: bool = _f(True, "load the backbone's pretrained weights")
    seed: int = _f(0, "seed of everything: class order, init, data order", minimum=0)
    n_experiences: int = _f(5, "number of experiences (tasks) in the stream", minimum=1)
    image_size: int = _f(32, "side in pixels the backbone resizes images to", minimum=8)
    finetune: str = _f("lora", "what is trained per experience: a fresh LoRA or all weights",
                       choices=("lora", "full"))
    lora_rank: int = _f(8, "LoRA rank r", minimum=1)
    lora_alpha: float = _f(8.0, "LoRA alpha; the branch is scaled by alpha / r", minimum=0)
    epochs: int = _f(3, "training epochs per experience", minimum=1)
    batch_size: int = _f(32, "training minibatch size", minimum=1)
    lr: float = _f(1e-3, "learning rate of the backbone's trainable weights (LoRA or all)",
                   minimum=0)
    head_lr: float = _f(1e-2, "learning rate of the current head", minimum=0)
    head: str = _f("linear", "per-experience head: linear (weights and bias) or cosine (scale "
                   "x cosine of the features and the class weights, no bias; PILOT's "
                   "CosineLinear with a fixed scale)", choices=("linear", "cosine"))
    head_scale: float = _f(16.0, "fixed scale of the cosine head's logits (unused by linear "
                           "heads)", minimum=0)
    weight_decay: float = _f(0.0, "AdamW weight decay", minimum=0)
    eval_batch_size: int = _f(256, "evaluation minibatch size", minimum=1)
    start: str = _f("merged", "where task t starts: the merged model (default) or the previous "
                    "fine-tuned model (MagMax protocol)", choices=("merged", "finetuned"))
    device: str = _f("cpu", "torch device", choices=("cpu", "cuda"))
    amp: str = _f("auto", "mixed precision of training forwards: auto (bf16 autocast on CUDA, "
                  "off on the CPU), bf16, or off", choices=("auto", "bf16", "off"))
    num_workers: int = _f(0, "DataLoader worker processes for training data (pinned memory on "
                          "CUDA)", minimum=0)
    diag_steps: int = _f(20, "training steps at the start of each experience whose loss and "
                         "gradient norms are recorded (the 'beginning of the task' diagnostics)",
                         minimum=1)
    method_args: dict = _f({}, "method-specific options, set as --set METHOD.KEY=VALUE")

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """sha256 (first 12 hex digits) of the canonical JSON of the config.

        Settings in ``HASH_NEUTRAL_DEFAULTS`` are left out while they hold that value:
        they were added after results were first published, and at that value they
        reproduce what those results did, so the results keep their names.
        """
        values = {k: v for k, v in self.to_dict().items()
                  if k not in HASH_NEUTRAL_DEFAULTS or HASH_NEUTRAL_DEFAULTS[k] != v}
        blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def run_name(self) -> str:
        return f"{self.method}-{self.benchmark}-s{self.seed}-{self.config_hash()}"


FIELDS = {f.name: f for f in fields(ExperimentConfig)}

# Settings added later; at these values a run computes what it computed before they
# existed (amp=auto is off on the CPU; the diagnostics only read gradients).
HASH_NEUTRAL_DEFAULTS = {"amp": "auto", "num_workers": 0, "diag_steps": 20,
                         "head": "linear", "head_scale": 16.0}


# ---------------------------------------------------------------------- profiles
def profile_names() -> list[str]:
    files = resources.files("clmerge.profiles").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def load_profile(name: str) -> dict[str, Any]:
    if name not in profile_names():
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(profile_names())}")
    text = resources.files("clmerge.profiles").joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


# ---------------------------------------------------------------------- values
def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (often a string from the command line) to ``key``'s type."""
    if key not in FIELDS:
        valid = ", ".join(k for k in FIELDS if k != "method_args")
        raise ConfigError(f"unknown setting {key!r}; valid settings: {valid} "
                          f"(method options as METHOD.KEY)")
    f = FIELDS[key]
    typ = type(f.default) if f.default is not dataclasses.MISSING else dict
    try:
        if typ is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            value = value.lower() in ("true", "1", "yes")
        elif typ is float and isinstance(value, (str, int)) and not isinstance(value, bool):
            value = float(value)
        elif typ is int and isinstance(value, str):
            value = int(value)
        elif typ is int and isinstance(value, float) and value.is_integer():
            value = int(value)
    except ValueError:
        raise ConfigError(f"setting {key!r} expects {_article(typ.__name__)}, got {value!r}") from None
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"setting {key!r} expects {_article(typ.__name__)}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"setting {key!r} must be one of {', '.join(choices)}; got {value!r}")
    minimum = f.metadata.get("min")
    if minimum is not None and value < minimum:
        raise ConfigError(f"setting {key!r} must be >= {minimum}; got {value!r}")
    return value


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["a=1", "pm.eps=0.5"]`` -> ``{"a": "1", "pm.eps": "0.5"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def make_config(method: str, benchmark: str | None = None, profile: str = "quick",
                seed: int = 0, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve a full config: defaults < profile < benchmark block < finetune_full block
    < overrides.

    ``overrides`` may hold plain settings (``epochs``) and method options
    (``pm.eps``, or a ``method_args`` dict). Names are validated here; the method's
    own options are validated by the method registry.
    """
    from clmerge.backbones.registry import BACKBONES
    from clmerge.benchmarks.registry import BENCHMARKS
    from clmerge.strategies.methods import validate_method_args

    prof = load_profile(profile)
    values: dict[str, Any] = dict(prof.get("defaults", {}))
    benchmark = benchmark or values.get("benchmark") or ExperimentConfig.benchmark
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {benchmark!r}; valid benchmarks: "
                          f"{', '.join(BENCHMARKS)}")
    values.update((prof.get("benchmarks") or {}).get(benchmark, {}))
    method_args: dict[str, Any] = {}
    explicit: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        if k == "method_args":
            method_args.update(v)
        elif "." in k:
            prefix, sub = k.split(".", 1)
            if prefix != method:
                names = ", ".join(validate_method_args(method, {})) or "none"
                raise ConfigError(f"option {k!r} belongs to method {prefix!r}, "
                                  f"but the method is {method!r}; valid options of "
                                  f"{method!r}: {names}")
            method_args[sub] = v
        else:
            explicit[k] = v
    finetune = explicit.get("finetune", values.get("finetune", ExperimentConfig.finetune))
    if finetune == "full":
        values.update(prof.get("finetune_full") or {})
    values.update(explicit)
    values.update(method=method, benchmark=benchmark, profile=profile, seed=seed)
    clean = {k: coerce(k, v) for k, v in values.items() if k != "method_args"}
    backbone = clean.get("backbone", ExperimentConfig.backbone)
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; valid backbones: "
                          f"{', '.join(BACKBONES)}")
    clean["method_args"] = validate_method_args(method, method_args)
    return ExperimentConfig(**clean)
