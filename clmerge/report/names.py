"""Readable names of variants: the one function every table, legend and sentence uses.

A variant label is how a chapter names a run (``clmerge.report.study.parse_variant``):
``METHOD[_full][@ft][[key=value,...]]``. :func:`readable` turns it into what a reader
sees: ``pm[p0=0.0,p_minus=0.5,p_plus=0.5]`` -> ``P&M, p0=0, p-=0.5, p+=0.5``,
``magmax@ft`` -> ``MagMax (from fine-tuned)``, ``trm[pc=0.0]`` -> ``TRM, no consistency
term``. Unknown methods and options fall back to their code spelling, so a new variant is
always shown, never dropped.
"""

from __future__ import annotations

import re

METHOD_NAMES = {
    "probe": "linear probe", "nmc": "nearest class mean", "joint": "joint training",
    "seq": "sequential",
    "average": "averaging", "coma": "CoMA", "cofima": "CoFiMA",
    "task_arithmetic": "task arithmetic", "ties": "TIES", "dare": "DARE", "magmax": "MagMax",
    "ewc": "EWC", "lwf": "LwF", "pm": "P&M", "trm": "TRM",
}

# (method, key, value) -> words for one option setting; value None: any value.
OPTION_NAMES = {
    ("pm", "perturbation", "none"): "merge only",
    ("pm", "perturbation", "gaussian"): "Gaussian perturbation",
    ("pm", "alpha", "per_module"): "per-module a",
    ("pm", "fisher", "per_batch"): "per-batch Fisher",
    ("pm", "storage", "stored"): "stored form",
    ("trm", "pc", "0"): "no consistency term",
    ("trm", "gr", "0"): "no responsiveness term",
    ("trm", "ta", "0"): "no alignment term",
    ("trm", "trajectory", "false"): "no trajectory directions",
    ("trm", "accumulated", "false"): "no accumulated vector",
    ("trm", "gr_head", "current"): "hinge through the trained head",
}
# option keys written as symbols
KEY_NAMES = {"eps": "\u03b5", "p0": "p0", "p_plus": "p+", "p_minus": "p-", "lam": "\u03bb"}

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
    if m["full"]:
        name += " (full FT)"
    if m["ft"]:
        name += " (from fine-tuned)"
    parts = []
    for kv in filter(None, (m["args"] or "").split(",")):
        key, _, value = kv.partition("=")
        key, value = key.strip(), _value(value)
        words = OPTION_NAMES.get((method, key, value))
        parts.append(words or f"{KEY_NAMES.get(key, key)}={value}")
    return name + (", " + ", ".join(parts) if parts else "")


def readable_index(frame):
    """``frame`` with its variant labels renamed by :func:`readable`: the index, or the
    levels named ``variant`` or ``method`` of a MultiIndex; a plain index (unnamed or
    named ``variant``) is then named ``method``. An index named otherwise (``eps``,
    ``task``) holds no variant labels and is kept."""
    import pandas as pd

    out = frame.copy()
    rename = (lambda v: readable(v) if isinstance(v, str) else v)
    if isinstance(out.index, pd.MultiIndex):
        levels = [lvl.map(rename) if name in ("variant", "method") else lvl
                  for lvl, name in zip(out.index.levels, out.index.names)]
        out.index = out.index.set_levels(levels)
    elif out.index.name in (None, "variant", "method"):
        out.index = out.index.map(rename)
        out.index.name = "method"
    return out
