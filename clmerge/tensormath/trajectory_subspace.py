"""Pure tensor math of Trajectory Regularized Merging (TRM, arXiv 2605.08311).

The merge after task t is an optimisation over a few coefficients c in a subspace
spanned by directions D_1..D_J (tensor dicts keyed like the mergeable weights)::

    theta(c)[m] = base[m] + sum_j c[j, m] * D_j[m]     (per-module coefficients)
    theta(c)[m] = base[m] + sum_j c[j]    * D_j[m]     (global coefficients)

and three objectives on the model evaluated at theta(c):

    L_TA = CE(current-task logits, y)                                   task alignment
    L_PC = tau^2 * KL( softmax(z_old_teacher / tau) || softmax(z_old / tau) )
                                                          prediction consistency
    L_GR = max(0, g0 - || d L_task(theta(c)) / d theta ||)              gradient responsiveness

L_GR is differentiated through the inner gradient (``create_graph=True``), so the
coefficients receive a second-order signal. Nothing here imports Avalanche or peft.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from clmerge.tensormath.tensordict import TensorDict


class CoefficientSubspace:
    """theta(c) = base + sum_j c_j * D_j, with one coefficient per direction and per
    weight (``per_module=True``) or one per direction."""

    def __init__(self, base: TensorDict, directions: Sequence[TensorDict], per_module: bool = True):
        if not directions:
            raise ValueError("the subspace needs at least one direction")
        self.base = base
        self.directions = list(directions)
        self.keys = list(base)
        self.per_module = per_module
        for j, d in enumerate(self.directions):
            if set(d) != set(self.keys):
                raise ValueError(f"direction {j} has keys {sorted(d)[:3]}..., not the weights'")

    @property
    def shape(self) -> tuple[int, ...]:
        J = len(self.directions)
        return (J, len(self.keys)) if self.per_module else (J,)

    def initial(self, values: Sequence[float], dtype=torch.float32) -> torch.Tensor:
        """Coefficients with value ``values[j]`` for direction j (on every weight)."""
        if len(values) != len(self.directions):
            raise ValueError(f"{len(values)} initial values for {len(self.directions)} directions")
        c = torch.tensor(list(values), dtype=dtype)
        return c[:, None].repeat(1, len(self.keys)) if self.per_module else c

    def combine(self, c: torch.Tensor) -> TensorDict:
        """theta(c); differentiable in ``c``."""
        if tuple(c.shape) != self.shape:
            raise ValueError(f"coefficients of shape {tuple(c.shape)}, expected {self.shape}")
        out = {}
        for m, k in enumerate(self.keys):
            v = self.base[k]
            for j, d in enumerate(self.directions):
                coef = c[j, m] if self.per_module else c[j]
                v = v + coef.to(d[k].dtype) * d[k]
            out[k] = v
        return out


def random_direction(reference: TensorDict, generator: torch.Generator) -> TensorDict:
    """A Gaussian direction whose norm on every weight equals ``reference``'s there."""
    out = {}
    for k, r in reference.items():
        g = torch.randn(r.shape, generator=generator, dtype=torch.float32).to(r)
        n = g.norm()
        out[k] = g * (r.norm() / n) if n > 0 else g
    return out


def prediction_consistency(student: torch.Tensor, teacher: torch.Tensor,
                           tau: float = 2.0) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), batch mean."""
    log_p_student = F.log_softmax(student / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher / tau, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * tau * tau


def gradient_norm(loss: torch.Tensor, params: Sequence[torch.Tensor],
                  create_graph: bool = True) -> torch.Tensor:
    """|| d loss / d params || (over all params together), differentiable when
    ``create_graph``."""
    grads = torch.autograd.grad(loss, list(params), create_graph=create_graph)
    return torch.sqrt(sum(g.pow(2).sum() for g in grads))


def gradient_hinge(loss: torch.Tensor, params: Sequence[torch.Tensor], g0: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(0, g0 - ||grad||), ||grad||) with the graph kept for a second derivative."""
    norm = gradient_norm(loss, params, create_graph=True)
    return torch.relu(norm.new_tensor(g0) - norm), norm
