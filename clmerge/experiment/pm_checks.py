"""Numerical checks of Perturb-and-Merge's two stages on a real run (chapter 2).

- :func:`closed_form_check`: after every merge of a P&M run (stored mode), the
  closed-form a_t against a brute-force line search of the Fisher-quadratic objective
  J(a) = sum_i 1/2 (prev + a Delta - theta*_i)^T F_i (prev + a Delta - theta*_i).
- :func:`line_check`: train experiences 0..k-1 with merging, then experience k without;
  along the line theta_hat_{k-1} + a Delta_k (LoRA branch scaled by a) record the
  current and old tasks' losses, the exact second directional derivative
  Delta^T H Delta of the current task's loss (double backward through a), and the
  finite-difference identity behind stage 1: for each e, the expected sampled loss
  E_s L(theta + s e Delta) against L(theta) + (p+ + p-)/2 * e^2 * Delta^T H Delta, and
  the finite-difference curvature [L(+e) + L(-e) - 2 L] / e^2. The model and data are
  converted to float64 after training, so loss differences at small e are exact to
  ~1e-16. With piecewise-linear activations (ReLU, ReLU6) the loss along Delta has
  kinks: the double backward is the curvature between kinks, so the two curvatures
  agree to O(e^2) only for e below the distance to the nearest kink
  (:func:`finite_difference_summary` says where they part).

Both return plain dicts (lists of floats), cached by ``clmerge.experiment.analyses``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from clmerge.experiment.config import ExperimentConfig
from clmerge.experiment.runner import Run
from clmerge.tensormath import tensordict as td
from clmerge.tensormath.pm_coefficient import pm_coefficient, quadratic_objective


def _golden(f, lo: float, hi: float, iters: int = 80) -> float:
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    for _ in range(iters):
        if f(c) < f(d):
            b = d
        else:
            a = c
        c, d = b - g * (b - a), a + g * (b - a)
    return (a + b) / 2


def closed_form_check(cfg: ExperimentConfig, grid: int = 401) -> dict:
    """Run ``cfg`` (a pm config; forced to stored mode, global a) and check every a_t."""
    cfg = replace(cfg, method_args={**cfg.method_args, "storage": "stored", "alpha": "global"})
    run = Run(cfg)
    run.execute()
    state = run.merger.state
    recorded = [r["coefficient"] for r in run.merger.records]
    prev = td.clone(run.theta0)
    rows, curves = [], {}
    a_grid = np.linspace(0.0, 1.0, grid)
    for t in range(len(state.finetuned)):
        thetas, fishers = state.finetuned[: t + 1], state.fishers[: t + 1]
        delta = td.sub(thetas[t], prev)
        a_cf = pm_coefficient(prev, thetas, fishers, delta, clip=True)

        def J(a):
            return float(quadratic_objective(a, prev, thetas, fishers, delta))
        values = np.array([J(a) for a in a_grid])
        i = int(values.argmin())
        a_bf = _golden(J, a_grid[max(i - 1, 0)], a_grid[min(i + 1, grid - 1)])
        rows.append({"task": t, "a_closed_form": float(a_cf), "a_brute_force": float(a_bf),
                     "abs_diff": float(abs(a_cf - a_bf)), "a_recorded": recorded[t]})
        keep = np.linspace(0, grid - 1, 101).astype(int)
        curves[str(t)] = {"a": a_grid[keep].tolist(), "J": (values[keep] - values.min()).tolist()}
        prev = td.axpy(prev, recorded[t], delta)
    return {"rows": rows, "curves": curves}


# perturbation sizes of the finite-difference check: the paper's 0.5 and its neighbours,
# and small ones that show the limit e -> 0 (in float64 the rounding error of the finite
# difference is about 4e-16 L / e^2: below 1e-9 for e >= 1e-3 and losses of order 1)
EPS_LIST = (1e-3, 3e-3, 0.01, 0.03, 0.1, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def _task_loss(run, j: int, batches) -> float:
    run.model.set_active_heads([j])
    total, n = 0.0, 0
    for x, y in batches:
        total += float(torch.nn.functional.cross_entropy(run.model(x), y, reduction="sum"))
        n += len(y)
    return total / n


def _directional_curvature(run, batches) -> tuple[float, float]:
    """(L, d^2/da^2 L) at a = 1 along the LoRA branch scale, by double backward."""
    lora = run.lora
    alpha = torch.ones((), dtype=torch.float64, requires_grad=True)
    lora.set_scale_factor(alpha)
    loss, n = 0.0, 0
    for x, y in batches:
        loss = loss + torch.nn.functional.cross_entropy(run.model(x), y, reduction="sum")
        n += len(y)
    loss = loss / n
    (g,) = torch.autograd.grad(loss, alpha, create_graph=True)
    (h,) = torch.autograd.grad(g, alpha)
    lora.set_scale_factor(1.0)
    return float(loss.detach()), float(h)


def line_check(cfg: ExperimentConfig, experience: int = 1, n_samples: int = 512,
               alphas=None, eps_list=EPS_LIST) -> dict:
    """Losses along theta_hat_{k-1} + a Delta_k after training experience k = ``experience``."""
    if cfg.finetune != "lora":
        raise ValueError("line_check scales the LoRA branch; it needs finetune=lora")
    alphas = list(np.linspace(0.0, 1.5, 31) if alphas is None else alphas)
    run = Run(cfg)
    merge = run.merge
    strategy = run.make_strategy([*run.method_plugins, merge])
    for t, exp in enumerate(run.stream.train_stream[: experience + 1]):
        if t == experience:
            strategy.plugins.remove(merge)
        strategy.train_heads = [t]
        strategy.train(exp)
    run.model.eval()
    run.model.double()     # every loss, difference and derivative below in float64
    # attention in its plain (math) kernel for every loss below: the fused CPU kernels
    # have no second derivative, and the line, the finite differences and the double
    # backward must all come from the same arithmetic
    with sdpa_kernel([SDPBackend.MATH]):
        return _line_in_float64(run, cfg, experience, n_samples, alphas, eps_list)


def _line_in_float64(run, cfg: ExperimentConfig, experience: int, n_samples: int, alphas,
                     eps_list) -> dict:
    """:func:`line_check`'s measurements on the trained model (already in float64)."""

    def data(j):
        out, n = [], 0
        for x, y in run.train_batches(run.stream.train_stream[j]):
            out.append((x[: n_samples - n].double(), y[: n_samples - n]))
            n += len(out[-1][1])
            if n >= n_samples:
                break
        return out

    current = data(experience)
    old = [data(j) for j in range(experience)]
    line = {"a": alphas, "current": [], "old": []}
    for a in alphas:
        run.lora.set_scale_factor(float(a))
        line["current"].append(_task_loss(run, experience, current))
        line["old"].append(float(np.mean([_task_loss(run, j, old[j]) for j in range(experience)])))
    run.lora.set_scale_factor(1.0)
    run.model.set_active_heads([experience])
    loss0, curvature = _directional_curvature(run, current)
    o = cfg.method_args
    p_plus, p_minus = o.get("p_plus", 1 / 3), o.get("p_minus", 1 / 3)
    p0 = 1 - p_plus - p_minus
    fd = []
    for e in eps_list:
        losses = {}
        for s in (-1, 1):
            run.lora.set_scale_factor(1.0 + s * e)
            losses[s] = _task_loss(run, experience, current)
        run.lora.set_scale_factor(1.0)
        expected = p0 * loss0 + p_plus * losses[1] + p_minus * losses[-1]
        second_order = loss0 + 0.5 * (p_plus + p_minus) * e ** 2 * curvature
        fd.append({"eps": e, "L(theta)": loss0, "L(theta+e Delta)": losses[1],
                   "L(theta-e Delta)": losses[-1], "expected sampled loss": expected,
                   "L + (p+ + p-)/2 e^2 Delta'H Delta": second_order,
                   "finite-difference Delta'H Delta": (losses[1] + losses[-1] - 2 * loss0) / e ** 2})
    return {"line": line, "curvature": curvature, "loss": loss0, "finite_difference": fd,
            "experience": experience}


def finite_difference_summary(line: dict, rel: float = 0.01) -> str:
    """One sentence: the largest e up to which the finite-difference curvature is within
    ``rel`` of the double-backward value, and their relative gap at each larger e."""
    exact = line["curvature"]
    rows = sorted(line["finite_difference"], key=lambda r: r["eps"])
    gaps = [(r["eps"], (r["finite-difference Delta'H Delta"] - exact) / abs(exact)
             if exact else math.inf) for r in rows]
    agree = [e for e, g in gaps if abs(g) <= rel]
    first_off = next((e for e, g in gaps if abs(g) > rel), None)
    if first_off is None:
        return (f"The finite difference is within {rel:.0%} of the double-backward curvature "
                f"at every e tested (up to {gaps[-1][0]:g}): the loss is smooth along Delta "
                f"at this scale.")
    below = [e for e in agree if e < first_off]
    head = (f"The finite difference is within {rel:.0%} of the double-backward curvature "
            f"for e <= {max(below):g}" if below else
            f"The finite difference is never within {rel:.0%} of the double-backward "
            f"curvature")
    tail = ", ".join(f"{g:+.0%} at e = {e:g}" for e, g in gaps if e >= first_off)
    return f"{head}; beyond, it differs by {tail}."
