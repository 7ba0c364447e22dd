"""The renditions calibration: the rule (a)-(d), the choice of a cell, the drift budgets,
and that only the references run, on the calibration stream."""

import math

import pandas as pd
import pytest

from clmerge.experiment import renditions_calibration as C


@pytest.mark.parametrize("seq,joint,nmc,forg,ok", [
    # the probe: (a) and (b) hold, (c) and (d) do not
    (19.3, 32.1, 15.7, 1.3, (True, True, False, False)),
    (44.0, 60.0, 40.0, 3.0, (True, True, True, True)),        # every bound met exactly
    (44.0, 54.9, 40.0, 3.0, (False, True, True, True)),       # joint - nmc 14.9
    (35.9, 60.0, 40.0, 5.0, (True, False, True, True)),       # seq / nmc 0.8975
    (52.1, 60.0, 40.0, 5.0, (True, False, True, True)),       # 1.3025
    (44.0, 60.0, 40.0, 2.99, (True, True, False, True)),
    (30.0, 80.0, 40.0, 5.0, (True, False, True, False)),      # nmc / joint 0.5
    (40.0, 48.0, 40.0, 5.0, (False, True, True, False)),      # 0.833
])
def test_the_four_criteria(seq, joint, nmc, forg, ok):
    got = C.criteria(seq, joint, nmc, forg)
    assert got["joint_minus_nmc"] == pytest.approx(joint - nmc)
    assert got["seq_over_nmc"] == pytest.approx(seq / nmc)
    assert got["nmc_over_joint"] == pytest.approx(nmc / joint)
    # an independent oracle of the rule
    want = (joint - nmc >= 15, 0.9 <= seq / nmc <= 1.3, forg >= 3, 0.55 <= nmc / joint <= 0.8)
    assert want == ok
    assert tuple(got[f"{k}_ok"] for k in "abcd") == ok
    for k, holds in zip("abcd", ok):
        assert (got[f"{k}_short"] == 0) == holds


def test_shortfall_is_the_distance_past_the_bound_in_its_units():
    s = C.shortfall(joint_minus_nmc=12.0, seq_over_nmc=1.5, seq_til_forgetting=1.5,
                    nmc_over_joint=0.3)
    assert s == pytest.approx({"a": 3 / 15, "b": 0.2 / 0.4, "c": 0.5, "d": 0.25 / 0.25})
    assert C.criteria(40.0, float("nan"), 40.0, 5.0)["a_ok"] is None


def _frame(rows):
    out = []
    for seq, joint, nmc, forg in rows:
        r = {"seq_cil": seq, "joint_cil": joint, "nmc_cil": nmc}
        r.update(C.criteria(seq, joint, nmc, forg))
        out.append(r)
    df = pd.DataFrame(out)
    df["met"] = df[[f"{k}_ok" for k in "abcd"]].fillna(False).astype(bool).sum(axis=1)
    df["qualifies"] = df["met"] == 4
    return df


@pytest.mark.parametrize("rows,want", [
    # two qualify: seq / nmc closest to 1.1 wins (1.05 against 1.2)
    ([(19.3, 32.1, 15.7, 1.3), (42.0, 60.0, 40.0, 4.0), (48.0, 60.0, 40.0, 4.0)], 1),
    ([(46.0, 60.0, 40.0, 4.0), (42.0, 60.0, 40.0, 4.0)], 0),   # 1.15 vs 1.05: tie -> first
    # none qualifies: fewest missed first (row 1 misses (c) only), whatever the shortfall
    ([(19.3, 32.1, 15.7, 1.3), (44.0, 60.0, 40.0, 0.1)], 1),
    # same number missed: smallest total shortfall (c: 1.5/3 against 2.5/3)
    ([(44.0, 60.0, 40.0, 0.5), (44.0, 60.0, 40.0, 1.5)], 1),
    # a cell without joint cannot be chosen
    ([(44.0, float("nan"), 40.0, 4.0), (19.3, 32.1, 15.7, 1.3)], 1),
])
def test_the_choice_rule(rows, want):
    assert C.choose(_frame(rows)) == want


def test_nothing_is_chosen_before_a_cell_is_complete():
    assert C.choose(_frame([(44.0, float("nan"), 40.0, 4.0)])) is None


@pytest.mark.parametrize("forgetting,want", [
    # calibrated 4.0 at 4e-3: half is 2.0 (lower rates), double 8.0 (higher rates)
    ({1e-3: 1.0, 2e-3: 2.2, 8e-3: 7.0, 1.6e-2: 12.0}, {"milder": 2e-3, "stronger": 8e-3}),
    # log distances tie (1.0 and 4.0 from 2; 4.0 and 16.0 from 8): the lower rate
    ({1e-3: 1.0, 2e-3: 4.0, 8e-3: 16.0, 1.6e-2: 32.0}, {"milder": 1e-3, "stronger": 8e-3}),
    # a higher rate where seq collapses forgets close to half: it is never the milder one
    ({1e-3: 0.3, 3e-3: 1.0, 8e-3: 9.6, 3e-2: 2.1}, {"milder": 3e-3, "stronger": 8e-3}),
    # no lower rate: no milder budget
    ({8e-3: 7.0}, {"milder": float("nan"), "stronger": 8e-3}),
])
def test_drift_budgets_by_forgetting(forgetting, want):
    rows = [{"lr": 4e-3, "seq_cil": 50.0, "seq_til_forgetting": 4.0, "calibrated": True}]
    rows += [{"lr": lr, "seq_cil": 50.0, "seq_til_forgetting": f, "calibrated": False}
             for lr, f in forgetting.items()]
    got = C.drift_budgets(pd.DataFrame(rows))
    assert got["calibrated"] == 4e-3
    # the oracle: the log-distance argmin written out, each on its side of 4e-3
    for name, target, side in (("milder", 2.0, lambda lr: lr < 4e-3),
                               ("stronger", 8.0, lambda lr: lr > 4e-3)):
        pool = [lr for lr in forgetting if side(lr)]
        if not pool:
            assert math.isnan(got[name]) and math.isnan(want[name])
            continue
        best = min(pool, key=lambda lr: (abs(math.log(forgetting[lr] / target)), lr))
        assert got[name] == best == want[name]


def test_only_references_run_and_only_on_the_calibration_stream():
    cfgs = []
    for cell in C.GRID:
        cfgs += [*C.cell_configs(cell).values(), *C.reference_configs(cell).values()]
        for d in C.drift_cells(cell):
            cfgs += list(C.cell_configs(d).values())
    assert {c.method for c in cfgs} <= {"seq", "joint", "nmc", "probe"}
    assert {c.benchmark for c in cfgs} == {C.BENCHMARK} == {"glyph_renditions_calibration"}
    for cell in C.GRID:
        seq = C.cell_configs(cell)["seq"]
        assert all(getattr(seq, k) == cell[k] for k in C.CELL_KEYS)
    # one reference run per distinct data of the grid
    refs = {C.reference_configs(c)["nmc"].run_name() for c in C.GRID}
    data = {tuple(c[k] for k in C.DATA_KEYS) for c in C.GRID}
    assert len(refs) == len(data)


def test_the_markdown_table_states_the_rule_and_the_command():
    df = _frame([(19.3, 32.1, 15.7, 1.3), (44.0, 60.0, 40.0, 0.1)])
    for k in C.CELL_KEYS:
        df[k] = C.GRID[0][k]
    df["chosen"] = [False, True]
    text = C.markdown(df)
    assert "No cell of 2 qualifies" in text and C.COMMAND in text
    assert "| 15.7 | 32.1 | 19.3 | 16.4 | 1.23 | 1.3 | 0.49 | 2 |  |" in text
    assert text.count("**yes**") == 1


BUDGETS = {"calibrated": 3e-3, "milder": 1e-3, "stronger": 1e-2}


def test_the_evaluation_grids_hold_every_variant_the_claims_need(tmp_path):
    from clmerge.experiment.grid import expand_grid
    from clmerge.report import findings

    grids = C.sweep_grids(BUDGETS)
    assert sorted(grids) == ["renditions_calibrated.yaml", "renditions_milder_lr0.001.yaml",
                             "renditions_stronger_lr0.01.yaml"]
    cal = grids["renditions_calibrated.yaml"]
    needed = set(findings.variants_needed(findings.load_claims())) | {"seq", "joint", "nmc"}
    assert needed <= set(cal["variants"]) and cal["seeds"] == list(range(10))
    assert "overrides" not in cal          # the profile's own (calibrated) budget
    drift = {"seq", "average", "ties", "magmax", "pm", "pm[perturbation=none]",
             "pm[perturbation=gaussian]", "trm"}
    for name, lr in (("renditions_milder_lr0.001.yaml", 1e-3),
                     ("renditions_stronger_lr0.01.yaml", 1e-2)):
        g = grids[name]
        assert set(g["variants"]) == drift and g["seeds"] == list(range(5))
        assert g["overrides"] == {"lr": lr}
    paths = C.write_sweep_grids(BUDGETS, tmp_path, forgetting={"calibrated": 3.2})
    counts = {}
    for p in paths:
        cfgs = expand_grid(p)
        assert {c.benchmark for c in cfgs} == {"glyph_renditions"}
        counts[p.name] = len(cfgs)
        lrs = {c.lr for c in cfgs}
        assert len(lrs) == 1
    assert counts == {"renditions_calibrated.yaml": 160, "renditions_milder_lr0.001.yaml": 40,
                      "renditions_stronger_lr0.01.yaml": 40}
    assert "forgets 3.2 task-incremental points" in paths[0].read_text()
    # no budget, no file
    assert list(C.sweep_grids({"calibrated": 3e-3, "milder": float("nan")})) == [
        "renditions_calibrated.yaml"]


def test_the_committed_grid_matches_its_results_and_the_frozen_cell():
    from clmerge.experiment.config import make_config

    committed = pd.read_csv(C.TABLE, keep_default_na=False, na_values=[""])
    df = C.table()
    assert len(committed) == len(df) == len(C.GRID)
    for col in ("seq_cil", "joint_cil", "nmc_cil", "seq_til_forgetting"):
        assert df[col].round(2).tolist() == committed[col].round(2).tolist(), col
    assert df["chosen"].sum() == 1 and committed["chosen"].tolist() == df["chosen"].tolist()
    chosen = C.chosen_cell(df)
    for bench in ("glyph_renditions", "glyph_renditions_calibration"):
        frozen = make_config("seq", bench, "quick")
        for k in C.CELL_KEYS:
            assert getattr(frozen, k) == chosen[k], (bench, k)
    assert C.markdown(df) == C.TABLE.with_suffix(".md").read_text(encoding="utf-8")


def test_the_chosen_cell_makes_configs():
    """A table's chosen row gives settings a config takes (Python values, not numpy's)."""
    df = pd.DataFrame(C.GRID)
    df["chosen"] = [i == 1 for i in range(len(df))]
    cell = C.chosen_cell(df)
    assert cell == C.GRID[1]
    assert {type(v) for v in cell.values()} <= {str, int, float}
    for c in [cell, *C.drift_cells(cell)]:
        assert C.cell_configs(c)["seq"].lr == c["lr"]
    assert C.chosen_cell(df.assign(chosen=False)) is None
