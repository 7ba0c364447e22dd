"""TRM's calibration rule: the table's means and the choice, the files, the command's errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clmerge.report import trm_calibration as cal


def _frame(rows):
    cols = ["variant", "seed"] + cal.COLUMNS
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


@pytest.mark.parametrize("rows,grid,chosen", [
    # the best mean wins
    ([("trm", 0, .5, .8, .5, .8, 1.), ("trm", 1, .7, .8, .5, .8, 1.),
      ("trm[lr=0.03]", 0, .65, .8, .5, .8, 1.), ("trm[lr=0.03]", 1, .65, .8, .5, .8, 1.)],
     ["trm", "trm[lr=0.03]"], "trm[lr=0.03]"),
    # a tie goes to the earlier grid row (the defaults first)
    ([("trm", 0, .6, .8, .5, .8, 1.), ("trm[pc=3.0]", 0, .6, .9, .5, .8, 1.)],
     ["trm", "trm[pc=3.0]"], "trm"),
    # rows of the frame outside the grid are ignored
    ([("trm", 0, .6, .8, .5, .8, 1.), ("seq", 0, .9, .9, .9, .9, 0.)], ["trm"], "trm"),
])
def test_the_table_keeps_the_best_mean_and_ties_go_to_the_defaults(rows, grid, chosen):
    table = cal.calibration_table(_frame(rows), grid)
    assert list(table.index) == [g for g in grid if g in {r[0] for r in rows}]
    assert table.index[table["chosen"]].tolist() == [chosen]
    for label in table.index:
        vals = [r[2] for r in rows if r[0] == label]
        assert table.loc[label, "cil_A_last"] == pytest.approx(np.mean(vals))
        assert table.loc[label, "seeds"] == len(vals)


@pytest.mark.parametrize("label,options", [("trm", {}), ("trm[lr=0.03,pc=3.0]",
                                                        {"lr": "0.03", "pc": "3.0"})])
def test_chosen_options_are_the_chosen_row_s(label, options):
    table = pd.DataFrame({"chosen": [True]}, index=[label])
    assert cal.chosen_options(table) == options


def test_calibrate_runs_the_grid_and_writes_the_table(tmp_path):
    grid = ["trm[steps=4,eval_every=2]", "trm[steps=0]"]
    table = cal.calibrate("synthetic", "smoke", [0], grid, tmp_path)
    assert list(table.index) == grid and table["chosen"].sum() == 1
    csv = pd.read_csv(tmp_path / "trm-calibration-synthetic.csv", index_col=0)
    assert list(csv.index) == grid and set(csv["benchmark"]) == {"synthetic"}
    assert "chosen by mean cil_A_last" in (tmp_path / "trm-calibration-synthetic.md").read_text()
    # what a chapter reads back by the stream's name: the same rows, without the
    # constant bookkeeping columns; nothing for a stream without a table, or no stream
    back = cal.committed_table("synthetic", tmp_path)
    assert list(back.index) == grid and "benchmark" not in back.columns
    assert back["chosen"].tolist() == table["chosen"].tolist()
    assert cal.committed_table("split_digits", tmp_path) is None
    assert cal.committed_table(None, tmp_path) is None


def test_the_command_fails_in_one_sentence_on_a_bad_benchmark(capsys):
    assert cal.main(["--benchmark", "nope", "--profile", "smoke", "--grid", "trm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown benchmark 'nope'") and err.count("\n") == 1


def test_a_grid_row_equal_to_the_defaults_is_refused_before_anything_runs(tmp_path):
    from clmerge.mergers.trm import TRMOptions

    same = f"trm[steps={TRMOptions().steps}]"
    with pytest.raises(Exception, match=r"grid rows 'trm' and .* are the same configuration"):
        cal.calibrate("synthetic", "smoke", [0], ["trm", same], tmp_path)
    assert not list(tmp_path.iterdir())
    # the default grid has no such pair
    cal._check_distinct(cal.DEFAULT_GRID, "quick", "split_glyphs_calibration", None)
