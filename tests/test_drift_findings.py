"""The findings page's regime story: each regime's signature (clmerge.report.signature)
and the claims on glyph renditions per budget (clmerge.report.drift)."""

import math
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import yaml

matplotlib.use("Agg")

from clmerge.experiment import renditions_calibration as RC  # noqa: E402
from clmerge.experiment.grid import expand_grid  # noqa: E402
from clmerge.experiment.results import result_path, write_result  # noqa: E402
from clmerge.report import drift, findings, signature  # noqa: E402

from test_findings import _check_verdicts_follow_from_intervals  # noqa: E402


def _runs(acc: dict, til_forgetting: dict | None = None) -> pd.DataFrame:
    """A tidy frame: cil_A_last (percent in, fractions stored) per variant and seed."""
    rows = []
    for v, xs in acc.items():
        for s, x in enumerate(xs):
            f = (til_forgetting or {}).get(v, [0.0] * len(xs))[s]
            rows.append({"variant": v, "seed": s, "cil_A_last": x / 100,
                         "til_forgetting": f / 100, "state_bytes_max": 0})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the signature
def test_signature_per_seed_is_each_seed_s_own_ratio_and_gap():
    df = _runs({"nmc": [20, 25], "seq": [24, 25], "average": [26, 30], "pm": [28, 35],
                "joint": [40, 40]}, {"seq": [3.0, 5.0]})
    got = signature.per_seed(df)
    assert got.loc[0].to_dict() == pytest.approx({
        "seq_over_nmc": 24 / 20, "average_over_nmc": 26 / 20, "pm_over_nmc": 28 / 20,
        "joint_minus_nmc": 20.0, "seq_til_forgetting": 3.0, "nmc_over_joint": 20 / 40})
    assert got.loc[1, "joint_minus_nmc"] == pytest.approx(15.0)
    stats = signature.summary(df)
    assert stats["seq_over_nmc"]["mean"] == pytest.approx((1.2 + 1.0) / 2)
    assert stats["seq_til_forgetting"]["sd"] == pytest.approx(math.sqrt(2))   # 3, 5
    # a seed without one of the variants gives NaN there, not another seed's value
    partial = signature.per_seed(df[~((df["variant"] == "pm") & (df["seed"] == 1))])
    assert math.isnan(partial.loc[1, "pm_over_nmc"])
    assert signature.summary(df[df["variant"] != "joint"])["joint_minus_nmc"]["n"] == 0


@pytest.mark.parametrize("means,missed", [
    # every criterion holds
    ({"joint_minus_nmc": 20, "seq_over_nmc": 1.1, "seq_til_forgetting": 4,
      "nmc_over_joint": 0.6}, []),
    # split_glyphs at its calibrated budget: fine-tuning pays little, seq below nmc,
    # little forgetting, frozen features nearly as good as joint
    ({"joint_minus_nmc": 7.7, "seq_over_nmc": 0.89, "seq_til_forgetting": 0.8,
      "nmc_over_joint": 0.9}, ["a", "b", "c", "d"]),
    # a budget without joint runs: (a) and (d) cannot be told, so they are not listed
    ({"seq_over_nmc": 1.4, "seq_til_forgetting": 9.6}, ["b"]),
])
def test_what_a_regime_lacks_is_the_calibration_rule_s_criteria_it_misses(means, missed):
    got = signature.lacks(means)
    assert [g[1] for g in got] == missed
    # the words are the rule's own, bounds included
    if "a" in missed:
        assert got[0] == f"(a) joint − class means ≥ {RC.JOINT_GAIN_MIN:g}"


def test_the_papers_row_is_their_accuracies_over_the_nmc_range():
    row = signature.paper_row()
    paper = pd.read_csv(signature.PAPER_CSV).iloc[0]
    # ImageNet-R / 10 tasks: seq 65.72, averaging 76.90, P&M 79.95 over nmc 55-62
    assert (paper["seq"], paper["average"], paper["pm"]) == (65.72, 76.90, 79.95)
    assert row["seq_over_nmc"] == "1.06–1.19"
    assert row["average_over_nmc"] == "1.24–1.40"
    assert row["pm_over_nmc"] == "1.29–1.45"
    table = signature.table({"toy": _runs({"nmc": [20, 20], "seq": [20, 22]})})
    assert table.index[0] == "the papers (ImageNet-R, 10 tasks)"
    assert table.loc["toy", "seq / class means"] == "1.05 ± 0.07"
    assert table.loc["toy", "seeds"] == 2


# ------------------------------------------------------------------ the budgets
def test_the_grids_are_the_three_budgets_of_the_drift_rule():
    paths = drift.grids()
    assert list(paths) == ["milder", "calibrated", "stronger"]
    budgets = RC.drift_budgets(pd.read_csv(RC.DRIFT_TABLE))
    assert drift.budget_rates(paths) == pytest.approx(budgets)
    assert len(expand_grid(paths["calibrated"])) == 160
    assert {len(expand_grid(paths[w])) for w in ("milder", "stronger")} == {40}


def _grid(tmp_path: Path, name: str, variants, seeds, overrides=None) -> Path:
    g = {"profile": "smoke", "name": f"final-renditions-{name}", "variants": variants,
         "seeds": seeds}
    if overrides:
        g["overrides"] = overrides
    path = tmp_path / f"renditions_{name}.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


def _result(cfg, acc: float, variant: str) -> dict:
    return {"name": cfg.run_name(), "variant": variant, "config": cfg.to_dict(),
            "config_hash": cfg.config_hash(), "R": [[acc]], "R_til": [[acc]],
            "metrics": {"cil": {"A_last": acc}, "til": {"A_last": acc, "forgetting": 0.0}}}


def test_budget_runs_read_each_grid_s_own_runs_from_the_first_folder_that_has_them(tmp_path):
    paths = {"calibrated": _grid(tmp_path, "calibrated", ["seq", "pm"], [0, 1]),
             "stronger": _grid(tmp_path, "stronger", ["seq"], [0], {"lr": 0.02})}
    first, second = tmp_path / "scratch", tmp_path / "committed"
    cal = expand_grid(paths["calibrated"])
    for cfg in cal:
        write_result(_result(cfg, 0.4, cfg.method), result_path(cfg, second))
    write_result(_result(cal[0], 0.9, "seq"), result_path(cal[0], first))   # preferred
    strong = expand_grid(paths["stronger"])[0]
    # the calibrated seq's result under the stronger run's name: another config's
    write_result(_result(cal[0], 0.1, "seq"), result_path(strong, second))
    runs = drift.budget_runs([first, second], paths)
    assert len(runs["calibrated"]) == 4 and runs["stronger"].empty
    seq0 = runs["calibrated"].query("variant == 'seq' and seed == 0")
    assert seq0["cil_A_last"].item() == pytest.approx(0.9)
    prog = drift.progress(runs, paths)
    assert prog.loc["calibrated", "runs"] == "4 of 4" and prog.loc["calibrated", "complete"]
    assert prog.loc["stronger", "runs"] == "0 of 1" and not prog.loc["stronger", "complete"]
    assert prog.loc["stronger", "LoRA rate"] == "0.02"


def test_one_verdict_column_per_budget_each_following_from_its_interval():
    claims = findings.load_claims()
    claims = claims[claims["id"].isin(["P1", "P3", "P7b"])]
    runs = {
        # pm - seq = +3, +4, +5: reproduced; pm - average = 0, +0.1, -0.1: absent
        "milder": _runs({"seq": [10, 20, 30], "pm": [13, 24, 35],
                         "average": [13, 23.9, 35.1]}, {"seq": [1, 1, 1]}),
        # pm - seq = +20, -20, +1: contains 0 and the paper's +14.8: inconclusive
        "stronger": _runs({"seq": [10, 40, 30], "pm": [30, 20, 31]}, {"seq": [8, 10, 12]}),
    }
    long = findings.evaluate(claims, runs)
    assert _check_verdicts_follow_from_intervals(long) == 3
    table = drift.verdict_table(claims, long, runs, {"milder": 0.003, "stronger": 0.01})
    assert list(table.columns) == ["compared", "paper", "milder (rate 0.003, seq forgets 1.0; "
                                   "3 seeds)", "stronger (rate 0.01, seq forgets 10.0; 3 seeds)"]
    for (cid, which), r in long.set_index(["id", "benchmark"]).iterrows():
        col = next(c for c in table.columns if c.startswith(which))
        cell = table.loc[cid, col]
        if r["verdict"] == findings.NOT_RUN:
            assert cell == "–"
        else:
            assert cell.endswith(f"<br>*{r['verdict']}*"), cell
    assert table.loc["P1", table.columns[2]].endswith("*reproduced*")
    assert table.loc["P3", table.columns[2]].endswith("*absent at the paper's size*")
    assert table.loc["P1", table.columns[3]].endswith("*inconclusive*")
    assert table.loc["P7b", table.columns[2]] == "–"                  # no DARE runs
    fig = drift.figure(claims, long, runs)
    drawn = [ax for ax in fig.axes if ax.has_data()]
    assert [ax.get_title().split(":")[0] for ax in drawn] == ["P1", "P3", "P7b"]
    # a point per budget where the claim ran, at seq's mean forgetting
    p1 = drawn[0]
    xs = sorted({float(x) for line in p1.lines for x in line.get_xdata()
                 if len(line.get_xdata()) == 1})
    assert xs == pytest.approx([1.0, 10.0])


def test_claims_without_a_common_seed_are_not_run():
    claims = findings.load_claims()
    claims = claims[claims["id"] == "P1"]
    df = _runs({"seq": [10, 20]})
    df = pd.concat([df, _runs({"pm": [1, 2, 3, 4]}).query("seed >= 2")])
    r = findings.evaluate(claims, {"toy": df}).iloc[0]
    assert r["verdict"] == findings.NOT_RUN and r["why"] == "no seed has runs of both"


def test_the_answer_groups_the_core_verdicts_and_says_when_the_sweep_is_incomplete():
    long = pd.DataFrame([
        {"benchmark": "calibrated", "id": "P1", "n": 10, "verdict": "reproduced"},
        {"benchmark": "calibrated", "id": "P3", "n": 10, "verdict": "absent at the paper's size"},
        {"benchmark": "calibrated", "id": "P5", "n": 9, "verdict": "absent at the paper's size"},
        {"benchmark": "calibrated", "id": "P8", "n": 10, "verdict": "reproduced"},  # not core
        {"benchmark": "calibrated", "id": "T1", "n": 0, "verdict": findings.NOT_RUN},
        {"benchmark": "milder", "id": "P2", "n": 5, "verdict": "contradicted"},
    ])
    done = pd.DataFrame({"complete": [True], "runs": ["160 of 160"]},
                        index=pd.Index(["calibrated"], name="budget"))
    text = drift.answer(long, done)
    assert text == ("On glyph renditions at its calibrated budget, over 9 to 10 seeds, the core "
                    "claims come out 1 reproduced (P1); 2 absent at the paper's size (P3, P5).")
    partial = done.assign(complete=False, runs="90 of 160")
    assert drift.answer(long, partial).endswith(
        "(90 of 160 runs at this budget): these verdicts are provisional.")
    assert drift.answer(long, done, budget="stronger").startswith("No claim has runs")


def test_budgets_without_class_means_divide_by_the_shared_ones():
    """nmc takes no LoRA rate, so the milder and stronger grids leave it out; their
    signature divides by the calibrated budget's nmc runs of the same seed."""
    cal = _runs({"nmc": [20, 25], "seq": [24, 25]}).assign(path=["n0", "n1", "s0", "s1"])
    mild = _runs({"seq": [22, 30]}).assign(path=["m0", "m1"])
    empty = pd.DataFrame(columns=["variant", "seed", "path"])
    got = drift.regime_runs({"milder": mild, "calibrated": cal, "stronger": empty})
    assert got["calibrated"] is cal and not len(got["stronger"])
    assert sorted(got["milder"]["path"]) == ["m0", "m1", "n0", "n1"]
    ratio = signature.per_seed(got["milder"])["seq_over_nmc"]
    assert list(ratio) == pytest.approx([22 / 20, 30 / 25])
    # a budget with class means of its own keeps them
    own = _runs({"nmc": [10, 10], "seq": [11, 12]}).assign(path=["o0", "o1", "o2", "o3"])
    assert drift.regime_runs({"a": own, "b": cal})["a"] is own
