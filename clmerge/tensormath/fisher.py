"""Diagonal empirical Fisher of a classifier with respect to a subset of its parameters.

Definition (the empirical Fisher used by P&M, arXiv 2505.22389, and by EWC/CoFiMA)::

    F = 1/N sum_{n=1..N} (d log p(y_n | x_n; theta) / d theta)^2      (elementwise)

with y_n the *true* labels of the training samples (empirical, not the model's own
samples) and p = softmax(logits). Only the parameters named in ``param_names`` are
differentiated; every other parameter and buffer is held fixed at its current value.

Two modes:

- ``"per_sample"`` (default, the textbook definition above): per-sample gradients with
  ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``), one forward/backward
  per batch. Memory is batch size x |selected params|; ``chunk_size`` bounds it.
- ``"per_batch"`` (cheap approximation): one gradient of the batch-mean log-likelihood
  g_b = d (1/B_b sum_{n in b} log p_n) / d theta per batch, and::

      F ~= sum_b B_b * (B_b * g_b^2) / sum_b B_b

  Scaling: for B i.i.d. per-sample gradients, E[(B g_b)^2 / B] = E[g^2] + (B-1) (E g)^2,
  so B_b * g_b^2 estimates the per-sample Fisher without bias where the mean
  gradient vanishes (at a fine-tuned optimum theta*_i, where P&M takes F_i), and
  equals it exactly for B = 1. Each batch's estimate is weighted by its number of
  samples (so a short last batch counts less); with equal batch sizes this is the
  plain mean over batches of B * g_b^2. Away from an optimum it overestimates F by
  (B-1) (E g)^2.

Choices / deviations:

- The model is switched to eval mode for the computation (BatchNorm uses running
  statistics, dropout is off) and every submodule's own training flag is restored
  afterwards; no parameter, buffer or ``.grad`` of the model is modified.
- Logits may contain -inf (masked classes); log_softmax keeps the true class finite as
  long as its logit is finite. A non-finite log-likelihood or gradient raises
  ``ValueError``.
- Half-precision logits are promoted to float32 before log_softmax; sums are
  accumulated in float64 and returned as float32 tensors (on the parameters' device).
- Autocast is switched off for the parameters' device while the Fisher is computed, so
  a caller's mixed-precision region (bf16 training forwards) never reaches it: forwards
  and gradients are float32. (On CUDA with TF32 enabled, as the training template does,
  float32 matmuls use TF32 tensor cores: 10-bit mantissa products, float32 accumulation.)
- ``max_samples`` truncates the last batch needed and stops before pulling the next.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .tensordict import TensorDict

__all__ = ["diagonal_fisher"]

LogitsFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _default_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


class _Call(nn.Module):
    """Wrapper so that functional_call can run an arbitrary ``logits_fn(model, x)``."""

    def __init__(self, model: nn.Module, logits_fn: LogitsFn) -> None:
        super().__init__()
        self.model = model
        self.logits_fn = logits_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_fn(self.model, x)


def _log_likelihood(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of log softmax(logits)[y]."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, y.reshape(-1, 1).long()).sum()


def _autocast_off(device: torch.device):
    """Autocast disabled for ``device``'s type: the Fisher is taken in float32."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def diagonal_fisher(model: nn.Module, param_names: Sequence[str],
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    logits_fn: LogitsFn | None = None, mode: str = "per_sample",
                    max_samples: int | None = None,
                    chunk_size: int | None = None) -> TensorDict:
    """Diagonal empirical Fisher of ``model`` w.r.t. the parameters ``param_names``.

    Args:
        model: the classifier; left unchanged (parameters, buffers, grads, modes).
        param_names: names from ``model.named_parameters()`` to differentiate.
        batches: iterable of ``(x, y)``; ``y`` are class indices into the logits.
        logits_fn: ``logits_fn(model, x) -> (B, C)`` logits (default ``model(x)``),
            e.g. to pick a task head or mask classes with -inf.
        mode: ``"per_sample"`` (mean of squared per-sample gradients, default) or
            ``"per_batch"`` (batch-size-scaled squared batch-mean gradients; see the
            module docstring for the scaling).
        max_samples: stop after this many samples in total (None: all batches).
        chunk_size: per_sample only; ``vmap`` chunk size, bounds memory to
            chunk_size x |selected params| (None: the whole batch at once).

    Returns:
        ``{name: float32 tensor}`` for every name in ``param_names``, detached.
    """
    if mode not in ("per_sample", "per_batch"):
        raise ValueError(f"mode must be 'per_sample' or 'per_batch', got {mode!r}")
    if max_samples is not None and max_samples <= 0:
        raise ValueError("max_samples must be positive")
    names = list(param_names)
    if len(set(names)) != len(names) or not names:
        raise ValueError("param_names must be non-empty and without duplicates")
    all_params = dict(model.named_parameters())
    missing = [n for n in names if n not in all_params]
    if missing:
        raise KeyError(f"not parameters of the model: {missing}")
    logits_fn = logits_fn or _default_logits

    wrapper = _Call(model, logits_fn)
    selected = {n: all_params[n].detach() for n in names}
    fixed = {f"model.{n}": p.detach() for n, p in all_params.items() if n not in selected}
    fixed.update({f"model.{n}": b for n, b in model.named_buffers()})
    device = next(iter(selected.values())).device

    def loglik(params: TensorDict, x: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = {f"model.{n}": p for n, p in params.items()}
        state.update(fixed)
        ll = _log_likelihood(functional_call(wrapper, state, (x,)), y)
        return ll, ll.detach()

    grad_fn = grad(loglik, has_aux=True)

    def per_sample_grads(x: torch.Tensor, y: torch.Tensor):
        def one(xi: torch.Tensor, yi: torch.Tensor):
            return grad_fn(selected, xi.unsqueeze(0), yi.unsqueeze(0))
        return vmap(one, chunk_size=chunk_size)(x, y)

    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in selected.items()}
    seen = 0
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with _autocast_off(device):
            for x, y in batches:
                if max_samples is not None and seen + len(x) > max_samples:
                    x, y = x[: max_samples - seen], y[: max_samples - seen]
                x, y = x.to(device), y.to(device)
                b = len(x)
                if b == 0:
                    continue
                if mode == "per_sample":
                    grads, ll = per_sample_grads(x, y)
                    for n, g in grads.items():
                        acc[n] += g.detach().double().pow(2).sum(0)
                else:
                    grads, ll = grad_fn(selected, x, y)    # gradient of the batch sum
                    for n, g in grads.items():
                        # batch mean g/b, squared, times b (estimate), times b (weight)
                        acc[n] += g.detach().double().pow(2)
                if not bool(torch.isfinite(ll).all()):
                    raise ValueError("non-finite log-likelihood: a true class has a "
                                     "-inf/nan logit")
                seen += b
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        for m, was_training in modes:
            m.training = was_training
    if seen == 0:
        raise ValueError("no samples given")
    out = {}
    for n in names:
        f = acc[n] / seen
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"non-finite Fisher for {n}")
        out[n] = f.to(torch.float32)
    return out
