"""What P&M's perturbation trades (clmerge.report.perturbation_effect): every quantity
re-derived from the accuracy matrices and loss series written here, paired by seed."""

import math

import numpy as np
import pandas as pd
import pytest

from clmerge.experiment.results import write_result
from clmerge.report import perturbation_effect as pe
from clmerge.report import statistics


def _result(variant, R, R_til, losses, cil_forgetting=0.1, til_forgetting=0.02):
    return {"config": {"method": "pm", "seed": 0}, "variant": variant,
            "metrics": {"cil": {"A_last": float(np.mean(R[-1])), "forgetting": cil_forgetting},
                        "til": {"A_last": float(np.mean(R_til[-1])),
                                "forgetting": til_forgetting}},
            "R": R, "R_til": R_til, "tasks": [{"losses": ls} for ls in losses]}


def _frame(tmp_path, runs):
    rows = []
    for i, (variant, seed, result) in enumerate(runs):
        path = write_result(result, tmp_path / f"r{i}.json")
        rows.append({"variant": variant, "seed": seed, "path": str(path)})
    return pd.DataFrame(rows)


R3 = [[0.9, None, None], [0.7, 0.8, None], [0.5, 0.6, 0.7]]
TIL3 = [[1.0, None, None], [0.9, 0.95, None], [0.85, 0.9, 0.92]]


def test_each_quantity_is_its_definition_on_one_run(tmp_path):
    df = _frame(tmp_path, [("pm", 0, _result("pm", R3, TIL3, [[2.0, 1.0], [3.0], [1.0, 1.0, 4.0]],
                                             cil_forgetting=0.25, til_forgetting=0.05))])
    got = pe.per_run(df).iloc[0]
    q = {x.label: got[x.label] for x in pe.QUANTITIES}
    assert q["training loss at the sampled points"] == pytest.approx((1.5 + 3.0 + 2.0) / 3)
    # the diagonal of the TIL matrix: each task right after its own merge
    assert q["task just learned, after its merge (TIL)"] == pytest.approx(
        100 * (1.0 + 0.95 + 0.92) / 3)
    # after merge 2: task 1; after merge 3: tasks 1 and 2; mean over merges 2..3
    assert q["old tasks, after each merge (TIL)"] == pytest.approx(100 * (0.9 + (0.85 + 0.9) / 2) / 2)
    assert q["TIL forgetting"] == pytest.approx(5.0)
    assert q["CIL forgetting"] == pytest.approx(25.0)
    assert q["final accuracy (CIL A_last)"] == pytest.approx(100 * 0.6)


def test_differences_are_paired_by_seed_against_no_perturbation(tmp_path):
    """Seeds 0-2 of none, P&M and Gaussian, plus a P&M seed 3 that none lacks: each
    interval is statistics.interval of the per-seed differences on the common seeds."""
    runs, finals = [], {}
    for seed in range(4):
        for variant, shift in ((pe.BASE, 0.0), ("pm", 0.05 + 0.01 * seed),
                               ("pm[perturbation=gaussian]", 0.002 * seed)):
            if variant == pe.BASE and seed == 3:
                continue
            R = [[0.5 + shift]]
            finals[(variant, seed)] = 100 * R[0][0]
            runs.append((variant, seed, _result(variant, R, [[0.9]], [[1.0 + shift]])))
    ivs = pe.intervals(_frame(tmp_path, runs))
    final = "final accuracy (CIL A_last)"
    expect = statistics.interval([finals[("pm", s)] - finals[(pe.BASE, s)] for s in range(3)])
    got = ivs["along the task vector"][final]
    assert got.n == 3 and got.mean == pytest.approx(expect.mean)
    assert (got.lo, got.hi) == pytest.approx((expect.lo, expect.hi))
    loss = ivs["Gaussian noise"]["training loss at the sampled points"]
    assert loss.mean == pytest.approx(np.mean([0.0, 0.002, 0.004]))


def _toy_budget(tmp_path, along_loss, noise_loss, seeds=4):
    runs = []
    rng = np.random.default_rng(0)
    for seed in range(seeds):
        jitter = float(rng.normal(0, 0.01))
        noise = noise_loss[seed] if isinstance(noise_loss, list) else noise_loss
        for variant, dl, dacc in ((pe.BASE, 0.0, 0.0), ("pm", along_loss, -0.01 + jitter),
                                  ("pm[perturbation=gaussian]", noise, jitter / 2)):
            R = [[0.6 + dacc, None], [0.3 + dacc, 0.5 + dacc]]
            runs.append((variant, seed, _result(variant, R, [[0.9, None], [0.8, 0.9]],
                                                [[1.0 + dl], [1.0 + dl]])))
    return _frame(tmp_path, runs)


@pytest.mark.parametrize("along,noise,says_curved", [
    (0.06, 0.0, True),      # the renditions case: noise moves the loss by nothing
    (0.06, 0.01, True),     # a sixth: about 6 times
    (0.06, 0.02, False),    # a third of it: the sentence on curvature is not written
    # a mean of 0.001 whose interval holds 0: no ratio of 60 is claimed
    (0.06, [0.004, -0.002, 0.003, -0.001], True),
])
def test_the_reading_states_curvature_only_when_the_noise_barely_moves_the_loss(
        tmp_path, along, noise, says_curved):
    text = pe.reading(_toy_budget(tmp_path, along, noise), "calibrated")
    assert text.startswith("At the calibrated budget (4 seeds)")
    assert ("more curved along the task vector" in text) is says_curved
    if says_curved:   # a ratio only when the noise's increase is told apart from 0
        tells = isinstance(noise, float) and noise > 0
        assert ("far more curved" in text) is not tells
        if tells:
            assert f"about {along / noise:.0f} times" in text
    ivs = pe.intervals(_toy_budget(tmp_path, along, noise))
    final = ivs["along the task vector"]["final accuracy (CIL A_last)"]
    assert final.text(1) in text


def test_the_table_has_a_column_per_budget_and_perturbation_and_skips_empty_ones(tmp_path):
    full = _toy_budget(tmp_path, 0.06, 0.0)
    empty = pd.DataFrame(columns=["variant", "seed", "path"])
    table = pe.table({"milder": empty, "calibrated": full})
    assert list(table.columns) == ["calibrated: along the task vector (4 seeds)",
                                   "calibrated: Gaussian noise (4 seeds)"]
    assert len(table) == len(pe.QUANTITIES)
    assert pe.reading(full[full["seed"] == 0], "calibrated").endswith("nothing to read yet.")
    assert not math.isnan(pe.intervals(full)["Gaussian noise"]["TIL forgetting"].mean)


@pytest.mark.parametrize("noise,written", [(0.0, True), (0.02, False)])
def test_the_answer_s_clause_follows_the_same_rule_as_the_reading(tmp_path, noise, written):
    df = _toy_budget(tmp_path, 0.06, noise)
    text = pe.clause(df)
    assert bool(text) is written
    assert ("more curved" in pe.reading(df, "calibrated")) is written
    if written:
        loss = pe.intervals(df)["along the task vector"]["training loss at the sampled points"]
        assert text.startswith("P6 repeats P5") and loss.text(3) in text
    assert pe.clause(None) == "" and pe.clause(df.iloc[:0]) == ""


def test_claims_without_swap_p_and_m_for_its_merge_alone_and_nothing_else(tmp_path):
    """P&M's claims against other methods on final accuracy, as tested and with P&M
    without perturbation in P&M's place, each the paired interval of its own runs; a
    claim against a variant of P&M (two switches) or a best-of choice is left out."""
    claims = pd.DataFrame([
        {"id": "X1", "a": "pm", "b": "average", "metric": "cil_A_last", "rule": "greater",
         "paper_mean": 1.0, "claim": "", "paper_differences": "", "paper_note": ""},
        {"id": "X2", "a": "pm", "b": "pm[alpha=per_module]", "metric": "cil_A_last",
         "rule": "greater", "paper_mean": 1.0, "claim": "", "paper_differences": "",
         "paper_note": ""},
        {"id": "X3", "a": "pm", "b": "best:average|ties", "metric": "cil_A_last",
         "rule": "greater", "paper_mean": 1.0, "claim": "", "paper_differences": "",
         "paper_note": ""},
        {"id": "X4", "a": "average", "b": "seq", "metric": "cil_A_last", "rule": "greater",
         "paper_mean": 1.0, "claim": "", "paper_differences": "", "paper_note": ""},
        {"id": "X5", "a": "pm", "b": "coma", "metric": "cil_A_last", "rule": "greater",
         "paper_mean": 1.0, "claim": "", "paper_differences": "", "paper_note": ""},
    ])
    acc = {"average": [0.50, 0.52, 0.49], "pm": [0.49, 0.50, 0.47],
           pe.BASE: [0.51, 0.53, 0.50]}
    rows = []
    for variant, xs in acc.items():
        for seed, x in enumerate(xs):
            rows.append({"variant": variant, "seed": seed, "cil_A_last": x,
                         "til_forgetting": 0.0, "state_bytes_max": 0})
    table = pe.claims_without(claims, {"calibrated": pd.DataFrame(rows),
                                       "milder": pd.DataFrame(columns=["variant", "seed"])})
    assert list(table.index) == ["X1", "X5"]
    assert list(table.columns) == ["compared", "calibrated: P&M",
                                   "calibrated: without perturbation"]
    with_pm = statistics.interval([100 * (p - a) for p, a in zip(acc["pm"], acc["average"])])
    alone = statistics.interval([100 * (p - a) for p, a in zip(acc[pe.BASE], acc["average"])])
    assert table.loc["X1", "calibrated: P&M"] == with_pm.text(1)
    assert table.loc["X1", "calibrated: without perturbation"] == alone.text(1)
    assert table.loc["X5", "calibrated: P&M"] == "–"          # no CoMA runs
