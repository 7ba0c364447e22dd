"""Paired intervals and the verdict rule: oracles (numerical t quantiles, closed-form
intervals, simulated coverage) and a table of verdicts."""

import math

import numpy as np
import pandas as pd
import pytest

from clmerge.report import statistics
from clmerge.report.statistics import Interval, interval, paired_differences, verdict


def _t_cdf_numeric(x: float, dof: int) -> float:
    """P(T <= x) by the trapezoid rule on the Student-t density (x >= 0)."""
    grid = np.linspace(0.0, x, 200_001)
    c = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))
    pdf = c * (1 + grid ** 2 / dof) ** (-(dof + 1) / 2)
    return 0.5 + float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid)))


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 9, 30])
def test_t_quantile_against_numerical_integration(dof):
    q = statistics.t_quantile(0.975, dof)
    assert _t_cdf_numeric(q, dof) == pytest.approx(0.975, abs=2e-5)


def test_fallback_table_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof, tabulated in enumerate(statistics._T975, start=1):
        assert tabulated == pytest.approx(stats.t.ppf(0.975, dof), abs=6e-4)


def test_interval_closed_form():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = interval(x)
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in x) / 4)            # sqrt(2.5)
    half = statistics.t_quantile(0.975, 4) * sd / math.sqrt(5)
    assert (iv.mean, iv.sd, iv.n) == (3.0, pytest.approx(sd), 5)
    assert (iv.lo, iv.hi, iv.half_width) == (pytest.approx(3 - half), pytest.approx(3 + half),
                                             pytest.approx(half))
    # two seeds: t_{0.975,1} = 12.706, sd = |d1 - d2| / sqrt(2)
    iv2 = interval([0.0, 2.0])
    assert iv2.half_width == pytest.approx(12.7062 * math.sqrt(2) / math.sqrt(2), abs=1e-3)


def test_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.normal(0.7, 2.0, size=(4_000, 5))
    covered = 0
    for row in draws:
        iv = interval(row)
        covered += iv.lo <= 0.7 <= iv.hi
    assert covered / len(draws) == pytest.approx(0.95, abs=0.015)  # 4.4 standard errors


def test_one_seed_has_no_interval_and_nan_is_dropped():
    iv = interval([3.0, float("nan")])
    assert iv.n == 1 and iv.mean == 3.0 and not iv.has_interval
    assert verdict(iv, "greater") == ("inconclusive", "1 seed: no interval")
    assert interval([]).n == 0


def test_paired_differences_match_seeds_and_drop_the_unpaired():
    a = pd.Series({2: 10.0, 0: 12.0, 1: 11.0, 7: 99.0})
    b = pd.Series({0: 10.0, 1: 10.5, 2: 9.0, 5: 0.0})
    d = paired_differences(a, b)
    assert list(d.index) == [0, 1, 2] and list(d) == [2.0, 0.5, 1.0]


def _iv(lo, hi, n=5):
    mean = (lo + hi) / 2
    return Interval(mean, lo, hi, 1.0, n, (hi - lo) / 2)


@pytest.mark.parametrize("lo,hi,rule,expected", [
    (0.5, 2.0, "greater", "reproduced"),
    (-0.5, 2.0, "greater", "inconclusive"),
    (0.0, 2.0, "greater", "inconclusive"),       # touching 0 is not excluding it
    (-3.0, -1.0, "greater", "contradicted"),
    (-3.0, -1.0, "less", "reproduced"),
    (1.0, 3.0, "less", "contradicted"),
    (-1.0, 1.0, "less", "inconclusive"),
    (-1.5, 1.5, "equivalent:2", "reproduced"),
    (-2.0, 2.0, "equivalent:2", "reproduced"),
    (-2.5, 1.0, "equivalent:2", "inconclusive"),  # contains 0, too wide
    (0.5, 1.5, "equivalent:2", "inconclusive"),   # a small difference that excludes 0
    (1.0, 3.0, "equivalent:2", "inconclusive"),
    (2.5, 4.0, "equivalent:2", "contradicted"),
    (-4.0, -2.5, "equivalent:2", "contradicted"),
    (-1.0, 3.0, "noninferior:2", "reproduced"),
    (0.5, 3.0, "noninferior:2", "reproduced"),
    (-2.5, 3.0, "noninferior:2", "inconclusive"),
    (-1.5, -0.2, "noninferior:2", "contradicted"),
])
def test_verdict_table(lo, hi, rule, expected):
    assert verdict(_iv(lo, hi), rule)[0] == expected


ABSENT = "absent at the paper's size"


@pytest.mark.parametrize("lo,hi,rule,paper,expected", [
    (-0.5, 2.0, "greater", 14.8, ABSENT),         # contains 0, excludes +14.8
    (-0.5, 2.0, "greater", 1.0, "inconclusive"),  # contains 0 and +1.0
    (-0.5, 2.0, "greater", 2.0, "inconclusive"),  # the paper's effect on the edge is contained
    (-0.5, 2.0, "greater", 2.01, ABSENT),
    (-3.0, 0.0, "greater", 2.0, ABSENT),          # touching 0 contains it
    (0.5, 2.0, "greater", 14.8, "reproduced"),    # excluding 0 decides first
    (-3.0, -1.0, "greater", 14.8, "contradicted"),
    (-2.0, 0.5, "less", -3.0, ABSENT),
    (-2.0, 0.5, "less", -1.0, "inconclusive"),
    (-3.0, -1.0, "less", -3.0, "reproduced"),
    (-1.0, 1.0, "greater", -2.0, ABSENT),         # a paper's effect of the other sign
    (-5.0, 5.0, "greater", float("nan"), "inconclusive"),
    (-1.0, 1.0, "equivalent:2", 14.8, "reproduced"),   # no effect to be absent
    (-2.5, 1.0, "equivalent:2", 14.8, "inconclusive"),
    (-2.5, 3.0, "noninferior:2", 14.8, "inconclusive"),
])
def test_verdict_table_with_the_papers_effect(lo, hi, rule, paper, expected):
    assert verdict(_iv(lo, hi), rule, paper_effect=paper)[0] == expected


def _oracle(lo, hi, rule, paper):
    """The rule once more, from the module docstring, independently of ``verdict``."""
    name, _, m = rule.partition(":")
    if name in ("greater", "less"):
        s = 1 if name == "greater" else -1
        if min(s * lo, s * hi) > 0:
            return "reproduced"
        if max(s * lo, s * hi) < 0:
            return "contradicted"
        if paper is not None and not lo <= paper <= hi:
            return ABSENT
        return "inconclusive"
    m = float(m)
    if name == "equivalent":
        if lo <= 0 <= hi and -m <= lo and hi <= m:
            return "reproduced"
        return "contradicted" if lo > m or hi < -m else "inconclusive"
    return "contradicted" if hi < 0 else "reproduced" if lo > -m else "inconclusive"


def test_every_verdict_follows_from_its_interval_and_the_papers_effect():
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(3000):
        lo = float(np.round(rng.normal(0, 3), 1))
        hi = lo + float(np.round(rng.uniform(0, 6), 1))
        rule = str(rng.choice(["greater", "less", "equivalent:2", "noninferior:2"]))
        paper = None if rng.uniform() < 0.2 else float(np.round(rng.normal(0, 4), 1))
        got, why = verdict(_iv(lo, hi), rule, paper_effect=paper)
        assert got == _oracle(lo, hi, rule, paper), (lo, hi, rule, paper, got)
        assert got in statistics.VERDICTS and why
        seen.add(got)
    assert seen == set(statistics.VERDICTS)


@pytest.mark.parametrize("values,expected", [
    ([0.0, 0.0, 0.0], "reproduced"), ([0.0, 1e-6, 0.0], "contradicted"), ([], "inconclusive")])
def test_zero_rule(values, expected):
    assert verdict(interval(values), "zero", values=values)[0] == expected


def test_less_mirrors_greater():
    rng = np.random.default_rng(1)
    for lo, width in zip(rng.normal(0, 2, 200), rng.uniform(0, 3, 200)):
        a = verdict(_iv(lo, lo + width), "greater")[0]
        b = verdict(_iv(-lo - width, -lo), "less")[0]
        assert a == b


def test_the_why_says_whether_the_design_could_see_the_papers_effect():
    got, why = verdict(_iv(-3.0, 5.0), "greater", paper_effect=2.3)
    assert got == "inconclusive"
    assert "detects only |difference| >= 4.0" in why and "contains 0 and the paper's +2.3" in why
    got, why = verdict(_iv(-0.5, 1.5), "greater", paper_effect=2.3)
    assert got == ABSENT
    assert "excludes the paper's +2.3" in why and "detects |difference| >= 1.0" in why
    assert "no effect size" in verdict(_iv(-0.5, 1.5), "greater")[1]


@pytest.mark.parametrize("bad", ["bigger", "equivalent", "equivalent:-1", "greater:2", "zero:1"])
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError):
        statistics.parse_rule(bad)
