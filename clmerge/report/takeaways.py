""""What this shows": the closing statements of each chapter, computed from its results.

Each function takes what its chapter has already computed and returns at most three
statements, each tied to a number with its 95% interval over seeds (paired by seed when
two methods are compared; :mod:`clmerge.report.statistics`). A statement whose variants
are not in the chapter's runs is left out, so every function works on any profile.
:func:`markdown` renders the list for the chapter's last cell.
"""

from __future__ import annotations

import math

import pandas as pd

from clmerge.report import statistics
from clmerge.report.findings import METRICS, NOT_RUN, Runs, _pick_best
from clmerge.report.names import benchmark as _bench
from clmerge.report.names import column as _column
from clmerge.report.names import possessive, readable

MAX_STATEMENTS = 3
REFERENCES = ("probe", "joint", "nmc")   # not continual methods: never "the best method"
UNITLESS = ("ratio", "rho")              # named by the metric's label, not after the number


def _runs(df) -> Runs:
    return df if isinstance(df, Runs) else Runs(df)


def _reading(iv: statistics.Interval, unit: str = "points") -> str:
    if not iv.has_interval:
        return ""
    if iv.lo > 0:
        return "; the interval excludes 0: established above"
    if iv.hi < 0:
        return "; the interval excludes 0: established below"
    unit = "" if unit in UNITLESS else f" {unit}"
    return (f"; the interval contains 0: not established (this design detects differences "
            f"of about {iv.half_width:.{2 if iv.half_width < 1 else 1}f}{unit} or more)")


def _number(iv: statistics.Interval, digits: int, unit: str, signed: bool = True,
            paired: bool = False) -> str:
    """``+1.2 [-0.5, +2.9] points (95% interval, paired over 3 seeds)``."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    unit = f" {unit}" if unit and unit not in UNITLESS else ""
    if not iv.has_interval:
        return f"{f.format(iv.mean)}{unit} (one seed, no interval)"
    return (f"{f.format(iv.mean)} [{f.format(iv.lo)}, {f.format(iv.hi)}]{unit} "
            f"(95% interval{', paired' if paired else ''} over {iv.n} seeds)")


def compare(df, a: str, b: str, metric: str = "cil_A_last", what: str | None = None
            ) -> str | None:
    """``"pm − seq, class-incremental A_last: +1.2 points [-15.4, +17.7] (paired, 3
    seeds); the interval contains 0: ..."``, or None when a variant has no runs."""
    runs = _runs(df)
    if a not in runs.variants or b not in runs.variants:
        return None
    m = METRICS[metric]
    iv = statistics.paired_interval(m.per_seed(runs, a), m.per_seed(runs, b))
    if iv.n == 0:
        return None
    return (f"{what or f'{readable(a)} − {readable(b)}'}, {_column(m.label)}: "
            f"{_number(iv, m.digits, m.unit, paired=True)}{_reading(iv, m.unit)}.")


def level(df, variant: str, metric: str, what: str | None = None) -> str | None:
    """One variant's own value with its interval over seeds."""
    runs = _runs(df)
    if variant not in runs.variants:
        return None
    m = METRICS[metric]
    iv = statistics.interval(m.per_seed(runs, variant))
    if iv.n == 0:
        return None
    return (f"{what or readable(variant)}, {_column(m.label)}: "
            f"{_number(iv, m.digits, m.unit, signed=False)}.")


def ratio(df, a: str, b: str, metric: str = "cil_A_last", what: str | None = None
          ) -> str | None:
    """The per-seed ratio metric(a) / metric(b) with its interval."""
    runs = _runs(df)
    if a not in runs.variants or b not in runs.variants:
        return None
    m = METRICS[metric]
    pa, pb = m.per_seed(runs, a), m.per_seed(runs, b)
    common = pa.index.intersection(pb.index)
    iv = statistics.interval(pa.loc[common] / pb.loc[common])
    if iv.n == 0:
        return None
    return (f"{what or f'{readable(a)} / {readable(b)}'}, {_column(m.label)}: "
            f"{_number(iv, 2, '', signed=False)}.")


def _keep(statements) -> list[str]:
    return [s for s in statements if s][:MAX_STATEMENTS]


def markdown(statements: list[str], title: str = "What this shows") -> str:
    body = "\n".join(f"- {s}" for s in statements) if statements else (
        "- Nothing to state: the runs this chapter compares are missing.")
    return f"**{title}**\n\n{body}\n" if title else body + "\n"


def show(statements: list[str]):
    """Display the statements as Markdown (the chapter's last cell)."""
    from IPython.display import Markdown, display

    display(Markdown(markdown(statements, title="")))


# ---------------------------------------------------------------- one function per chapter


def setting(df) -> list[str]:
    """Chapter 1: how far sequential LoRA falls, and how much it forgets."""
    runs = _runs(df)
    ref = "nmc" if "nmc" in runs.variants else "probe"
    return _keep([
        level(runs, "seq", "til_forgetting"),
        compare(runs, "joint", "seq", "cil_A_last"),
        ratio(runs, "seq", ref, "cil_A_last",
              f"sequential LoRA / {readable(ref)} (the frozen-feature reference)"),
    ])


def perturb_and_merge(df) -> list[str]:
    """Chapter 2: P&M against seq, and what its perturbation adds."""
    runs = _runs(df)
    return _keep([
        compare(runs, "pm", "seq", "cil_A_last"),
        compare(runs, "pm", "pm[perturbation=none]", "cil_A_last"),
        compare(runs, "pm", "seq", "til_A_last"),
    ])


def trajectory(df) -> list[str]:
    """Chapter 3: TRM against P&M and against its own starting point (no optimisation
    steps), and the start-of-task gradients."""
    runs = _runs(df)
    return _keep([
        compare(runs, "trm", "pm", "cil_A_last"),
        compare(runs, "trm", "trm[steps=0]", "cil_A_last",
                "TRM − its own starting point (no optimisation steps)"),
        compare(runs, "trm", "seq", "grad_ratio"),
    ])


def comparison(df, reference: str = "seq") -> list[str]:
    """Chapter 4: the best continual method against seq, how many methods beat seq, and
    P&M against averaging."""
    runs = _runs(df)
    m = METRICS["cil_A_last"]
    methods = [v for v in sorted(runs.variants) if v not in REFERENCES and v != reference]
    out = []
    best = _pick_best(runs, m, methods) if reference in runs.variants else None
    if best:
        out.append(compare(runs, best, reference, "cil_A_last",
                           f"the best method here ({readable(best)}) − {readable(reference)}"))
        ivs = {v: statistics.paired_interval(m.per_seed(runs, v), m.per_seed(runs, reference))
               for v in methods}
        above = sorted(v for v, iv in ivs.items() if iv.has_interval and iv.lo > 0)
        below = sorted(v for v, iv in ivs.items() if iv.has_interval and iv.hi < 0)
        out.append(f"Of {len(methods)} methods, {len(above)} "
                   f"{'lies' if len(above) == 1 else 'lie'} above {readable(reference)} and "
                   f"{len(below)} below it with a 95% interval excluding 0 (final "
                   f"class-incremental accuracy, paired by seed)"
                   + (f": above {', '.join(map(readable, above))}" if above else "")
                   + (f"; below {', '.join(map(readable, below))}" if below else "") + ".")
    out.append(compare(runs, "pm", "average", "cil_A_last"))
    return _keep(out)


def ablations(df, base: str = "pm") -> list[str]:
    """Chapter 5: the P&M switch that matters most, the coefficient's granularity, and
    the start of the next task."""
    runs = _runs(df)
    m = METRICS["cil_A_last"]
    out = []
    if base in runs.variants:
        switches = [v for v in runs.variants if v.startswith(base + "[")]
        ivs = {v: statistics.paired_interval(m.per_seed(runs, base), m.per_seed(runs, v))
               for v in switches}
        ivs = {v: iv for v, iv in ivs.items() if iv.n and not math.isnan(iv.mean)}
        if ivs:
            top = max(ivs, key=lambda v: abs(ivs[v].mean))
            out.append(compare(runs, base, top, "cil_A_last",
                               f"{readable(base)} − {readable(top)} "
                               f"(the largest ablation effect)"))
    out.append(compare(runs, "pm", "pm[alpha=per_module]", "cil_A_last",
                       "one global coefficient − one per module"))
    out.append(compare(runs, "magmax@ft", "magmax", "cil_A_last",
                       "MagMax (fine-tuned start) − MagMax (merged start)"))
    return _keep(out)


def cost(tasks: pd.DataFrame, df) -> list[str]:
    """Chapter 6: merge time over training time (P&M, TRM), and bytes kept."""
    runs = _runs(df)
    out = []
    for v in ("pm", "trm"):
        sub = tasks[tasks["variant"] == v]
        if sub.empty:
            continue
        per_seed = (sub["merge_seconds"] / sub["train_seconds"]).groupby(sub["seed"]).mean()
        iv = statistics.interval(per_seed)
        out.append(f"{possessive(readable(v))} merge time over the same task's training time: "
                   f"{_number(iv, 2, '', signed=False)}; one CPU thread per run.")
    mib = {v: METRICS["persisted_MiB"].per_seed(runs, v) for v in ("pm", "trm")
           if v in runs.variants}
    if mib:
        out.append("Bytes kept between tasks (max over tasks, mean over seeds): " + "; ".join(
            f"{readable(v)} {s.mean():.1f} MiB" for v, s in mib.items()) + ".")
    return _keep(out)


def regime(frame: pd.DataFrame) -> list[str]:
    """The regime map (:func:`clmerge.report.regime.gains`): per benchmark, the largest
    gain over seq at the mildest and at the strongest drift, and where any gain is
    established."""
    out = []
    if frame.empty:
        return out
    cil = frame[frame["protocol"] == "cil"]
    for bench, sub in cil.groupby("benchmark", sort=False):
        for lr in sorted({sub["lr"].min(), sub["lr"].max()}):
            at = sub[sub["lr"] == lr].dropna(subset=["mean"])
            if at.empty:
                continue
            r = at.loc[at["mean"].idxmax()]
            iv = statistics.Interval(r["mean"], r["lo"], r["hi"], r["sd"], int(r["n"]),
                                     r["half_width"])
            out.append(f"{_bench(bench)}, LoRA rate {lr:g}: the largest class-incremental "
                       f"gain over sequential LoRA is "
                       f"{possessive(readable(r['variant']))}, "
                       f"{_number(iv, 1, 'points', paired=True)}"
                       f"{_reading(iv)}.")
        established = sub[sub["lo"] > 0]
        out.append(f"{_bench(bench)}: {len(established)} of {len(sub)} (method, LoRA rate) "
                   f"points have a class-incremental gain over sequential LoRA whose "
                   f"interval excludes 0"
                   + (f" (at rate {', '.join(f'{x:g}' for x in sorted(set(established['lr'])))})"
                      if len(established) else "") + ".")
    return out[:MAX_STATEMENTS]


def findings(long: pd.DataFrame) -> list[str]:
    """The findings page: the verdict counts, and the largest reproduced and contradicted
    effects among the directional claims (:data:`clmerge.report.statistics.DIRECTIONAL`):
    an equivalence or non-inferiority pass says two variants are about as good, never that
    one beats the other, so it is never named an effect."""
    out = []
    for bench, sub in long.groupby("benchmark", sort=False):
        counts = sub["verdict"].value_counts()
        out.append(f"{_bench(bench)}: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in
                                             (*statistics.VERDICTS, NOT_RUN) if counts.get(v, 0))
                   + f" of {len(sub)} claims.")
    directional = long["rule"].map(lambda r: statistics.parse_rule(r)[0]
                                   in statistics.DIRECTIONAL)
    tested = long[long["verdict"].isin(["reproduced", "contradicted"]) & directional]
    for verdict in ("contradicted", "reproduced"):
        sub = tested[(tested["verdict"] == verdict) & tested["metric"].eq("cil_A_last")]
        if sub.empty:
            continue
        r = sub.loc[sub["mean"].abs().idxmax()]
        iv = statistics.Interval(r["mean"], r["lo"], r["hi"], r["sd"], int(r["n"]),
                                 r["detectable"])
        paper = "" if pd.isna(r["paper_mean"]) else f"; the paper: {r['paper_mean']:+.1f}"
        vs = f"{readable(r['a'])} − {readable(r['b'])}" if r["b"] else readable(r["a"])
        out.append(f"Largest {verdict} effect: {r['id']} on {_bench(r['benchmark'])} ({vs}), "
                   f"{_number(iv, 1, 'points', paired=True)}{paper}.")
    return out[:MAX_STATEMENTS]


__all__ = ["compare", "level", "ratio", "markdown", "show", "setting", "perturb_and_merge",
           "trajectory", "comparison", "ablations", "cost", "regime", "findings"]
