"""Metrics from an accuracy matrix, against values worked out by hand."""

import pytest

from clmerge.experiment import metrics as M

R3 = [[0.9, None, None],
      [0.6, 0.8, None],
      [0.5, 0.7, 0.9]]


@pytest.mark.parametrize("fn,expected", [
    (M.a_last, (0.5 + 0.7 + 0.9) / 3),
    (M.a_avg, (0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.9) / 3) / 3),
    # forgetting: exp0 max(0.9, 0.6) - 0.5 = 0.4; exp1 max(0.8) - 0.7 = 0.1
    (M.forgetting, (0.4 + 0.1) / 2),
    # bwt: (0.5 - 0.9) + (0.7 - 0.8) over 2
    (M.bwt, (-0.4 - 0.1) / 2),
    # newest: the diagonal from the second experience on, (0.8 + 0.9) / 2
    (M.newest, (0.8 + 0.9) / 2),
    # oldest: the first experience at the end
    (M.oldest, 0.5),
])
def test_metric_by_hand(fn, expected):
    assert fn(R3) == pytest.approx(expected, abs=1e-12)


def test_one_row_matrix_has_only_a_last():
    s = M.summarize([[0.8, 0.6]])
    assert s == {"A_last": pytest.approx(0.7), "A_avg": None, "forgetting": None, "bwt": None}


@pytest.mark.parametrize("fn", [M.newest, M.oldest])
def test_one_row_matrix_has_no_newest_or_oldest(fn):
    assert fn([[0.8, 0.6]]) is None


def test_forgetting_is_negative_when_accuracy_rises():
    R = [[0.5, None], [0.6, 0.9]]
    assert M.forgetting(R) == pytest.approx(-0.1)
    assert M.bwt(R) == pytest.approx(0.1)
