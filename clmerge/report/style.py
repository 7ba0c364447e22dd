"""One look for every chapter: seaborn theme and a fixed colour per method."""

from __future__ import annotations

import matplotlib
import seaborn as sns

METHOD_ORDER = ["probe", "joint", "seq", "seq_full", "average", "coma", "cofima",
                "task_arithmetic", "ties", "dare", "magmax", "ewc", "lwf", "pm", "trm"]
_PALETTE = sns.color_palette("tab20", len(METHOD_ORDER))
PROTOCOL_NAMES = {"cil": "class-incremental (no task id)", "til": "task-incremental (task id given)"}


def use_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight",
                                "axes.titleweight": "bold", "figure.autolayout": False})


def color(variant: str):
    """Stable colour of a variant: its base method's colour (``pm[eps=0.3]`` -> pm)."""
    base = variant.split("[")[0].split("@")[0]
    if base not in METHOD_ORDER:
        base = base.replace("_full", "")
    if base in METHOD_ORDER:
        return _PALETTE[METHOD_ORDER.index(base)]
    return sns.color_palette("husl", 8)[hash(base) % 8]


def order(variants) -> list[str]:
    """Variants sorted by METHOD_ORDER of their base method, then by name."""
    def key(v):
        base = v.split("[")[0].split("@")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), v)
    return sorted(set(variants), key=key)
