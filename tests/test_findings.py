"""The claims table, the findings page's verdicts, "What this shows" and the regime map."""

import dataclasses
import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from clmerge.experiment.results import load_results  # noqa: E402
from clmerge.report import findings, regime, statistics, study, takeaways  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _oracle(lo, hi, rule, paper=None):
    """The verdict rule written out once more, independently of statistics.verdict."""
    name, _, m = rule.partition(":")
    if any(math.isnan(x) for x in (lo, hi)):
        return "inconclusive"
    m = float(m) if m else None
    known = paper is not None and not math.isnan(paper)
    between = ("absent at the paper's size" if known and (paper < lo or paper > hi)
               else "inconclusive")
    table = {
        "greater": "reproduced" if lo > 0 else "contradicted" if hi < 0 else between,
        "less": "reproduced" if hi < 0 else "contradicted" if lo > 0 else between,
    }
    if name == "equivalent":
        inside = -m <= lo and hi <= m and lo <= 0 <= hi
        return "reproduced" if inside else "contradicted" if (lo > m or hi < -m) else "inconclusive"
    if name == "noninferior":
        return "contradicted" if hi < 0 else "reproduced" if lo > -m else "inconclusive"
    return table[name]


def _check_verdicts_follow_from_intervals(long):
    checked = 0
    for _, r in long.iterrows():
        if r["verdict"] == findings.NOT_RUN or r["rule"] == "zero":
            continue
        assert r["verdict"] == _oracle(r["lo"], r["hi"], r["rule"], r["paper_mean"]), r.to_dict()
        # and the interval is the t-interval of the per-seed values
        iv = statistics.interval(pd.Series(r["values"]))
        assert (iv.mean, iv.n) == (pytest.approx(r["mean"], abs=1e-3), r["n"])
        checked += 1
    return checked


def test_claims_table_is_valid_and_covers_both_papers():
    claims = findings.load_claims()
    assert {"P1", "P3", "P5", "P7a", "P7b", "T1", "T2a", "T3", "T4"} <= set(claims["id"])
    assert set(claims["source"]) == {"arXiv 2505.22389", "arXiv 2605.08311"}
    need = findings.variants_needed(claims)
    assert {"seq", "pm", "average", "pm[perturbation=none]", "trm", "coma", "dare"} <= set(need)


def test_claims_paper_differences_agree_with_paper_numbers():
    paper = pd.read_csv(ROOT / "data" / "paper_numbers.csv")
    paper = paper[paper["metric"] == "A_last"]
    main = paper.drop_duplicates(["method", "benchmark", "tasks"], keep="first")
    value = {(r.method, f"{r.benchmark}/{int(r.tasks)}"): r.value for r in main.itertuples()}
    claims = findings.load_claims()
    for _, c in claims.iterrows():
        diffs = findings.paper_differences(c["paper_differences"])
        if not diffs:
            assert math.isnan(c["paper_mean"])
            continue
        assert c["paper_mean"] == pytest.approx(np.mean(list(diffs.values())), abs=0.006)
        if c["id"] == "P8":   # the global-coefficient cells of P&M's ablation table
            glob = paper[paper["note"].fillna("").str.contains("global")]
            for key, d in diffs.items():
                tasks = int(key.split("/")[1])
                g = glob[glob["tasks"] == tasks]["value"].item()
                assert g - value[("pm[alpha=per_module]", key)] == pytest.approx(d, abs=0.006)
            continue
        for key, d in diffs.items():
            assert value[(c["a"], key)] - value[(c["b"], key)] == pytest.approx(d, abs=0.006)


def _frame(values: dict) -> pd.DataFrame:
    """A tidy frame with cil_A_last (fractions) per variant and seed."""
    rows = [{"variant": v, "seed": s, "cil_A_last": x / 100, "state_bytes_max": 0}
            for v, xs in values.items() for s, x in enumerate(xs)]
    return pd.DataFrame(rows)


def test_evaluate_pairs_by_seed_and_applies_the_rule():
    claims = findings.load_claims()
    claims = claims[claims["id"].isin(["P1", "P3", "P4", "T1", "T4"])]
    df = _frame({"seq": [10, 20, 30], "pm": [12, 23, 34], "average": [20, 10, 45],
                 "pm[perturbation=none]": [20, 10, 45], "trm": [11, 21, 31],
                 "ties": [30, 30, 30]})
    long = findings.evaluate(claims, {"toy": df}).set_index("id")
    p1 = long.loc["P1"]
    half = statistics.t_quantile(0.975, 2) * 1.0 / math.sqrt(3)   # d = 2, 3, 4
    assert (p1["mean"], p1["lo"], p1["hi"]) == (pytest.approx(3), pytest.approx(3 - half),
                                                pytest.approx(3 + half))
    assert p1["verdict"] == "reproduced"
    assert long.loc["P4", "verdict"] == "reproduced"          # identical runs: [0, 0]
    assert long.loc["T1", "b"] == "ties"                      # the best baseline by mean
    assert long.loc["T1", "verdict"] == "inconclusive"
    assert long.loc["T4", "verdict"] == "reproduced"
    assert long.loc["P3", "verdict"] == "inconclusive" and "detects only" in long.loc["P3", "why"]
    assert _check_verdicts_follow_from_intervals(long.reset_index()) == 4
    table = findings.findings_table(claims, long.reset_index())
    assert list(table.columns) == ["compared", "metric", "paper", "ours: toy", "verdict: toy", "why"]
    assert table.loc["P1. P&M beats sequential LoRA", "ours: toy"] == "+3.0 [+0.5, +5.5]"
    assert "| P1. P&M beats" in findings.markdown_table(table)


def test_absence_is_told_from_ignorance_and_a_noninferiority_pass_is_no_effect():
    claims = findings.load_claims()
    claims = claims[claims["id"].isin(["P1", "P2", "P8"])]
    # pm - seq = +0.5, -0.5, +0.2: contains 0, excludes the paper's +14.8 -> absent;
    # average - seq = +20, -20, +15: contains 0 and +12.4 -> inconclusive;
    # pm - pm[alpha=per_module] = +3, +4, +5: a non-inferiority pass, not an effect.
    df = _frame({"seq": [10, 20, 30], "pm": [10.5, 19.5, 30.2], "average": [30, 0, 45],
                 "pm[alpha=per_module]": [7.5, 15.5, 25.2]})
    long = findings.evaluate(claims, {"toy": df})
    got = long.set_index("id")["verdict"].to_dict()
    assert got == {"P1": "absent at the paper's size", "P2": "inconclusive", "P8": "reproduced"}
    assert _check_verdicts_follow_from_intervals(long) == 3
    statements = takeaways.findings(long)
    assert statements[0] == ("toy: 1 reproduced, 1 absent at the paper's size, "
                             "1 inconclusive of 3 claims.")
    assert not any("effect" in s for s in statements), statements


@pytest.mark.parametrize("rhos,cut", [([1.0, 1.0, 0.9], True), ([0.4, 0.5, 0.6], False)])
def test_a_correlation_claim_keeps_its_interval_inside_minus_one_one(monkeypatch, rhos, cut):
    metric = findings.METRICS["coef_curvature_rho"]
    monkeypatch.setitem(findings.METRICS, "coef_curvature_rho", dataclasses.replace(
        metric, per_seed=lambda runs, v: pd.Series(rhos, dtype=float)))
    claims = findings.load_claims()
    long = findings.evaluate(claims[claims["id"] == "P9"], {"toy": _frame({"pm": [1, 2, 3]})})
    r = long.iloc[0]
    raw = statistics.interval(pd.Series(rhos))
    assert r["mean"] == pytest.approx(raw.mean)
    assert (raw.hi > 1) == cut
    assert (r["lo"], r["hi"]) == (pytest.approx(max(raw.lo, -1)), pytest.approx(min(raw.hi, 1)))
    assert r["verdict"] == _oracle(r["lo"], r["hi"], r["rule"])


def test_missing_variants_are_not_run_not_a_verdict():
    claims = findings.load_claims()
    long = findings.evaluate(claims[claims["id"] == "P7b"], {"toy": _frame({"pm": [1, 2]})})
    assert long["verdict"].item() == findings.NOT_RUN and "dare" in long["why"].item()


@pytest.fixture(scope="module")
def committed_quick():
    """The committed quick runs of split_mnist5k at the profile's own configuration, as the
    chapters select them: result files of older code or of the regime map's other learning
    rates share variant labels and seeds, and are not these runs."""
    folder = ROOT / "data" / "results"
    found = load_results(folder, profile="quick", benchmark="split_mnist5k")
    if found.empty:
        pytest.skip("no committed quick results")
    df = study.ensure_results(sorted(set(found["variant"])), "quick", "split_mnist5k",
                              results_dir=folder, compute=False)
    assert not df.duplicated(["variant", "seed"]).any()
    return df


def test_verdicts_on_the_committed_results_follow_from_their_intervals(committed_quick):
    claims = findings.load_claims()
    long = findings.evaluate(claims, {"split_mnist5k": committed_quick})
    assert (long["verdict"] != findings.NOT_RUN).all(), long[["id", "why"]]
    assert _check_verdicts_follow_from_intervals(long) >= 12
    for statement in takeaways.findings(long):
        assert "Split MNIST-5k" in statement or "[" in statement


def test_takeaways_tie_each_statement_to_an_interval(committed_quick):
    df = committed_quick
    for fn in (takeaways.setting, takeaways.perturb_and_merge, takeaways.comparison,
               takeaways.ablations, takeaways.trajectory):
        statements = fn(df)
        assert 1 <= len(statements) <= takeaways.MAX_STATEMENTS, fn.__name__
        for s in statements:
            assert "[" in s or "Of " in s, s
    assert takeaways.compare(df, "pm", "no_such_variant") is None
    text = takeaways.markdown(takeaways.perturb_and_merge(df))
    assert text.startswith("**What this shows**") and text.count("\n- ") == 3


def test_regime_gains_are_paired_by_seed_and_lr():
    rows = []
    for lr, shift in ((1e-3, 5.0), (3e-3, -5.0)):
        for s in range(3):
            base = 50 + 10 * s
            for v, add in (("seq", 0.0), ("pm", shift + s)):
                rows.append({"benchmark": "toy", "lr": lr, "variant": v, "seed": s,
                             "cil_A_last": (base + add) / 100, "til_A_last": 0.9,
                             "til_forgetting": 0.1 * lr / 1e-3})
    g = regime.gains(pd.DataFrame(rows))
    cil = g[g["protocol"] == "cil"].set_index("lr")
    assert cil.loc[1e-3, "mean"] == pytest.approx(6.0) and cil.loc[3e-3, "mean"] == pytest.approx(-4.0)
    assert cil.loc[1e-3, "half_width"] == pytest.approx(statistics.t_quantile(0.975, 2) / math.sqrt(3))
    assert cil.loc[3e-3, "drift"] == pytest.approx(30.0)
    assert g[g["protocol"] == "til"]["mean"].abs().max() == pytest.approx(0.0)
    table = regime.table(g)
    assert list(table.columns) == ["lr 0.001", "lr 0.003"]
    # rates in increasing order whatever order the benchmarks' frames came in
    late = pd.DataFrame(rows).assign(benchmark="other", lr=lambda f: f["lr"] / 10)
    both = regime.table(regime.gains(pd.concat([pd.DataFrame(rows), late])))
    assert list(both.columns) == ["lr 0.0001", "lr 0.0003", "lr 0.001", "lr 0.003"]
    assert table.loc[("toy", "cil", "pm"), "lr 0.001"] == "+6.0 [+3.5, +8.5]"
    fig = regime.figure(g, "toy")
    assert len(fig.axes) >= 2
    statements = takeaways.regime(g)
    assert 1 <= len(statements) <= 3 and "P&M" in statements[0]


def test_head_competition_pairs_the_newest_and_oldest_tasks_by_seed():
    """The newest task after its merge and the first task at the end, brute-forced from
    the matrices, paired with seq's by seed."""
    rows = []
    for s in range(3):
        for v, shift in (("seq", 0.0), ("average", -0.1 - 0.05 * s)):
            R = [[0.9, None, None], [0.5 + shift, 0.7 + shift, None],
                 [0.4 - shift, 0.3, 0.6 + shift]]
            rows.append({"benchmark": "toy", "lr": 1e-3, "variant": v, "seed": s, "R": R,
                         "til_forgetting": 0.02})
    frame = regime.head_competition(pd.DataFrame(rows))
    by = frame.set_index("protocol")
    newest, oldest = regime.HEAD_MEASURES["newest"], regime.HEAD_MEASURES["oldest"]
    shifts = [-0.1 - 0.05 * s for s in range(3)]
    # newest = mean(R[1][1], R[2][2]): both move by the shift; oldest = R[2][0] moves by -shift
    assert by.loc[newest, "mean"] == pytest.approx(100 * sum(shifts) / 3)
    assert by.loc[oldest, "mean"] == pytest.approx(-100 * sum(shifts) / 3)
    assert by.loc[newest, "reference_level"] == pytest.approx(100 * (0.7 + 0.6) / 2)
    assert by.loc[oldest, "reference_level"] == pytest.approx(40.0)
    assert by.loc[newest, "n"] == 3 and by.loc[newest, "lo"] < by.loc[newest, "mean"]
    levels = regime.reference_levels(frame)
    assert levels.loc[("toy", oldest), "lr 0.001"] == pytest.approx(40.0)
    assert regime.table(frame).loc[("toy", newest, "average"), "lr 0.001"].startswith("-15.0 [")
    assert regime.head_competition(pd.DataFrame()).empty


def test_a_check_beside_the_map_runs_with_its_overrides_and_is_labelled(tmp_path):
    checks = {"synthetic": {"lr": 0.003, "head": "cosine", "head_init": "means"},
              "split_mnist5k": {"lr": 0.0003}}
    runs = regime.ensure_check(checks, ["average"], "smoke", ["synthetic"], [0], tmp_path)
    assert sorted(runs["variant"]) == ["average", "seq"]
    assert set(runs["benchmark"]) == {"synthetic [head=cosine, head_init=means]"}
    assert set(runs["head"]) == {"cosine"} and set(runs["lr"]) == {0.003}
    frame = regime.head_competition(runs)
    assert set(frame["protocol"]) == set(regime.HEAD_MEASURES.values())
    assert regime.ensure_check(checks, ["average"], "smoke", ["other"], [0], tmp_path).empty
    with pytest.raises(ValueError, match="LoRA rate"):
        regime.ensure_check({"synthetic": {"head": "cosine"}}, [], "smoke", ["synthetic"], [0])


def test_regime_learning_rates():
    lrs = {"split_mnist5k": [3e-3, 3e-4, 1e-3], "split_glyphs": [1e-2, 1e-3, 3e-3]}
    assert regime.learning_rates("quick", "split_mnist5k", lrs=lrs) == [3e-4, 1e-3, 3e-3]
    # the profile's benchmark (split_glyphs) when none is named
    assert regime.learning_rates("quick", lrs=lrs) == [1e-3, 3e-3, 1e-2]
    assert regime.learning_rates("quick", "split_digits", lrs=lrs) == [3e-4, 9e-4, 3e-3, 9e-3]
    lrs = regime.learning_rates("smoke")
    assert len(lrs) >= 3 and lrs == sorted(lrs)
