"""One look for every chapter: seaborn theme and a fixed colour per method."""

from __future__ import annotations

import zlib

import matplotlib
import seaborn as sns

METHOD_ORDER = ["probe", "nmc", "joint", "seq", "seq_full", "average", "coma", "cofima",
                "task_arithmetic", "ties", "dare", "magmax", "ewc", "lwf", "pm", "trm"]
# Dark tab20 shades for the methods the book is about, light ones for the rest.
_TAB20 = sns.color_palette("tab20", 20)
_DARK = ["probe", "joint", "seq", "pm", "trm", "average", "magmax", "ties", "ewc", "lwf"]
_COLORS = {m: _TAB20[2 * i] for i, m in enumerate(_DARK)}
_COLORS.update({m: _TAB20[2 * i + 1] for i, m in
                enumerate(m for m in METHOD_ORDER if m not in _DARK and m != "nmc")})
_COLORS["nmc"] = (0.35, 0.35, 0.35)  # a reference, like probe and joint: grey
PROTOCOL_NAMES = {"cil": "class-incremental (no task id)", "til": "task-incremental (task id given)"}


def use_style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight",
                                "axes.titleweight": "bold", "figure.autolayout": False})


def _stable_index(text: str, n: int) -> int:
    return zlib.crc32(text.encode()) % n


def color(variant: str):
    """Stable colour of a variant: its base method's colour (``pm[eps=0.3]`` -> pm),
    lighter or darker for a variant of that method, the same in every chapter."""
    base = variant.split("[")[0].split("@")[0]
    if base not in METHOD_ORDER:
        base = base.replace("_full", "")
    if base in _COLORS:
        c = _COLORS[base]
    else:
        c = sns.color_palette("husl", 8)[_stable_index(base, 8)]
    if variant == base:
        return c
    return sns.set_hls_values(c, l=0.2 + 0.55 * _stable_index(variant, 1000) / 1000)


def linestyle(variant: str) -> str:
    """Solid for a method as published, dashed for a variant of it."""
    return "-" if "[" not in variant and "@" not in variant and not variant.endswith("_full") else "--"


def order(variants) -> list[str]:
    """Variants sorted by METHOD_ORDER of their base method, then by name."""
    def key(v):
        base = v.split("[")[0].split("@")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), v)
    return sorted(set(variants), key=key)
