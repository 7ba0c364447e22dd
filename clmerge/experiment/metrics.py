"""Continual-learning metrics derived from an accuracy matrix.

R[i][j] is the accuracy on experience j after training experience i (j <= i; entries
with j > i are None). With T rows:

- A_last (the papers' Acc)  = (1/T) sum_j R[T-1][j]
- A_avg  (the papers' AAA)  = (1/T) sum_i (1/(i+1)) sum_{j<=i} R[i][j]
- forgetting                = (1/(T-1)) sum_{j<T-1} max_{j<=i<T-1} R[i][j] - R[T-1][j]
- BWT                       = (1/(T-1)) sum_{j<T-1} R[T-1][j] - R[j][j]

A one-row matrix (joint training, linear probe) has A_last only; the others are None.
"""

from __future__ import annotations

from typing import Sequence

Matrix = Sequence[Sequence[float | None]]


def a_last(R: Matrix) -> float:
    last = [v for v in R[-1] if v is not None]
    return sum(last) / len(last)


def a_avg(R: Matrix) -> float | None:
    if len(R) < 2:
        return None
    return sum(sum(R[i][: i + 1]) / (i + 1) for i in range(len(R))) / len(R)


def forgetting(R: Matrix) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return sum(max(R[i][j] for i in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)


def bwt(R: Matrix) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def summarize(R: Matrix) -> dict[str, float | None]:
    return {"A_last": a_last(R), "A_avg": a_avg(R), "forgetting": forgetting(R), "bwt": bwt(R)}
