"""Readable names of variants: the one function every table, legend and sentence uses.

A variant label is how a chapter names a run (``clmerge.report.study.parse_variant``):
``METHOD[_full][@ft][[key=value,...]]``. :func:`readable` turns it into what a reader
sees: ``pm[p0=0.0,p_minus=0.5,p_plus=0.5]`` -> ``P&M, p0=0, p-=0.5, p+=0.5``,
``magmax@ft`` -> ``MagMax (fine-tuned start)``, ``pm[perturbation=none]`` -> ``P&M
without perturbation``, ``trm[pc=0.0]`` -> ``TRM without the consistency term``. Unknown
methods fall back to their code spelling, unknown options to ``key=value`` with spaces for
underscores, so a new variant is always shown, never dropped.

The same module names what else a reader sees: result columns (:func:`column`:
``cil_A_last`` -> ``final class-incremental accuracy``), benchmarks (:func:`benchmark`:
``split_mnist5k`` -> ``Split MNIST-5k``), and possessives (:func:`possessive`: ``TIES'``).
"""

from __future__ import annotations

import re

METHOD_NAMES = {
    "probe": "frozen-feature probe", "nmc": "nearest class mean", "joint": "joint fine-tuning",
    "seq": "sequential LoRA",
    "average": "averaging", "coma": "CoMA", "cofima": "CoFiMA",
    "task_arithmetic": "task arithmetic", "ties": "TIES", "dare": "DARE", "magmax": "MagMax",
    "ewc": "EWC", "lwf": "LwF", "pm": "P&M", "trm": "TRM",
}

# (method, key, value) -> words for one option setting, written after the method's name
# ("P&M without perturbation"); a phrase that starts with a comma is a clause of its own.
OPTION_NAMES = {
    ("pm", "perturbation", "none"): "without perturbation",
    ("pm", "perturbation", "gaussian"): "with Gaussian perturbation",
    ("pm", "alpha", "per_module"): "with per-module a",
    ("pm", "fisher", "per_batch"): "with per-batch Fisher",
    ("pm", "fisher_estimator", "true"): "with the true Fisher",
    ("pm", "fisher_normalize", "trace"): "with a unit-trace Fisher",
    ("pm", "storage", "stored"): "in stored form",
    ("trm", "pc", "0"): "without the consistency term",
    ("trm", "gr", "0"): "without the responsiveness term",
    ("trm", "ta", "0"): "without the alignment term",
    ("trm", "trajectory", "false"): "without trajectory directions",
    ("trm", "accumulated", "false"): "without the accumulated vector",
    ("trm", "gr_head", "current"): "with the hinge through the trained head",
    ("trm", "pc_inputs", "current"): "with consistency on the current task's inputs",
    ("trm", "steps", "0"): "without optimisation (its start)",
}
# option keys written as symbols
KEY_NAMES = {"eps": "\u03b5", "p0": "p0", "p_plus": "p+", "p_minus": "p-", "lam": "\u03bb"}

BENCHMARK_NAMES = {
    "split_glyphs": "Split Glyphs", "split_mnist5k": "Split MNIST-5k",
    "split_cifar100": "Split CIFAR-100", "imagenet_r": "ImageNet-R", "cub200": "CUB-200",
    "glyph_renditions": "Glyph Renditions",
}
PROTOCOLS = {"cil": "class-incremental", "til": "task-incremental"}
METRIC_NAMES = {
    "A_last": "final accuracy", "A_avg": "average accuracy", "forgetting": "forgetting",
    "A_last_pooled": "final accuracy, pooled", "A_avg_pooled": "average accuracy, pooled",
}

_LABEL = re.compile(r"^(?P<method>[a-z0-9_]+?)(?P<full>_full)?(?P<ft>@ft)?(\[(?P<args>[^\]]*)\])?$")


def _value(text: str) -> str:
    """``0.0`` -> ``0``, ``1.0`` -> ``1``, ``0.25`` -> ``0.25``, ``False`` -> ``false``."""
    text = text.strip()
    try:
        return f"{float(text):g}"
    except ValueError:
        return text.lower() if text.lower() in ("true", "false") else text


def readable(label: str) -> str:
    """The name a reader sees for a variant label (see the module docstring)."""
    m = _LABEL.match(label)
    if not m:
        return label
    method = m["method"]
    name = METHOD_NAMES.get(method, method)
    notes = [n for n, on in (("full fine-tuning", m["full"] and method != "seq"),
                             ("fine-tuned start", m["ft"])) if on]
    if m["full"] and method == "seq":
        name = "sequential full fine-tuning"
    if notes:
        name += f" ({', '.join(notes)})"
    phrases, parts = [], []
    for kv in filter(None, (m["args"] or "").split(",")):
        key, _, value = kv.partition("=")
        key, value = key.strip(), _value(value)
        words = OPTION_NAMES.get((method, key, value))
        if words:
            phrases.append(words)
        else:
            parts.append(f"{KEY_NAMES.get(key, key.replace('_', ' '))}={value}")
    name = " ".join([name, *phrases])
    return name + (", " + ", ".join(parts) if parts else "")


def possessive(name: str) -> str:
    """``TIES`` -> ``TIES'``, ``P&M`` -> ``P&M's``: English, for a name a reader sees."""
    return name + ("'" if name.endswith("s") or name.endswith("S") else "'s")


def benchmark(name: str) -> str:
    """A benchmark's name for a reader: ``split_mnist5k`` -> ``Split MNIST-5k``; an unknown
    one with spaces for underscores."""
    name = str(name)
    base, _, settings = name.partition(" [")
    shown = BENCHMARK_NAMES.get(base, base.replace("_", " "))
    if settings:     # a benchmark with overrides: "split_mnist5k [head=cosine]"
        shown += " (" + ", ".join(s.strip().replace("_", " ").replace("=", " ")
                                  for s in settings.rstrip("]").split(",")) + ")"
    return shown


_COLUMN = re.compile(r"\b(?:(?P<protocol>cil|til)_)?(?P<metric>A_last_pooled|A_avg_pooled|"
                     r"A_last|A_avg|forgetting)\b")


def column(name) -> str:
    """A result column's name for a reader: ``cil_A_last`` -> ``final class-incremental
    accuracy``, ``A_avg (%)`` -> ``average accuracy (%)``, ``cil_A_last std`` -> ``final
    class-incremental accuracy std``; benchmark names inside it read as :func:`benchmark`;
    any other underscore becomes a space. Not a string: returned as it is."""
    if not isinstance(name, str):
        return name

    def metric(m):
        words = METRIC_NAMES[m["metric"]]
        if m["protocol"]:
            protocol = PROTOCOLS[m["protocol"]]
            words = (words.replace("accuracy", f"{protocol} accuracy") if "accuracy" in words
                     else f"{protocol} {words}")
        return words

    text = _COLUMN.sub(metric, name)
    for code, words in BENCHMARK_NAMES.items():
        text = re.sub(rf"\b{code}\b", words, text)
    return re.sub(r"(?<=\w)_(?=\w)", " ", text)


def readable_columns(frame):
    """``frame`` with its column names (every level) read by :func:`column`; a column
    level named ``variant`` or ``method`` by :func:`readable`."""
    import pandas as pd

    out = frame.copy()
    if isinstance(out.columns, pd.MultiIndex):
        out.columns = out.columns.set_levels(
            [lvl.map(lambda v: readable(v) if isinstance(v, str) else v)
             if name in ("variant", "method") else lvl.map(column)
             for lvl, name in zip(out.columns.levels, out.columns.names)])
        out.columns.names = [column(n) for n in out.columns.names]
    else:
        name = out.columns.name
        out.columns = out.columns.map(
            (lambda v: readable(v) if isinstance(v, str) else v) if name in ("variant", "method")
            else column)
        out.columns.name = column(name)
    return out


def readable_index(frame):
    """``frame`` with its variant labels renamed by :func:`readable`: the index, or the
    levels named ``variant`` or ``method`` of a MultiIndex (and a ``benchmark`` level by
    :func:`benchmark`); a plain index (unnamed or
    named ``variant``) is then named ``method``. An index named otherwise (``eps``,
    ``task``) holds no variant labels and is kept."""
    import pandas as pd

    out = frame.copy()
    rename = (lambda v: readable(v) if isinstance(v, str) else v)
    if isinstance(out.index, pd.MultiIndex):
        levels = [lvl.map(rename) if name in ("variant", "method")
                  else lvl.map(benchmark) if name == "benchmark" else lvl
                  for lvl, name in zip(out.index.levels, out.index.names)]
        out.index = out.index.set_levels(levels)
    elif out.index.name in (None, "variant", "method"):
        out.index = out.index.map(rename)
        out.index.name = "method"
    return out
