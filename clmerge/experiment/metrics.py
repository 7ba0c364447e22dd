"""Continual-learning metrics derived from an accuracy matrix.

R[i][j] is the accuracy on experience j after training experience i (j <= i; entries
with j > i are None). With T rows:

- A_last (the papers' Acc)  = (1/T) sum_j R[T-1][j]
- A_avg  (the papers' AAA)  = (1/T) sum_i (1/(i+1)) sum_{j<=i} R[i][j]
- forgetting                = (1/(T-1)) sum_{j<T-1} max_{j<=i<T-1} R[i][j] - R[T-1][j]
- BWT                       = (1/(T-1)) sum_{j<T-1} R[T-1][j] - R[j][j]
- newest                    = (1/(T-1)) sum_{1<=t<T} R[t][t]
- oldest                    = R[T-1][0]

``newest`` is the accuracy on each experience's classes right after its own training (and,
for a merging method, its merge), from the second experience on: in class-incremental
evaluation it measures how often the newest task's head wins against the older heads (the
first experience, alone, has no competitor). ``oldest`` is the first experience's
accuracy at the end.

Pooled variants, with n_j the number of test samples of experience j (what the
codebases behind the papers' tables report: accuracy over every seen test sample):

- A_last_pooled = sum_j n_j R[T-1][j] / sum_j n_j
- A_avg_pooled  = (1/T) sum_i [sum_{j<=i} n_j R[i][j] / sum_{j<=i} n_j]

They equal A_last / A_avg when all experiences have the same test size (Split
CIFAR-100) and differ otherwise (ImageNet-R, CUB-200).

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


def newest(R: Matrix) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return sum(R[t][t] for t in range(1, T)) / (T - 1)


def oldest(R: Matrix) -> float | None:
    return R[-1][0] if len(R) >= 2 else None


def pooled_accuracy(row: Sequence[float | None], sizes: Sequence[int]) -> float:
    """Accuracy over the pooled test samples of the experiences with an entry in ``row``."""
    pairs = [(v, n) for v, n in zip(row, sizes) if v is not None]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total


def a_last_pooled(R: Matrix, sizes: Sequence[int]) -> float:
    return pooled_accuracy(R[-1], sizes)


def a_avg_pooled(R: Matrix, sizes: Sequence[int]) -> float | None:
    if len(R) < 2:
        return None
    return sum(pooled_accuracy(R[i][: i + 1], sizes) for i in range(len(R))) / len(R)


def summarize(R: Matrix, sizes: Sequence[int] | None = None) -> dict[str, float | None]:
    """The metrics of ``R``; with the experiences' test ``sizes``, the pooled ones too."""
    out = {"A_last": a_last(R), "A_avg": a_avg(R), "forgetting": forgetting(R), "bwt": bwt(R)}
    if sizes is not None:
        out.update(pooled(R, sizes))
    return out


def pooled(R: Matrix, sizes: Sequence[int]) -> dict[str, float | None]:
    return {"A_last_pooled": a_last_pooled(R, sizes), "A_avg_pooled": a_avg_pooled(R, sizes)}
