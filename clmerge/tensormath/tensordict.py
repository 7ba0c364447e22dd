"""Arithmetic on tensor dicts (``dict[str, Tensor]`` keyed by parameter name).

Task vectors, merged models and Fisher diagonals are all tensor dicts with the same
keys. Every function here returns new tensors and never mutates its inputs.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch

TensorDict = dict[str, torch.Tensor]


def _check_keys(*dicts: Mapping[str, torch.Tensor]) -> None:
    keys = set(dicts[0])
    for d in dicts[1:]:
        if set(d) != keys:
            missing = sorted(keys.symmetric_difference(d))
            raise KeyError(f"tensor dicts have different keys: {missing[:5]}")


def clone(a: Mapping[str, torch.Tensor]) -> TensorDict:
    """Detached copies of every tensor."""
    return {k: v.detach().clone() for k, v in a.items()}


def apply(fn: Callable[..., torch.Tensor], *dicts: Mapping[str, torch.Tensor]) -> TensorDict:
    """``{k: fn(d1[k], d2[k], ...)}`` over keys shared by all dicts (checked equal)."""
    _check_keys(*dicts)
    return {k: fn(*(d[k] for d in dicts)) for k in dicts[0]}


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> TensorDict:
    """a + b."""
    return apply(torch.add, a, b)


def sub(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> TensorDict:
    """a - b (the task vector of ``a`` with respect to ``b``)."""
    return apply(torch.sub, a, b)


def scale(a: Mapping[str, torch.Tensor], c: float | Mapping[str, float]) -> TensorDict:
    """c * a, with one scalar or one scalar per key."""
    if isinstance(c, Mapping):
        return {k: v * float(c[k]) for k, v in a.items()}
    return {k: v * float(c) for k, v in a.items()}


def axpy(y: Mapping[str, torch.Tensor], a: float | Mapping[str, float],
         x: Mapping[str, torch.Tensor]) -> TensorDict:
    """y + a * x, with one scalar or one scalar per key."""
    return add(y, scale(x, a))


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
        weight: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Sum over keys of <a_k, b_k> (optionally <a_k, w_k * b_k>), in float64."""
    _check_keys(a, b)
    total = torch.zeros((), dtype=torch.float64)
    for k in a:
        prod = a[k].double() * b[k].double()
        if weight is not None:
            prod = prod * weight[k].double()
        total = total + prod.sum()
    return total


def dot_per_key(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                weight: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """{k: <a_k, b_k>} (optionally weighted elementwise by ``weight``), in float64."""
    _check_keys(a, b)
    out = {}
    for k in a:
        prod = a[k].double() * b[k].double()
        if weight is not None:
            prod = prod * weight[k].double()
        out[k] = prod.sum()
    return out


def norm(a: Mapping[str, torch.Tensor]) -> float:
    """Euclidean norm of the concatenation of all tensors."""
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in a.values())))


def zeros_like(a: Mapping[str, torch.Tensor]) -> TensorDict:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def nbytes(dicts: Iterable[Mapping[str, torch.Tensor]] | Mapping[str, torch.Tensor]) -> int:
    """Bytes held by one tensor dict or an iterable of them."""
    if isinstance(dicts, Mapping):
        dicts = [dicts]
    return int(sum(v.numel() * v.element_size() for d in dicts for v in d.values()))


def lora_delta(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Dense weight update of one LoRA pair: ``scaling * B @ A``.

    A has shape (r, in) and B (out, r) for a Linear layer. For a 1x1 Conv2d, A is
    (r, in, 1, 1) and B (out, r, 1, 1); the result then has the conv weight's shape
    (out, in, 1, 1). LoRA task vectors are always these dense products: averaging A
    and B separately is not the same operation and is never done.
    """
    if A.dim() == 4:
        if A.shape[2:] != (1, 1) or B.shape[2:] != (1, 1):
            raise ValueError("lora_delta supports 1x1 convolutions only")
        return (scaling * (B.flatten(1) @ A.flatten(1)))[:, :, None, None]
    return scaling * (B @ A)
