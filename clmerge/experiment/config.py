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
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import yaml

from clmerge.backbones.registry import BACKBONES
from clmerge.benchmarks.paper import BUILDERS as PAPER_BENCHMARKS
from clmerge.benchmarks.registry import BENCHMARKS, CLASS_COUNTS, VECTOR_BENCHMARKS
from clmerge.benchmarks.renditions import BUILDERS as RENDITION_BENCHMARKS
from clmerge.benchmarks.renditions import parse_mix
from clmerge.errors import ConfigError  # also imported from here
from clmerge.experiment.atomic import read_regular_bytes
from clmerge.strategies.methods import get_method
# value checks shared with the method registry, also imported from here
from clmerge.values import (BOOL_WORDS, OPTION_INT_LIMIT, _article,  # noqa: F401
                            coerce_option, parse_bool, short)

VIT_WEIGHTS = ("augreg_in21k_ft_in1k", "augreg2_in21k_ft_in1k", "augreg_in21k", "orig_in21k")


def _f(default, help: str, choices: tuple | None = None, minimum: float | None = None,
       maximum: float | None = None, why: str | None = None):
    """A setting: default, help text, and its choices or range; ``why`` says what the
    bounds protect (the time or memory a larger value costs, or the numbers a smaller one
    loses), and is part of the message that refuses a value outside them."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if minimum is not None:
        meta["min"] = minimum
    if maximum is not None:
        meta["max"] = maximum
    if why is not None:
        meta["why"] = why
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
    seed: int = _f(0, "seed of everything: class order, init, data order (numpy seeds are "
                   "32-bit)", minimum=0, maximum=2**32 - 1)
    n_experiences: int = _f(5, "number of experiences (tasks) in the stream; must divide the "
                            "benchmark's number of classes", minimum=1, maximum=1000,
                            why="every experience trains, merges and evaluates once")
    image_size: int = _f(32, "side in pixels the backbone resizes images to", minimum=8,
                         maximum=4096, why="memory grows with its square")
    finetune: str = _f("lora", "what is trained per experience: a fresh LoRA or all weights",
                       choices=("lora", "full"))
    lora_rank: int = _f(8, "LoRA rank r", minimum=1, maximum=4096,
                        why="each adapted weight gets r x (in + out) more weights")
    lora_alpha: float = _f(8.0, "LoRA alpha; the branch is scaled by alpha / r", minimum=1e-6,
                           maximum=1e6, why="the branch's scale alpha / r times a float32 "
                           "update must neither vanish nor overflow")
    epochs: int = _f(3, "training epochs per experience", minimum=1, maximum=10_000,
                     why="each epoch is a pass over the experience's data")
    batch_size: int = _f(32, "training minibatch size", minimum=1, maximum=1_000_000,
                         why="a minibatch is held in memory")
    lr: float = _f(1e-3, "learning rate of the backbone's trainable weights (LoRA or all)",
                   minimum=1e-12, maximum=1e6,
                   why="a smaller Adam step changes no float32 weight; a larger one only "
                       "diverges")
    head_lr: float = _f(1e-2, "learning rate of the current head", minimum=1e-12,
                        maximum=1e6, why="a smaller Adam step changes no float32 weight; a "
                                         "larger one only diverges")
    head: str = _f("linear", "per-experience head: linear (weights and bias) or cosine (scale "
                   "x cosine of the features and the class weights, no bias; PILOT's "
                   "CosineLinear with a fixed scale)", choices=("linear", "cosine"))
    head_scale: float = _f(16.0, "fixed scale of the cosine head's logits (unused by linear "
                           "heads)", minimum=0)
    head_init: str = _f("random", "initial weights of the heads trained on an experience: "
                        "random (nn.Linear's init) or means (each class's row set to the unit "
                        "mean of the unit features of its training images under the model "
                        "the experience starts from; biases 0)", choices=("random", "means"))
    weight_decay: float = _f(0.0, "AdamW weight decay", minimum=0, maximum=1e6,
                             why="lr x weight_decay above 1 flips the weights' sign each step")
    eval_batch_size: int = _f(256, "evaluation minibatch size", minimum=1, maximum=1_000_000,
                              why="a minibatch is held in memory")
    start: str = _f("merged", "where task t starts: the merged model (default) or the previous "
                    "fine-tuned model (MagMax protocol)", choices=("merged", "finetuned"))
    device: str = _f("cpu", "torch device", choices=("cpu", "cuda"))
    amp: str = _f("auto", "mixed precision of the model's forwards (training, evaluation, and "
                  "nmc's and probe's features): auto (bf16 autocast on CUDA, off on the CPU), "
                  "bf16 (autocast on any device, torch's CPU autocast on the CPU), or off",
                  choices=("auto", "bf16", "off"))
    num_workers: int = _f(0, "DataLoader worker processes for training data (pinned memory on "
                          "CUDA)", minimum=0, maximum=256,
                          why="each worker is a process holding a copy of the dataset")
    lr_schedule: str = _f("constant", "learning-rate schedule of both parameter groups within each "
                          "experience: constant, or cosine per epoch (InfLoRA / CODA-Prompt: "
                          "lr * cos(99 pi e / (200 (epochs - 1))) in epoch e)",
                          choices=("constant", "cosine"))
    vit_weights: str = _f("augreg_in21k_ft_in1k", "timm tag of the ViT-B/16 pretrained weights "
                          "(vit_base_patch16_224.<tag>; vit_b16_in21k backbone only)",
                          choices=VIT_WEIGHTS)
    input_norm: str = _f("imagenet", "normalisation of the paper benchmarks' [0, 1] pixels: none "
                         "(the papers' codebases), half (mean = std = 0.5, timm's config for the "
                         "ViT-B/16 weights) or imagenet (ImageNet mean/std)",
                         choices=("none", "half", "imagenet"))
    class_order: str = _f("seeded", "class order of the paper benchmarks: seeded (permutation by "
                          "the run seed), pilot (LAMDA-PILOT / SD-LoRA's np.random.seed(1993) "
                          "permutation, 1995 for ImageNet-R; the same for every seed) or natural "
                          "(label order, InfLoRA's)", choices=("seeded", "pilot", "natural"))
    imagenet_r_split: str = _f("seeded", "ImageNet-R train/test split: coda (the 24,000 / 6,000 "
                               "list shipped by CODA-Prompt and InfLoRA), sdlora (SD-LoRA's seeded "
                               "80/20 split script), seeded (80/20 per class, fixed seed) or the "
                               "path of a split file of the same format")
    cub_split: str = _f("official", "CUB-200 split: official (CUB_200_2011, 5,994 / 5,794) or pilot "
                        "(the pre-split cub/train, cub/test copy the PILOT-family codebases read)",
                        choices=("official", "pilot"))
    test_interpolation: str = _f("bilinear", "interpolation of the paper benchmarks' test "
                                 "Resize(256)", choices=("bilinear", "bicubic"))
    crop_scale_min: float = _f(0.08, "smallest image-area fraction of the paper benchmarks' "
                               "training RandomResizedCrop", minimum=0, maximum=1)
    rendition_styles: str = _f("", "style mix of the glyph renditions benchmarks: comma-separated "
                               "STYLE or STYLE:WEIGHT (relative weights, default 1); styles: "
                               "plain, inverted, outline, low_contrast, noise, stripes, texture, "
                               "clutter, pixelate, wave; empty: every style, equal weights "
                               "(glyph_renditions* benchmarks only)")
    rendition_train_per_class: int = _f(60, "training images per class of the glyph renditions "
                                        "benchmarks (glyph_renditions* benchmarks only)",
                                        minimum=1, maximum=100_000)
    diag_steps: int = _f(20, "training steps at the start of each experience whose loss and "
                         "gradient norms are recorded (the 'beginning of the task' diagnostics)",
                         minimum=1, maximum=1_000_000,
                         why="each recorded step keeps its loss and gradient norms in the "
                             "result file")
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
# existed (amp=auto is off on the CPU; the diagnostics only read gradients; the protocol
# settings at these values are what the pipeline did before they were options).
HASH_NEUTRAL_DEFAULTS = {"amp": "auto", "num_workers": 0, "diag_steps": 20,
                         "head": "linear", "head_scale": 16.0, "head_init": "random",
                         "lr_schedule": "constant", "vit_weights": "augreg_in21k_ft_in1k",
                         "input_norm": "imagenet", "class_order": "seeded",
                         "imagenet_r_split": "seeded", "cub_split": "official",
                         "test_interpolation": "bilinear", "crop_scale_min": 0.08,
                         "rendition_styles": "", "rendition_train_per_class": 60}

# Which runs use each setting that not every run uses: (test on the resolved values, what
# the setting applies to). The one rule (:func:`check_applicable`): a setting given
# explicitly (--set, a grid's overrides, a variant label's options) that the run does
# not use is refused, unless it only repeats the value the run has anyway; a profile's
# value for it is kept as it is (it names no choice of the user's, and the config hashes
# of published results include it). Every other setting applies to every run.
_TRAINS = ("merge", "joint")   # method kinds that train; probe and nmc train nothing
APPLIES: dict[str, tuple] = {
    "class_order": (lambda v: v["benchmark"] in PAPER_BENCHMARKS, "the paper benchmarks"),
    "input_norm": (lambda v: v["benchmark"] in PAPER_BENCHMARKS, "the paper benchmarks"),
    "test_interpolation": (lambda v: v["benchmark"] in PAPER_BENCHMARKS,
                           "the paper benchmarks"),
    "crop_scale_min": (lambda v: v["benchmark"] in PAPER_BENCHMARKS, "the paper benchmarks"),
    "rendition_styles": (lambda v: v["benchmark"] in RENDITION_BENCHMARKS,
                         "the glyph renditions benchmarks"),
    "rendition_train_per_class": (lambda v: v["benchmark"] in RENDITION_BENCHMARKS,
                                  "the glyph renditions benchmarks"),
    "imagenet_r_split": (lambda v: v["benchmark"] == "imagenet_r", "benchmark imagenet_r"),
    "cub_split": (lambda v: v["benchmark"] == "cub200", "benchmark cub200"),
    "vit_weights": (lambda v: v["backbone"] == "vit_b16_in21k", "backbone vit_b16_in21k"),
    "pretrained": (lambda v: v["backbone"] != "mlp",
                   "backbones with pretrained weights (not backbone mlp)"),
    "image_size": (lambda v: v["backbone"] == "mobilenet_v2", "backbone mobilenet_v2 (the "
                   "others take a fixed input size)"),
    **{k: (lambda v: v["kind"] in _TRAINS, "methods that train (not probe or nmc)")
       for k in ("finetune", "epochs", "batch_size", "lr", "head_lr", "head", "head_init",
                 "weight_decay", "num_workers", "lr_schedule", "diag_steps")},
    "lora_rank": (lambda v: v["kind"] in _TRAINS and v["finetune"] == "lora",
                  "methods that train a LoRA (finetune=lora; not probe or nmc)"),
    "lora_alpha": (lambda v: v["kind"] in _TRAINS and v["finetune"] == "lora",
                   "methods that train a LoRA (finetune=lora; not probe or nmc)"),
    "head_scale": (lambda v: v["kind"] in _TRAINS and v["head"] == "cosine",
                   "cosine heads (head=cosine) of methods that train"),
    "start": (lambda v: v["kind"] == "merge", "methods that merge"),
}
# the smallest LoRA update lr x alpha / r kept: below it no float32 weight moves (a float32
# holds 24 bits, so a change below 6e-8 of a weight is lost; weights are >= 1e-5 in size)
MIN_LORA_UPDATE = 1e-12


def check_applicable(values: dict[str, Any], kind: str, explicit: dict[str, Any],
                     implicit: dict[str, Any]) -> None:
    """Refuse an explicit setting the run does not use (:data:`APPLIES`): ``values`` are
    the resolved settings, ``kind`` the method's kind, ``explicit`` the overrides given,
    ``implicit`` the resolved values the run would have without them."""
    where = dict(values, kind=kind)
    for key in explicit:
        rule = APPLIES.get(key)
        if rule is None or rule[0](where) or values[key] == implicit[key]:
            continue
        scope = rule[1]
        if "benchmark" in scope:
            what = f"benchmark {values['benchmark']!r}"
        elif "backbone" in scope:
            what = f"backbone {values['backbone']!r}"
        elif kind not in _TRAINS:
            what = f"method {values['method']!r} (it trains nothing)"
        elif key in ("lora_rank", "lora_alpha"):
            what = f"finetune={values['finetune']}"
        elif key == "head_scale":
            what = f"head={values['head']}"
        else:
            what = f"method {values['method']!r}"
        raise ConfigError(f"setting {key!r}={short(values[key])} applies to {scope} only; "
                          f"{what} does not use it, so it would change the result's name "
                          f"and not its numbers (leave it out)")


# ---------------------------------------------------------------------- profiles
def profile_names() -> list[str]:
    files = resources.files("clmerge.profiles").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def load_profile(name: str) -> dict[str, Any]:
    if name not in profile_names():
        raise ConfigError(f"unknown profile {name!r}; valid profiles: {', '.join(profile_names())}")
    text = resources.files("clmerge.profiles").joinpath(f"{name}.yaml").read_text("utf-8")
    return load_yaml_text(text, f"profile {name!r}") or {}


# ---------------------------------------------------------------------- values
def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (often a string from the command line) to ``key``'s type
    (:func:`clmerge.values.coerce_option`, with no size limit on ints), then check the
    setting's choices and range (its field's ``choices``, ``min``, ``max``).
    """
    if key not in FIELDS:
        valid = ", ".join(k for k in FIELDS if k != "method_args")
        raise ConfigError(f"unknown setting {key!r}; valid settings (method options as "
                          f"METHOD.KEY): {valid}")
    f = FIELDS[key]
    raw = value
    default = f.default if f.default is not dataclasses.MISSING else {}
    value = coerce_option(f"setting {key!r}", default, value, int_limit=None)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"setting {key!r} must be one of {', '.join(choices)}; "
                          f"got {short(value)}")
    minimum, maximum = f.metadata.get("min"), f.metadata.get("max")
    why = f" ({f.metadata['why']})" if "why" in f.metadata else ""
    if minimum is not None and value < minimum:
        raise ConfigError(f"setting {key!r} must be >= {_bound(minimum)}{why}; got {short(raw)}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"setting {key!r} must be <= {_bound(maximum)}{why}; got {short(raw)}")
    return value


def _bound(limit) -> str:
    return f"{limit:g}" if isinstance(limit, float) else str(limit)


# settings that the command line and the sweep grid choose with their own arguments
# (--method, --benchmark, --profile, --seed): an override may not change them
OWN_FLAG = {"method": "--method", "benchmark": "--benchmark", "profile": "--profile",
            "seed": "--seed"}


def refuse_own_flag(key: str, value: Any, what: str) -> None:
    """Refuse ``what`` (``--set``, an override) setting ``key`` when ``key`` is chosen by
    its own argument (:data:`OWN_FLAG`)."""
    if key in OWN_FLAG:
        raise ConfigError(f"{what} cannot change {key!r}: it has its own option, "
                          f"{OWN_FLAG[key]} {str(value).strip()[:40]}")


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["a=1", "pm.eps=0.5"]`` -> ``{"a": "1", "pm.eps": "0.5"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {short(item)}")
        k, v = item.split("=", 1)
        k = k.strip()
        refuse_own_flag(k, v, "--set")
        if k == "method_args":
            raise ConfigError("--set cannot replace 'method_args' as a whole; set one "
                              "method option at a time as METHOD.KEY=VALUE (pm.eps=0.3)")
        if k in out:
            raise ConfigError(f"--set {k} is given twice ({short(out[k])} and "
                              f"{short(v.strip())}); give it once")
        out[k] = v.strip()
    return out


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """Read a YAML file safely (no Python objects) as UTF-8; any problem (unreadable, not
    a regular file, not UTF-8, not YAML, a key given twice, too large once its aliases
    are expanded) is one ConfigError."""
    try:
        raw = read_regular_bytes(path, _article(what), MAX_YAML_BYTES)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {str(path)!r} ({e.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {str(path)!r} is larger than {MAX_YAML_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start})") from None
    return load_yaml_text(text, f"{what} {str(path)!r}")


MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping gives one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping giving a key twice (PyYAML keeps the
    last one in silence). Keys brought in by a merge (``<<: *base``) may be given again:
    that is what a merge is for."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:   # an unhashable key: SafeLoader's own error follows
                    break
                if first is not None:
                    def value(n):
                        return short(self.construct_object(n, deep=True))
                    raise DuplicateKeyError(
                        f"gives key {short(key)} twice (line {first[0].start_mark.line + 1}: "
                        f"{value(first[1])}, line {key_node.start_mark.line + 1}: "
                        f"{value(value_node)}); give it once")
                seen[key] = (key_node, value_node)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``, refusing invalid YAML, a mapping that gives a key twice,
    and documents of more than ``MAX_YAML_NODES`` values once aliases are expanded (a few
    hundred bytes of nested aliases expand to gigabytes)."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except DuplicateKeyError as e:
        raise ConfigError(f"{what} {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {' '.join(str(e).split())[:200]}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None
    stack, seen = [data], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise ConfigError(f"{what} holds more than {MAX_YAML_NODES} values once its "
                              f"aliases are expanded")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set)):
            stack.extend(v)
    return data


def check_class_split(benchmark: str, n_experiences: int) -> None:
    """Refuse a number of experiences that does not divide the benchmark's classes."""

    n = CLASS_COUNTS.get(benchmark)
    if n is not None and n % n_experiences:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ConfigError(f"setting 'n_experiences' must divide the {n} classes of "
                          f"{benchmark}; got {n_experiences} (valid: "
                          f"{', '.join(map(str, divisors))})")


def make_config(method: str, benchmark: str | None = None, profile: str = "quick",
                seed: int = 0, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Resolve a full config: defaults < profile < benchmark block < finetune_full block
    < overrides.

    ``overrides`` may hold plain settings (``epochs``) and method options
    (``pm.eps``, or a ``method_args`` dict). Names are validated here; the method's
    own options are validated by the method registry.
    """
    spec = get_method(method)
    prof = load_profile(profile)
    values: dict[str, Any] = dict(prof.get("defaults", {}))
    benchmark = benchmark or values.get("benchmark") or ExperimentConfig.benchmark
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {short(benchmark)}; valid benchmarks: "
                          f"{', '.join(BENCHMARKS)}")
    values.update((prof.get("benchmarks") or {}).get(benchmark, {}))
    method_args: dict[str, Any] = {}
    explicit: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        refuse_own_flag(k, short(v), "an override")
        if k == "method_args":
            if not isinstance(v, dict):
                raise ConfigError(f"setting 'method_args' must be a mapping of method "
                                  f"options; got {short(v)}")
            method_args.update(v)
        elif "." in k:
            prefix, sub = k.split(".", 1)
            if prefix != method:
                names = ", ".join(spec.validate_args({})) or "none"
                raise ConfigError(f"option {k!r} belongs to method {prefix!r}, "
                                  f"but the method is {method!r}; valid options of "
                                  f"{method!r}: {names}")
            method_args[sub] = v
        else:
            explicit[k] = v
    finetune = explicit.get("finetune", values.get("finetune", ExperimentConfig.finetune))
    if finetune == "full":
        values.update(prof.get("finetune_full") or {})
    implicit_values = dict(values)
    values.update(explicit)
    values.update(method=method, benchmark=benchmark, profile=profile, seed=seed)
    clean = {k: coerce(k, v) for k, v in values.items() if k != "method_args"}
    backbone = clean.get("backbone", ExperimentConfig.backbone)
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {short(backbone)}; valid backbones: "
                          f"{', '.join(BACKBONES)}")
    clean["method_args"] = spec.validate_args(method_args)
    check_class_split(benchmark, clean.get("n_experiences", ExperimentConfig.n_experiences))
    resolved = ExperimentConfig(**clean).to_dict()
    implicit = {k: coerce(k, implicit_values[k]) if k in implicit_values else FIELDS[k].default
                for k in explicit}
    check_applicable(resolved, spec.kind, explicit, implicit)
    if benchmark in VECTOR_BENCHMARKS and resolved["backbone"] != "mlp":
        raise ConfigError(f"backbone {resolved['backbone']!r} takes images, and benchmark "
                          f"{benchmark!r} is a stream of vectors; the backbone for vectors "
                          f"is mlp")
    if resolved["finetune"] == "lora" and spec.kind in _TRAINS:
        update = resolved["lr"] * resolved["lora_alpha"] / resolved["lora_rank"]
        if not update >= MIN_LORA_UPDATE:
            raise ConfigError(f"the LoRA update lr x lora_alpha / lora_rank = {update:.3g} is "
                              f"below {MIN_LORA_UPDATE:g}: it would move no float32 weight "
                              f"(a numerical no-op); raise lr or lora_alpha")
    try:
        parse_mix(clean.get("rendition_styles", ""))
    except ValueError as e:
        raise ConfigError(f"setting 'rendition_styles': {e}") from None
    return ExperimentConfig(**clean)
