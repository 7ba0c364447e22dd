"""Diagonal Fisher of a classifier with respect to a subset of its parameters.

Definition (the empirical Fisher used by P&M, arXiv 2505.22389, and by EWC/CoFiMA)::

    F = 1/N sum_{n=1..N} (d log p(y_n | x_n; theta) / d theta)^2      (elementwise)

with p = softmax(logits). Only the parameters named in ``param_names`` are
differentiated; every other parameter and buffer is held fixed at its current value.

Estimators (``estimator``), i.e. which labels y_n enter the definition:

- ``"empirical"``: y_n the *true* labels of the samples (the empirical Fisher of
  Martens, "New insights and perspectives on the natural gradient method", arXiv
  1412.1193, section 11; what P&M and EWC's released code use). At a well-fitted optimum
  the per-sample gradients, and with them F, vanish with the loss.
- ``"true"``: the expectation over labels drawn from the model's own predictive
  distribution, computed exactly over the classes: F = 1/N sum_n sum_k p(k|x_n)
  (d log p(k|x_n) / d theta)^2, the Fisher information of the model's conditional
  distribution (Martens, arXiv 1412.1193, sections 5 and 9; Kunstner, Hennig, Balles,
  "Limitations of the empirical Fisher approximation", arXiv 1905.12558). It is the
  Gauss-Newton matrix of the cross-entropy, does not depend on the labels, and at a
  confident sample scales like 1 - p(y|x) where the empirical one scales like
  (1 - p(y|x))^2: it does not vanish with the training loss. One forward pass and one
  backward pass per class with a finite logit (the weight sqrt(p(k|x_n)) is folded into
  the output gradient); ``per_sample`` mode and ``engine="hooks"`` only. Classes whose
  logit is -inf for every sample (masked) are skipped.

Modes:

- ``"per_sample"`` (default, the textbook definition above).
- ``"per_batch"`` (cheap approximation): one gradient of the batch-mean log-likelihood
  g_b = d (1/B_b sum_{n in b} log p_n) / d theta per batch, and::

      F ~= sum_b B_b * (B_b * g_b^2) / sum_b B_b

  Scaling: for B i.i.d. per-sample gradients, E[(B g_b)^2 / B] = E[g^2] + (B-1) (E g)^2,
  so B_b * g_b^2 estimates the per-sample Fisher without bias where the mean
  gradient vanishes (at a fine-tuned optimum theta*_i, where P&M takes F_i), and
  equals it exactly for B = 1. Each batch's estimate is weighted by its number of
  samples (so a short last batch counts less); with equal batch sizes this is the
  plain mean over batches of B * g_b^2. Away from an optimum it overestimates F by
  (B-1) (E g)^2. The batches' composition matters here: draw them mixed across classes
  (:func:`clmerge.mergers.fisher_context.stratified_order`).

Engines (``engine``):

- ``"hooks"``: one forward and one backward pass per batch. Forward hooks capture the
  input of every ``nn.Linear`` and every ``nn.Conv2d`` (groups = 1, zero padding) that
  owns a selected weight or bias, and the backward pass returns the gradient of the
  summed log-likelihood with respect to those modules' outputs. Since the output of
  sample n is its own, that gradient is per sample; the per-sample weight gradient is
  G_n = sum_p g_{n,p} x_{n,p}^T over the sample's tokens/positions p (summed *before*
  squaring), bias gradient sum_p g_{n,p}. A Linear sees inputs [N, ..., in]; a
  convolution's positions come from ``unfold`` (1x1 convolutions use the input
  directly). This is the per-sample-gradient technique of BackPACK (Dangel, Kunstner,
  Hennig, arXiv 1912.10985) and Opacus (Yousefpour et al., arXiv 2109.12298). Selected
  parameters owned by any other module type (normalisation layers, depthwise
  convolutions, ...) fall back to ``torch.func`` per-sample gradients (``vmap``), with
  the same labels.
  The log-likelihood is computed in float64 from the logits in the stable form
  log p(y|x) = -log(1 + sum_{k != y} exp(z_k - z_y)) (``log_likelihood``), whose
  gradient d log p / d z = onehot(y) - softmax(z) keeps its relative precision when
  1 - p(y|x) is far below the float32 (or float64) rounding of 1: a float32
  ``log_softmax`` returns a zero or wrong-signed gradient for a logit margin above about
  17, i.e. exactly for the confident samples that dominate a saturated Fisher. The
  gradient with respect to the logits is cast to the network's dtype and
  back-propagated through it; per-sample products and squares are accumulated in
  float64.
- ``"vmap"``: ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``) for every
  parameter, with a float32 ``log_softmax`` log-likelihood; kept unchanged so that
  results computed with it stay reproducible (CoFiMA's default). Empirical only.

Choices / deviations (both engines):

- The model is switched to eval mode for the computation (BatchNorm uses running
  statistics, dropout is off) and every submodule's own training flag is restored
  afterwards; no parameter value, buffer or ``.grad`` of the model is modified (the hooks
  engine sets ``requires_grad`` on the selected parameters for the duration of the call
  so that the graph is recorded, and restores it).
- Logits may contain -inf (masked classes); the true class must have a finite logit.
  A non-finite log-likelihood or gradient raises ``ValueError``.
- Sums are accumulated in float64 and returned as float32 tensors (on the parameters'
  device).
- Autocast is switched off for the parameters' device while the Fisher is computed, so
  a caller's mixed-precision region (bf16 training forwards) never reaches it: forwards
  and gradients are in the model's dtype. (On CUDA with TF32 enabled, as the training
  template does, float32 matmuls use TF32 tensor cores: 10-bit mantissa products,
  float32 accumulation.)
- ``max_samples`` truncates the last batch needed and stops before pulling the next.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as nnf

from .tensordict import TensorDict

__all__ = ["diagonal_fisher", "log_likelihood", "hookable", "ESTIMATORS", "ENGINES"]

LogitsFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

ESTIMATORS = ("empirical", "true")
ENGINES = ("hooks", "vmap")

# elements of one per-sample gradient block [chunk, out, in] formed at once by the hooks
# engine: small enough for a CPU's cache, large enough to keep a GPU busy
HOOK_BLOCK_ELEMENTS = {"cpu": 2**22, "cuda": 2**26}


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


def _log_likelihood_f32(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of log softmax(logits)[y] (float32; the ``vmap`` engine's)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, y.reshape(-1, 1).long()).sum()


def log_likelihood(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample log p(y | x) = -log(1 + sum_{k != y} exp(z_k - z_y)), in float64.

    Written as ``-logaddexp(0, logsumexp_{k != y}(z_k - z_y))``: value and gradient
    (onehot(y) - softmax(z), with 1 - p_y computed as sum_{k != y} p_k) keep their
    relative precision at any logit margin, where ``log_softmax`` rounds p_y to 1.
    Classes with a -inf logit contribute nothing; a non-finite true-class logit gives a
    non-finite result.
    """
    z = logits.to(torch.float64)
    y = y.reshape(-1, 1).long()
    zy = z.gather(-1, y)
    diff = z - zy
    drop = (torch.arange(z.shape[-1], device=z.device) == y) | torch.isneginf(z)
    # -1e4 instead of -inf keeps logsumexp's gradient finite when no other class is left;
    # exp(-1e4) is 0 in float64, so the value is that of the exact form
    others = diff.masked_fill(drop, -1e4)
    u = torch.logsumexp(others, dim=-1)
    return -torch.logaddexp(torch.zeros_like(u), u)


def _autocast_off(device: torch.device):
    """Autocast disabled for ``device``'s type: the Fisher is taken in the model's dtype."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def hookable(module: nn.Module) -> bool:
    """Whether the hooks engine forms per-sample gradients of ``module``'s own weight and
    bias: ``nn.Linear``, and ``nn.Conv2d`` with groups = 1 and zero (numeric) padding."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def _owners(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[nn.Module, str]]:
    """Selected parameter name -> (module that owns it, its local name)."""
    wanted, out = set(names), {}
    for mname, m in model.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if full in wanted and full not in out:
                out[full] = (m, pname)
    return out


class _Captures:
    """Forward hooks that keep the input of each watched module and hand downstream a
    copy of its output, so that the gradient with respect to the original output is the
    module's own even when a later operation works in place."""

    def __init__(self, modules: Iterable[nn.Module]):
        self.calls: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.active = True
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        if not self.active:      # e.g. the torch.func pass of the other parameters
            return None
        self.calls.setdefault(module, []).append((inputs[0].detach(), output))
        return output.clone()

    def clear(self) -> None:
        self.calls = {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _positions(module: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """(x, g) reshaped to [N, P, in_features] and [N, P, out] (P tokens / positions)."""
    n = x.shape[0]
    if isinstance(module, nn.Linear):
        return x.reshape(n, -1, x.shape[-1]), g.reshape(n, -1, g.shape[-1])
    # Conv2d, groups = 1: columns of the input that each output position sees
    gp = g.reshape(n, g.shape[1], -1).transpose(1, 2)                  # [N, L, out]
    if module.kernel_size == (1, 1) and tuple(module.padding) == (0, 0):
        sh, sw = module.stride
        cols = x[:, :, ::sh, ::sw].reshape(n, x.shape[1], -1)
    else:
        cols = nnf.unfold(x, module.kernel_size, module.dilation, module.padding,
                          module.stride)
    return cols.transpose(1, 2), gp                                   # [N, L, in*kh*kw]


def _accumulate_hooked(module: nn.Module, local: dict[str, str], calls, acc: dict,
                       per_sample: bool, scale: float) -> None:
    """Add sum_n G_n^2 (per sample) or (sum_n G_n)^2 (per batch) of the module's
    selected weight/bias to ``acc`` (float64), from its captured (input, output grad).

    The output gradients arrive multiplied by ``scale`` (a power of two that brings the
    batch's largest logit gradient to about 1): squares and their sums over a block of
    samples are then formed in the network's dtype without underflow, and the block's
    sum is divided by ``scale**2`` in float64.
    """
    pairs = [_positions(module, x, g) for x, g in calls]
    n = pairs[0][0].shape[0]
    inv = 1.0 / (scale * scale)
    if "weight" in local:
        w_name = local["weight"]
        shape = acc[w_name].shape
        if not per_sample:
            G = sum(g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1]) for x, g in pairs)
            acc[w_name] += G.reshape(shape).double().pow(2) * inv
        elif len(pairs) == 1 and pairs[0][0].shape[1] == 1:
            x, g = pairs[0]                                  # one token: G_n = g_n x_n^T
            acc[w_name] += (g[:, 0].pow(2).T @ x[:, 0].pow(2)).reshape(shape).double() * inv
        else:
            out_f, in_f = pairs[0][1].shape[-1], pairs[0][0].shape[-1]
            block = HOOK_BLOCK_ELEMENTS.get(pairs[0][0].device.type, HOOK_BLOCK_ELEMENTS["cpu"])
            chunk = max(1, block // (out_f * in_f))
            for i in range(0, n, chunk):
                G = sum(torch.bmm(g[i:i + chunk].transpose(1, 2), x[i:i + chunk])
                        for x, g in pairs)
                acc[w_name] += G.pow_(2).sum(0).reshape(shape).double() * inv
    if "bias" in local:
        b_name = local["bias"]
        gb = sum(g.sum(1) for _, g in pairs)                     # [N, out]
        acc[b_name] += (gb.sum(0).pow(2) if not per_sample else gb.pow(2).sum(0)).double() * inv


def _check_names(model: nn.Module, param_names: Sequence[str]):
    names = list(param_names)
    if len(set(names)) != len(names) or not names:
        raise ValueError("param_names must be non-empty and without duplicates")
    all_params = dict(model.named_parameters())
    missing = [n for n in names if n not in all_params]
    if missing:
        raise KeyError(f"not parameters of the model: {missing}")
    return names, all_params


def diagonal_fisher(model: nn.Module, param_names: Sequence[str],
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    logits_fn: LogitsFn | None = None, mode: str = "per_sample",
                    max_samples: int | None = None,
                    chunk_size: int | None = None, *, engine: str = "vmap",
                    estimator: str = "empirical") -> TensorDict:
    """Diagonal Fisher of ``model`` w.r.t. the parameters ``param_names``.

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
        chunk_size: ``vmap`` chunk size, bounds memory to chunk_size x |parameters
            differentiated by vmap| (None: the whole batch at once).
        engine: ``"hooks"`` (one forward/backward per batch, float64 log-likelihood) or
            ``"vmap"`` (torch.func for everything, float32 log-likelihood); see the
            module docstring.
        estimator: ``"empirical"`` (true labels) or ``"true"`` (expectation over the
            model's predictive distribution; hooks engine and per_sample mode only).

    Returns:
        ``{name: float32 tensor}`` for every name in ``param_names``, detached.

    Steps: check the options (:func:`_check_options`); split the parameters between
    the hooks and torch.func (:func:`_split_by_engine`); for each batch, capped at
    ``max_samples`` (:func:`_capped`), the hooks' pass (:func:`_hooked_pass`) and the
    torch.func pass (:class:`_VmapFisher`) add squared gradients to float64 sums, the
    model held in eval mode meanwhile (:func:`_fisher_state`); divide by the sample
    count (:func:`_mean_fisher`).
    """
    _check_options(mode, engine, estimator, max_samples)
    names, all_params = _check_names(model, param_names)
    selected = {n: all_params[n] for n in names}
    device = next(iter(selected.values())).device
    hooked, rest = _split_by_engine(model, names, engine)
    wrapper = _Call(model, logits_fn or _default_logits)
    per_sample = mode == "per_sample"
    vmapped = (_VmapFisher(model, wrapper, all_params, rest,
                           log_likelihood if engine == "hooks" else _log_likelihood_f32,
                           chunk_size, per_sample) if rest else None)
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in selected.items()}
    seen = 0
    captures = _Captures(hooked) if hooked else None
    in_hooks = [n for loc in hooked.values() for n in loc.values()]
    with _fisher_state(model, selected, in_hooks, captures), _autocast_off(device):
        for x, y in _capped(batches, max_samples, device):
            labels = [(y, None)]
            if hooked or estimator == "true":
                labels = _hooked_pass(wrapper, captures, hooked, x, y, estimator, acc,
                                      per_sample)
            if vmapped is not None:
                vmapped.add(x, labels, acc, captures)
            seen += len(x)
    return _mean_fisher(acc, seen, names)


def _check_options(mode: str, engine: str, estimator: str, max_samples: int | None) -> None:
    """Step 1 of :func:`diagonal_fisher`: refuse an unknown or unsupported option."""
    if mode not in ("per_sample", "per_batch"):
        raise ValueError(f"mode must be 'per_sample' or 'per_batch', got {mode!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if estimator != "empirical" and (engine != "hooks" or mode != "per_sample"):
        raise ValueError(f"estimator {estimator!r} needs engine='hooks' and mode='per_sample'")
    if max_samples is not None and max_samples <= 0:
        raise ValueError("max_samples must be positive")


def _split_by_engine(model: nn.Module, names: Sequence[str], engine: str
                     ) -> tuple[dict[nn.Module, dict[str, str]], list[str]]:
    """Step 2: (hooked, rest). ``hooked``: module -> {local name: full name} of the
    weights and biases of :func:`hookable` modules (hooks engine only); ``rest``: the
    other names, in order, for torch.func."""
    hooked: dict[nn.Module, dict[str, str]] = {}
    if engine == "hooks":
        for full, (m, local) in _owners(model, names).items():
            if hookable(m) and local in ("weight", "bias"):
                hooked.setdefault(m, {})[local] = full
    in_hooks = {n for loc in hooked.values() for n in loc.values()}
    return hooked, [n for n in names if n not in in_hooks]


def _capped(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_samples: int | None,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Step 3: the batches on ``device``, empty ones left out, the one that reaches
    ``max_samples`` cut to it; no batch is drawn from ``batches`` after that one."""
    seen = 0
    for x, y in batches:
        if max_samples is not None and seen + len(x) > max_samples:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        x, y = x.to(device), y.to(device)
        if len(x) == 0:
            continue
        yield x, y
        seen += len(x)
        if max_samples is not None and seen >= max_samples:
            return


class _VmapFisher:
    """Step 4 for the parameters the hooks cannot see (all of them under ``vmap``):
    squared gradients of the log-likelihood by torch.func, the other parameters and the
    buffers held fixed.

    ``per_sample``: per-sample gradients (vmapped over the batch, ``chunk_size`` at a
    time), each squared, optionally weighted, summed into the accumulator.
    Otherwise: the gradient of the batch sum, squared (batch mean g/b, squared, times b
    for the estimate, times b for the weight of the batch)."""

    def __init__(self, model: nn.Module, wrapper: nn.Module, all_params: dict,
                 names: Sequence[str], loglik, chunk_size: int | None, per_sample: bool):
        self.params = {n: all_params[n].detach() for n in names}
        fixed = {f"model.{n}": p.detach() for n, p in all_params.items()
                 if n not in self.params}
        fixed.update({f"model.{n}": b for n, b in model.named_buffers()})
        self.chunk_size, self.per_sample = chunk_size, per_sample

        def loglik_sum(params: TensorDict, x: torch.Tensor,
                       y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            state = {f"model.{n}": p for n, p in params.items()}
            state.update(fixed)
            ll = loglik(functional_call(wrapper, state, (x,)), y).sum()
            return ll, ll.detach()

        self.grad_fn = grad(loglik_sum, has_aux=True)

    def per_sample_grads(self, x: torch.Tensor, y: torch.Tensor):
        def one(xi: torch.Tensor, yi: torch.Tensor):
            return self.grad_fn(self.params, xi.unsqueeze(0), yi.unsqueeze(0))
        return vmap(one, chunk_size=self.chunk_size)(x, y)

    def add_labels(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                   acc: dict) -> torch.Tensor:
        """Add one label set's squared gradients to ``acc``; the log-likelihoods."""
        if self.per_sample:
            grads, ll = self.per_sample_grads(x, y)
            for n, g in grads.items():
                sq = g.detach().double().pow(2)
                if weight is not None:
                    sq = sq * weight.reshape(-1, *[1] * (sq.dim() - 1))
                acc[n] += sq.sum(0)
        else:
            grads, ll = self.grad_fn(self.params, x, y)    # gradient of the batch sum
            for n, g in grads.items():
                acc[n] += g.detach().double().pow(2)
        return ll

    def add(self, x: torch.Tensor, labels, acc: dict, captures) -> None:
        """Every label set ``[(labels, weight or None)]`` of a batch, with the hooks of
        ``captures`` (if any) silent meanwhile."""
        if captures is not None:
            captures.active = False
        for yk, weight in labels:
            ll = self.add_labels(x, yk, weight, acc)
            _check_ll(ll if weight is None else ll[weight > 0])
        if captures is not None:
            captures.active = True


@contextlib.contextmanager
def _fisher_state(model: nn.Module, selected: dict, in_hooks: Sequence[str], captures):
    """Step 5: the model in eval mode and the hooked parameters requiring a gradient for
    the body; afterwards every module's mode and every selected parameter's
    ``requires_grad`` are as before and the hooks are removed, whatever happened."""
    modes = [(m, m.training) for m in model.modules()]
    flags = {n: p.requires_grad for n, p in selected.items()}
    model.eval()
    try:
        for n in in_hooks:
            selected[n].requires_grad_(True)
        yield
    finally:
        if captures is not None:
            captures.remove()
        for n, flag in flags.items():
            selected[n].requires_grad_(flag)
        for m, was_training in modes:
            m.training = was_training


def _mean_fisher(acc: dict, seen: int, names: Sequence[str]) -> TensorDict:
    """Step 6: the sums over ``seen`` samples divided by ``seen``, checked finite, as
    float32, for ``names`` in order."""
    if seen == 0:
        raise ValueError("no samples given")
    out = {}
    for n in names:
        f = acc[n] / seen
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"non-finite Fisher for {n}")
        out[n] = f.to(torch.float32)
    return out


def _check_ll(ll: torch.Tensor) -> None:
    if not bool(torch.isfinite(ll).all()):
        raise ValueError("non-finite log-likelihood: a true class has a -inf/nan logit")


def _hooked_pass(wrapper, captures, hooked, x, y, estimator, acc, per_sample):
    """One forward pass and one backward pass per label set of the hooks engine.

    Returns the label sets used, ``[(labels, per-sample weight or None)]``: the true
    labels (empirical), or every class k with weight p(k|x) (true).
    """
    if captures is not None:
        captures.clear()
    grad_ctx = torch.enable_grad() if hooked else torch.no_grad()
    with grad_ctx:
        logits = wrapper(x)
    z = logits.detach().to(torch.float64)
    if estimator == "true":
        finite = torch.isfinite(z)
        if not bool((finite.all(0) | ~finite.any(0)).all()):
            raise ValueError("non-finite logits of a class for some samples only")
        p = torch.softmax(z, dim=-1)
        labels = [(torch.full_like(y, k), p[:, k]) for k in range(z.shape[-1])
                  if bool(finite[:, k].all())]
    else:
        labels = [(y, None)]
    if not hooked:
        return labels
    silent = [m for m in hooked if m not in captures.calls]
    if silent:   # a weight used without calling its module (nn.MultiheadAttention's out_proj)
        params = [getattr(m, loc) for m in silent for loc in hooked[m]]
        used = torch.autograd.grad(logits.sum(), params, allow_unused=True, retain_graph=True)
        names = [full for m in silent for full in hooked[m].values()]
        bad = [n for n, g in zip(names, used) if g is not None]
        if bad:
            raise ValueError(f"{bad[0]} reaches the logits without its module's forward being "
                             f"called; the hooks engine cannot see it (use engine='vmap')")
    outputs = [out for calls in captures.calls.values() for _, out in calls]
    for i, (yk, weight) in enumerate(labels):
        zk = z.detach().requires_grad_(True)
        with torch.enable_grad():
            ll = log_likelihood(zk, yk)
            (e,) = torch.autograd.grad(ll.sum(), zk)
        if weight is None:
            _check_ll(ll)
        else:
            e = e * weight.sqrt()[:, None]          # sum_n p_nk G_nk^2 = sum_n (sqrt(p_nk) G_nk)^2
        top = float(e.abs().max())
        scale = 2.0 ** -round(math.log2(top)) if top > 0 else 1.0
        grads = torch.autograd.grad(logits, outputs, grad_outputs=(e * scale).to(logits.dtype),
                                    allow_unused=True, retain_graph=i + 1 < len(labels))
        it = iter(grads)
        for module, calls in captures.calls.items():
            pairs = []
            for x_in, out in calls:
                g = next(it)
                pairs.append((x_in, torch.zeros_like(out) if g is None else g))
            _accumulate_hooked(module, hooked[module], pairs, acc, per_sample, scale)
    captures.clear()
    return labels
