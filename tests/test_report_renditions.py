"""Chapter 1's view of the renditions calibration: the grid as parts, the verdict on the
chosen cell (it says plainly when no cell meets all four criteria) and the drift budgets."""

import pandas as pd
import pytest

from clmerge.experiment import renditions_calibration as C
from clmerge.report import renditions as R

CELL = {"rendition_styles": "plain:2,low_contrast", "rendition_train_per_class": 60,
        "epochs": 2}


def _write(tmp_path, rows):
    """A table as the calibration module writes it (its own ``criteria``), from
    (lr, seq, joint, nmc, seq TIL forgetting) and which row is chosen."""
    out = []
    for lr, seq, joint, nmc, forg, chosen in rows:
        r = {**CELL, "lr": lr, "seq_cil": seq, "joint_cil": joint, "nmc_cil": nmc}
        r.update(C.criteria(seq, joint, nmc, forg))
        r["chosen"] = chosen
        out.append(r)
    df = pd.DataFrame(out)
    df["met"] = df[[f"{k}_ok" for k in "abcd"]].fillna(False).astype(bool).sum(axis=1)
    df["qualifies"] = df["met"] == 4
    path = tmp_path / "grid.csv"
    df.to_csv(path, index=False, float_format="%.4g")
    return path


@pytest.mark.parametrize("rows,says,meets,misses", [
    # none qualifies: the closest (row 2) misses (a) only, by its number
    ([(3e-3, 23.4, float("nan"), 20.2, 1.9, False), (5e-3, 21.1, 35.0, 20.2, 6.0, True)],
     "No cell of the 2 meets all four criteria", "(b), (c), (d)",
     ["(a) fine-tuning pays", "= 14.8 points"]),
    # one qualifies: it is named and meets all four
    ([(3e-3, 44.0, 60.0, 40.0, 4.0, True), (1e-2, 30.0, 60.0, 40.0, 9.0, False)],
     "1 of the 2 cells meet (a)-(d)", "all four", []),
])
def test_the_verdict_names_the_cell_and_what_it_meets(tmp_path, rows, says, meets, misses):
    text = R.chosen(_write(tmp_path, rows))
    assert says in text and meets in text
    i = [r[-1] for r in rows].index(True)
    assert f"cell {i + 1}: styles plain ×2, low contrast, 60 images per class, 2 epochs, " \
           f"LoRA rate {rows[i][0]:g}" in text
    for m in misses:
        assert m in text
    if not misses:
        assert "misses" not in text and "No cell" not in text


def test_nothing_is_chosen_is_said(tmp_path):
    path = _write(tmp_path, [(3e-3, 23.4, float("nan"), 20.2, 1.9, False)])
    assert R.chosen(path).startswith("No cell of the 1 has all four numbers yet")


def test_the_grid_shows_every_cell_and_the_rule_s_bounds(tmp_path):
    path = _write(tmp_path, [(3e-3, 23.4, float("nan"), 20.2, 1.9, False),
                             (5e-3, 21.1, 35.0, 20.2, 6.0, True)])
    g = R.grid(path)
    assert list(g.index) == [1, 2] and "closest" in g.columns and "chosen" not in g.columns
    assert g["closest"].tolist() == ["no", "yes"]
    assert g["(a) holds"].tolist() == ["", "no"]      # unknown without joint, then missed
    assert g["(c) holds"].tolist() == ["no", "yes"]
    assert g[f"(b) {R.SEQ} / {R.NMC}"].tolist() == [f"{23.4 / 20.2:.2f}", f"{21.1 / 20.2:.2f}"]
    shown = {c for _, cols in g.parts for c in cols}
    assert shown == set(g.columns)                     # every column is in some part
    text = R.rule()
    for bound in ("≥ 15", "[0.9, 1.3]", "≥ 3", "[0.55, 0.8]", "closest to 1.1"):
        assert bound in text


def test_styles_read_as_words():
    assert R.styles("plain:2,inverted,low_contrast") == "plain ×2, inverted, low contrast"


def test_the_drift_table_marks_the_three_budgets(tmp_path):
    d = pd.DataFrame([{"lr": 5e-3, "seq_cil": 21.1, "seq_til_forgetting": 6.0,
                       "calibrated": True},
                      {"lr": 1e-3, "seq_cil": 30.0, "seq_til_forgetting": 0.8,
                       "calibrated": False},
                      {"lr": 3e-3, "seq_cil": 23.4, "seq_til_forgetting": 1.9,
                       "calibrated": False},
                      {"lr": 1e-2, "seq_cil": 18.4, "seq_til_forgetting": 9.6,
                       "calibrated": False},
                      {"lr": 3e-2, "seq_cil": 10.0, "seq_til_forgetting": 20.0,
                       "calibrated": False}])
    path = tmp_path / "drift.csv"
    d.to_csv(path, index=False)
    t = R.drift(path)
    # half of 6.0 is 3.0: 1.9 is nearer on a log scale than 0.8; double is 12.0: 9.6
    assert dict(zip(t.index, t["budget"])) == {"0.001": "", "0.003": "milder",
                                               "0.005": "calibrated", "0.01": "stronger",
                                               "0.03": ""}
