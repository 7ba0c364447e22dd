"""Accuracy metrics for the two evaluation protocols, as Avalanche plugin metrics.

- ``Top1_Acc_Exp`` (Avalanche's own ``accuracy_metrics(experience=True)``):
  class-incremental accuracy, argmax over every seen class (the model returns -inf for
  unseen heads).
- ``Top1_TIL_Acc_Exp`` (:class:`TaskIncrementalAccuracy`): task-incremental accuracy,
  argmax restricted to the evaluated experience's own classes (task id given).
"""

from __future__ import annotations

import torch

from clmerge.avalanche_api import Accuracy, GenericPluginMetric

CIL_KEY = "Top1_Acc_Exp"
TIL_KEY = "Top1_TIL_Acc_Exp"


class TaskIncrementalAccuracy(GenericPluginMetric):
    def __init__(self):
        super().__init__(Accuracy(), reset_at="experience", emit_at="experience", mode="eval")

    def reset(self) -> None:
        self._metric.reset()

    def result(self) -> float:
        return self._metric.result()

    def update(self, strategy) -> None:
        logits = strategy.mb_output
        cols = torch.tensor(sorted(strategy.experience.classes_in_this_experience),
                            device=logits.device)
        masked = torch.full_like(logits, float("-inf"))
        masked[:, cols] = logits[:, cols]
        self._metric.update(masked, strategy.mb_y)

    def __str__(self):
        return TIL_KEY


def accuracy_row(metrics: dict, key: str, n: int) -> list[float]:
    """Per-experience accuracies 0..n-1 from ``strategy.eval``'s returned metrics."""
    row = []
    for j in range(n):
        name = f"{key}/eval_phase/test_stream/Exp{j:03d}"
        if name not in metrics:
            raise KeyError(f"metric {name} missing from the evaluator output: {sorted(metrics)[:6]}")
        row.append(float(metrics[name]))
    return row
