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
coefficients receive a second-order signal.

The directions can be rescaled before the optimisation (:func:`rescale_directions`):
on every weight m, each direction gets the norm of a reference direction there
(``norm``), or the directions are first made orthogonal on every weight by Gram-Schmidt
in the order given, the reference first (``orthonormal``). With one coefficient per
direction and weight this only reparametrises the same subspace, but it makes a
coefficient of 1 mean "a step as long as the reference" on every direction, which is
what a bound on the coefficients and an optimiser's learning rate can be stated in.

Inputs for the consistency term that are not the current task's own inputs
(:func:`mix_inputs`, :func:`invert_inputs`) are built here from current inputs only.
Nothing here imports Avalanche or peft.
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


def rescale_directions(directions: Sequence[TensorDict], reference: int = 0,
                       mode: str = "norm", eps: float = 1e-12) -> list[TensorDict]:
    """Directions rescaled weight by weight to the norm of ``directions[reference]``.

    ``mode``: ``none`` (unchanged), ``norm`` (D_j[m] * |D_ref[m]| / |D_j[m]|), or
    ``orthonormal`` (Gram-Schmidt on every weight m over the flattened D_j[m], the
    reference first and unchanged, then the others in order; each residual rescaled to
    |D_ref[m]|; a residual below ``1e-6`` of its direction's norm, i.e. a direction
    already in the span of the earlier ones on that weight, becomes zero). A direction
    whose norm on a weight is at most ``eps`` is zero there, and stays zero. The reference direction is never changed,
    so a point expressed on it alone is the same point after rescaling.
    """
    if mode not in ("none", "norm", "orthonormal"):
        raise ValueError(f"mode must be one of none, norm, orthonormal; got {mode!r}")
    dirs = [dict(d) for d in directions]
    if mode == "none":
        return dirs
    order = [reference] + [j for j in range(len(dirs)) if j != reference]
    for k in directions[reference]:
        ref_norm = directions[reference][k].norm()
        basis: list[torch.Tensor] = []
        for j in order:
            v = directions[j][k]
            if j == reference:
                if mode == "orthonormal" and ref_norm > eps:
                    basis.append(v / ref_norm)
                continue
            n0 = v.norm()
            if mode == "orthonormal":
                flat = v.reshape(-1)
                for b in basis:
                    flat = flat - (flat @ b.reshape(-1)) * b.reshape(-1)
                v = flat.reshape(v.shape)
                n = v.norm()
                if n <= max(eps, 1e-6 * float(n0)):
                    dirs[j][k] = torch.zeros_like(v)
                    continue
                basis.append(v / n)
            else:
                n = n0
                if n <= eps:
                    dirs[j][k] = torch.zeros_like(v)
                    continue
            dirs[j][k] = v * (ref_norm / n)
    return dirs


def mix_inputs(x: torch.Tensor, generator: torch.Generator, noise: float = 0.1) -> torch.Tensor:
    """Pairwise mixtures of a batch with Gaussian noise:
    lam * x_i + (1 - lam) * x_perm(i) + noise * std(x) * N(0, 1), lam ~ U(0, 1) per sample."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)
    lam = torch.rand((n,) + (1,) * (x.dim() - 1), generator=generator).to(x)
    eps = torch.randn(x.shape, generator=generator).to(x)
    return lam * x + (1 - lam) * x[perm] + noise * x.std() * eps


def invert_inputs(x: torch.Tensor, logits_fn, targets: torch.Tensor, steps: int = 10,
                  step_size: float = 0.05) -> torch.Tensor:
    """Inputs moved towards ``targets`` under ``logits_fn`` (a fixed model): ``steps``
    signed-gradient steps x <- clip(x - step_size * std(x) * sign(dCE(logits_fn(x),
    targets)/dx)) within the range of ``x``. Starting from current-task inputs, this
    synthesises inputs that the fixed model assigns to other classes (no stored data)."""
    lo, hi, scale = x.min(), x.max(), float(x.std()) * step_size
    x = x.detach().clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(logits_fn(x), targets)
        (g,) = torch.autograd.grad(loss, x)
        x = (x.detach() - scale * g.sign()).clamp(lo, hi)
    return x.detach()
