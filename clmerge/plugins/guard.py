"""The finite-state guard: a run whose numbers have diverged stops before anything of
that state is saved.

Checked, for every method that trains:

- each training step: the loss is finite and at most ``LOSS_BLOWUP`` times the larger of
  1 and the loss of the experience's first step (a cross-entropy that grows a
  thousandfold has diverged; a healthy one starts near ln(classes) and falls);
- after an experience's training: every trainable tensor (the model's parameters and,
  with LoRA, the fine-tuned weights theta*_t = W + (alpha / r) B A) is finite;
- after a merge: every merged tensor theta_hat_t is finite.

A failure raises :class:`DivergedError`, which names the experience and the stage. It is
raised inside training, before the run's evaluation, checkpoint and result of that
experience, so the only files left are the checkpoints of the experiences before it.
The checks only read tensors: a healthy run computes exactly what it computes without
them.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

LOSS_BLOWUP = 1e3


class DivergedError(FloatingPointError):
    """A run's loss or weights stopped being finite (or the loss exploded).

    ``experience`` and ``stage`` ("training" or "the merge") locate it; ``detail`` says
    what was seen. The message is one sentence.
    """

    def __init__(self, experience: int, stage: str, detail: str):
        self.experience, self.stage, self.detail = experience, stage, detail
        super().__init__(f"experience {experience} diverged during {stage}: {detail}")


def nonfinite(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
              ) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    bad = []
    with torch.no_grad():
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def check_tensors(tensors, experience: int, stage: str, what: str) -> None:
    """Raise :class:`DivergedError` when any of ``tensors`` is not finite."""
    bad = nonfinite(tensors)
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DivergedError(experience, stage, f"{what} {bad[0]!r}{more} hold NaN or "
                                               f"infinite values")


def check_loss(loss: float, first: float | None, experience: int, step: int) -> None:
    """Raise :class:`DivergedError` when ``loss`` (of ``step``) is not finite or exceeds
    ``LOSS_BLOWUP`` x max(1, ``first``), ``first`` being the experience's first loss."""
    if not math.isfinite(loss):
        raise DivergedError(experience, "training", f"the loss became {loss} at step {step}")
    if first is not None and loss > LOSS_BLOWUP * max(1.0, first):
        raise DivergedError(experience, "training",
                            f"the loss reached {loss:.3g} at step {step}, more than "
                            f"{LOSS_BLOWUP:g} times its first value {first:.3g}")
