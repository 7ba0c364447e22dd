"""Paired comparisons over seeds, and the rule that turns an interval into a verdict.

**Design.** A seed fixes everything random in a run: the class order of the stream, the
initialisation of heads and adapters, the order of the training data and every sample a
method draws. Every method runs with the same seeds, so two methods are compared seed by
seed: for a metric ``m``, the paired difference of methods A and B at seed s is

    d_s = m_A(s) - m_B(s),        s = 1..n.

What a seed does to both methods alike (an easy class order, a lucky initialisation)
cancels in d_s, so the paired differences vary less than either method alone.

**Interval.** The mean difference with a two-sided 95% Student-t interval over seeds:

    d_bar = (1/n) sum_s d_s,   s_d = sqrt( sum_s (d_s - d_bar)^2 / (n - 1) ),
    d_bar -/+ t_{0.975, n-1} * s_d / sqrt(n).

The interval assumes the d_s are independent draws of one distribution, close enough to
normal; with 3 to 5 seeds nothing checks that assumption, so the intervals are a
yardstick, not a guarantee. With one seed there is no interval.

**Smallest detectable difference.** The half-width ``h = t_{0.975, n-1} * s_d / sqrt(n)``
at the observed s_d: a mean difference smaller than h cannot produce an interval that
excludes 0. A true difference of exactly h is detected about half the time. When the
paper's effect is smaller than h, this design could not have seen it, and the "why" of an
inconclusive verdict says so.

**Verdict rule** (written down before the final results were computed, applied by
:func:`verdict` and nothing else). Every claim names a direction or a rule
(``data/claims.csv``, column ``rule``), and its paired 95% interval [lo, hi] decides:

* ``greater`` (the paper finds A above B):
  reproduced if lo > 0; contradicted if hi < 0; otherwise the interval contains 0, and
  with the paper's effect p (its mean difference, where it publishes one) it is
  *absent at the paper's size* if p lies outside [lo, hi] (p < lo or p > hi): an effect
  as large as the paper's is excluded here, while no effect at all is not;
  inconclusive if [lo, hi] contains p as well as 0, or the paper publishes no p: the
  design cannot tell the paper's effect from none.
* ``less`` (the paper finds A below B): the mirror image,
  reproduced if hi < 0; contradicted if lo > 0; otherwise absent at the paper's size or
  inconclusive exactly as for ``greater``.
* ``equivalent:M`` (A and B about equal; M in the metric's unit):
  reproduced if the interval contains 0 and lies within [-M, +M];
  contradicted if it lies wholly outside [-M, +M] (lo > M or hi < -M);
  inconclusive otherwise (too wide, or a difference smaller than M that excludes 0).
* ``noninferior:M`` (A at least as good as B):
  reproduced if the interval contains 0 or lies above it (hi >= 0) and lo > -M;
  contradicted if hi < 0 (A worse, established); inconclusive otherwise.
* ``zero`` (a quantity that is 0 by construction, such as bytes kept):
  reproduced if every seed's value is 0, contradicted otherwise. No interval is needed.

Only the directional rules know "absent at the paper's size": an equivalence or a
non-inferiority claim has no effect to be absent, and its pass ("reproduced") says that
A is about as good as B, never that A beats B.

Fewer than two seeds give no interval: every interval rule then says inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVEL = 0.95
ABSENT = "absent at the paper's size"
VERDICTS = ("reproduced", "contradicted", ABSENT, "inconclusive")
# The rules whose "reproduced" is an effect (a difference with a sign); an equivalence or
# non-inferiority pass is not one.
DIRECTIONAL = ("greater", "less")

# t_{0.975, dof} for dof = 1..30 (the fallback when scipy is not installed; the test checks
# it against scipy and against a numerical integration of the t density).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with ``dof`` degrees of freedom.

    scipy when installed; otherwise the table above (p = 0.975 only, dof <= 30, the
    normal quantile 1.96 beyond)."""
    if dof < 1:
        raise ValueError(f"t quantile needs dof >= 1; got {dof}")
    try:
        from scipy import stats  # optional: a transitive dependency, not a direct one
    except ImportError:
        if abs(p - 0.975) > 1e-12:
            raise ValueError("without scipy only the 0.975 quantile is tabulated") from None
        return _T975[dof - 1] if dof <= len(_T975) else 1.96
    return float(stats.t.ppf(p, dof))


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with its two-sided t-interval over ``n`` seeds."""

    mean: float
    lo: float
    hi: float
    sd: float          # SD of the paired differences (n - 1 in the denominator)
    n: int
    half_width: float  # t_{0.975, n-1} sd / sqrt(n): the smallest detectable difference

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.lo)

    def excludes_zero(self) -> bool:
        return self.has_interval and (self.lo > 0 or self.hi < 0)

    def text(self, digits: int = 1, unit: str = "", signed: bool = True) -> str:
        """``+1.2 [-0.5, +2.9]`` (or ``+1.2 (1 seed)``); ``signed=False`` for a level
        rather than a difference: ``28.0 [6.5, 49.4]``."""
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        if not self.has_interval:
            return f"{f.format(self.mean)}{unit} ({self.n} seed{'s' if self.n != 1 else ''})"
        return f"{f.format(self.mean)}{unit} [{f.format(self.lo)}, {f.format(self.hi)}]"


def interval(values, level: float = LEVEL) -> Interval:
    """Mean and two-sided ``level`` t-interval of ``values`` (NaN dropped)."""
    x = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(x)
    if n == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, nan, 0, nan)
    mean = float(x.mean())
    if n == 1:
        nan = float("nan")
        return Interval(mean, nan, nan, nan, 1, nan)
    sd = float(x.std(ddof=1))
    h = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - h, mean + h, sd, n, h)


def paired_differences(a: pd.Series, b: pd.Series) -> pd.Series:
    """``a - b`` on the seeds both have (Series indexed by seed); seeds that only one
    method has are left out, so no difference mixes two class orders."""
    a, b = a.dropna(), b.dropna()
    common = a.index.intersection(b.index).sort_values()
    return (a.loc[common] - b.loc[common]).rename("difference")


def paired_interval(a: pd.Series, b: pd.Series, level: float = LEVEL) -> Interval:
    return interval(paired_differences(a, b), level)


# ---------------------------------------------------------------- the verdict rule


def parse_rule(rule: str) -> tuple[str, float | None]:
    """``"greater"`` -> ("greater", None); ``"equivalent:2"`` -> ("equivalent", 2.0)."""
    name, _, margin = str(rule).strip().partition(":")
    if name in ("greater", "less", "zero") and not margin:
        return name, None
    if name in ("equivalent", "noninferior") and margin:
        value = float(margin)
        if value <= 0:
            raise ValueError(f"rule {rule!r}: the margin must be positive")
        return name, value
    raise ValueError(f"unknown rule {rule!r}; rules: greater, less, equivalent:M, "
                     f"noninferior:M, zero")


def _fmt(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def verdict(iv: Interval, rule: str, paper_effect: float | None = None,
            values=None, digits: int = 1) -> tuple[str, str]:
    """``(verdict, why)`` for one claim on one benchmark; see the module docstring.

    ``paper_effect``: the paper's mean difference (A - B), if it publishes one; for a
    directional rule it separates "absent at the paper's size" (the interval contains 0
    and excludes it) from "inconclusive" (the interval contains both), and the why says
    whether the interval's half-width is below it.
    ``values``: the per-seed values, for the ``zero`` rule.
    """
    name, margin = parse_rule(rule)
    if name == "zero":
        vals = pd.Series(values if values is not None else [], dtype=float).dropna()
        if vals.empty:
            return "inconclusive", "no runs"
        nonzero = int((vals != 0).sum())
        if nonzero == 0:
            return "reproduced", f"0 on all {len(vals)} seed{'s' if len(vals) != 1 else ''}"
        return "contradicted", f"non-zero on {nonzero} of {len(vals)} seeds (max {vals.max():.3g})"
    if not iv.has_interval:
        return "inconclusive", f"{iv.n} seed{'s' if iv.n != 1 else ''}: no interval"
    lo, hi = iv.lo, iv.hi
    span = f"[{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
    if name in ("greater", "less"):
        sign = 1 if name == "greater" else -1
        if sign * lo > 0 and sign * hi > 0:
            return "reproduced", f"{span} excludes 0 on the paper's side"
        if sign * lo < 0 and sign * hi < 0:
            return "contradicted", f"{span} excludes 0 on the other side"
        why = f"{span} contains 0"
        if paper_effect is None or math.isnan(paper_effect):
            return "inconclusive", why + "; the paper publishes no effect size"
        p = _fmt(paper_effect, digits)
        detects = (f"this design detects only |difference| >= {iv.half_width:.{digits}f}"
                   if iv.half_width > abs(paper_effect) else
                   f"this design detects |difference| >= {iv.half_width:.{digits}f}")
        if paper_effect < lo or paper_effect > hi:
            return ABSENT, f"{span} contains 0 and excludes the paper's {p}; {detects}"
        return "inconclusive", f"{span} contains 0 and the paper's {p}; {detects}"
    m = margin
    if name == "equivalent":
        if lo <= 0 <= hi and -m <= lo and hi <= m:
            return "reproduced", f"{span} contains 0 and lies within ±{m:g}"
        if lo > m or hi < -m:
            return "contradicted", f"{span} lies outside ±{m:g}"
        if not lo <= 0 <= hi:
            return "inconclusive", f"{span} excludes 0 without lying wholly outside ±{m:g}"
        return "inconclusive", f"{span} contains 0 but reaches beyond ±{m:g}"
    # noninferior
    if hi < 0:
        return "contradicted", f"{span} lies below 0"
    if lo > -m:
        return "reproduced", f"{span} contains 0 or lies above it, and lo > -{m:g}"
    return "inconclusive", f"{span} reaches below -{m:g}"
