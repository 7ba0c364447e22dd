"""The calibration's choice rule, and that it never runs a merging method."""

import pandas as pd
import pytest

from clmerge.experiment import calibration as C


def _df(rows):
    return pd.DataFrame([dict(zip(("seq_cil", "joint_cil", "seq_over_nmc", "ratio_ok",
                                   "joint_ok", "drift_ok"), r)) for r in rows])


@pytest.mark.parametrize("rows,want", [
    # all three met by rows 1 and 2: the ratio closest to the papers' 0.867 wins
    ([(50, 70, 0.72, False, True, True), (60, 78, 0.86, True, True, True),
      (62, 78, 0.90, True, True, True)], 1),
    ([(50, 70, 0.72, False, True, True), (60, 78, 0.95, True, True, True),
      (62, 78, 0.90, True, True, True)], 2),
    # nothing meets all three: most targets met first, then the ratio
    ([(50, 70, 0.85, True, False, False), (60, 78, 0.70, False, True, True),
      (62, 78, 0.60, False, True, True)], 1),
    # a budget whose joint was not run (None) cannot count joint as met
    ([(50, None, 0.87, True, None, True), (60, 78, 0.80, True, True, True)], 1),
])
def test_choice_rule(rows, want):
    assert C.choose(_df(rows)) == want


def test_calibration_runs_references_only_on_the_calibration_stream():
    cfgs = C.all_configs()
    assert {c.method for c in cfgs} == {"seq", "joint", "nmc", "probe"}
    assert {c.benchmark for c in cfgs} == {"split_glyphs_calibration"}
    names = [c.run_name() for c in cfgs]
    assert len(set(names)) == len(names)


def test_committed_table_matches_committed_results_and_the_frozen_budget():
    from clmerge.experiment.config import make_config

    df = C.table()
    committed = pd.read_csv(C.TABLE)
    assert df["chosen"].sum() == 1 and committed["chosen"].sum() == 1
    assert df["seq_cil"].round(2).tolist() == committed["seq_cil"].round(2).tolist()
    chosen = df[df["chosen"]].iloc[0]
    frozen = make_config("seq", "split_glyphs", "quick")
    for k in C.BUDGET_KEYS:
        assert getattr(frozen, k) == chosen[k], k
