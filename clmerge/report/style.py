"""One look for every chapter: theme, a colour-blind-safe palette, panels of at most six lines.

Colours come from the Okabe-Ito palette (Okabe and Ito, "Color Universal Design", 2008),
eight hues that stay distinct under the common forms of colour blindness. A panel never
draws more than :data:`MAX_LINES` coloured lines: figures with more variants are split
into facets (:func:`panels`), or draw the methods under discussion in colour and the
rest in grey (:func:`palette` with ``highlight``). Within a panel every variant has its
own hue (ablations of one method included), and sequential fine-tuning, P&M and TRM keep
the same colour in every figure.
"""

from __future__ import annotations

import matplotlib
import seaborn as sns

METHOD_ORDER = ["probe", "nmc", "joint", "seq", "seq_full", "average", "coma", "cofima",
                "task_arithmetic", "ties", "dare", "magmax", "ewc", "lwf", "pm", "trm"]
PROTOCOL_NAMES = {"cil": "class-incremental (no task id)", "til": "task-incremental (task id given)"}

# Okabe-Ito, in the order hues are handed out (yellow last: faint on white).
OKABE_ITO = {"black": "#000000", "vermillion": "#D55E00", "blue": "#0072B2",
             "orange": "#E69F00", "bluish green": "#009E73", "reddish purple": "#CC79A7",
             "sky blue": "#56B4E9", "yellow": "#F0E442"}
HUES = list(OKABE_ITO.values())
FIXED = {"seq": OKABE_ITO["black"], "pm": OKABE_ITO["vermillion"], "trm": OKABE_ITO["blue"]}
GREY = "#B0B0B0"
MAX_LINES = 6
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def use_style() -> None:
    """The theme of every chapter; also makes a ConfigError in a chapter one sentence
    (:func:`clmerge.report.notebook.one_sentence_errors`)."""
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight",
                                "axes.titleweight": "bold", "figure.autolayout": False,
                                "axes.prop_cycle": matplotlib.cycler(color=HUES)})
    from clmerge.report.notebook import one_sentence_errors

    one_sentence_errors()


def base_method(variant: str) -> str:
    base = variant.split("[")[0].split("@")[0]
    return base if base in METHOD_ORDER else base.replace("_full", "")


def palette(variants, highlight=None) -> dict[str, str]:
    """A distinct hue for each variant of one panel (up to eight), ``seq``/``pm``/``trm``
    (as published) in their fixed colours, the others in order. With ``highlight`` (or
    more than eight variants), only the highlighted ones get hues and the rest grey."""
    variants = list(dict.fromkeys(variants))
    coloured = [v for v in variants if highlight is None or v in highlight]
    if len(coloured) > len(HUES):
        coloured = coloured[:len(HUES)]
    out = {v: GREY for v in variants}
    taken = {FIXED[v] for v in coloured if v in FIXED}
    # hues of no fixed method first: black, vermillion and blue mean seq, P&M and TRM
    free = ([h for h in HUES if h not in FIXED.values()]
            + [h for h in FIXED.values() if h not in taken])
    for v in coloured:
        out[v] = FIXED[v] if v in FIXED else free.pop(0)
    return out


def color(variant: str) -> str:
    """Colour of a variant drawn on its own: its method's fixed colour, else the first hue
    after the fixed ones. Figures with several variants use :func:`palette`."""
    return palette([variant])[variant]


def linestyle(variant: str) -> str:
    """Solid for a method as published, dashed for a variant of it."""
    return "-" if "[" not in variant and "@" not in variant and not variant.endswith("_full") else "--"


def order(variants) -> list[str]:
    """Variants sorted by METHOD_ORDER of their base method, then by name."""
    def key(v):
        base = v.split("[")[0].split("@")[0]
        return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), v)
    return sorted(set(variants), key=key)


def panels(variants, references=(), max_lines: int = MAX_LINES) -> list[list[str]]:
    """Split ``variants`` (in order) into as few groups as keep each panel, with the
    ``references`` drawn in every panel, at most ``max_lines`` lines; group sizes differ
    by at most one."""
    variants = [v for v in variants if v not in set(references)]
    per = max(1, max_lines - len(references))
    n = max(1, -(-len(variants) // per))
    sizes = [len(variants) // n + (1 if i < len(variants) % n else 0) for i in range(n)]
    out, start = [], 0
    for size in sizes:
        out.append(variants[start:start + size])
        start += size
    return out


# reference lines (joint training, linear probe): greys with their own dash patterns, the
# same in every panel, so that hues stay free for the methods
REFERENCE_STYLES = [("#555555", ":"), ("#999999", "-.")]
