"""The attention's pseudo-inverse written for a compiler: the same numbers as
:func:`~densflow.attention.iterative_pinv` up to the order of summation, in fewer kernels.

Each step of the iteration multiplies m×m matrices (m = 4 landmarks). Eagerly ``@`` is fastest;
under ``torch.compile`` every ``@`` stays a tiny batched matrix product of its own (864 such calls
per training step of the small model), whereas a product written as a broadcast and a sum is
element-wise work that inductor fuses with its neighbours into a few kernels.
:func:`fuse_pinv` replaces every :class:`~densflow.attention.IterativePinv` of a model by a
:class:`BroadcastPinv` (:func:`~densflow.performance.compile_model` does it), :func:`unfuse_pinv`
puts the plain ones back; neither holds parameters, so the state dict does not change.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention import IterativePinv
from .modules import replace_modules

__all__ = ["BroadcastPinv", "broadcast_matmul", "broadcast_pinv", "fuse_pinv", "unfuse_pinv"]


def broadcast_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` written as a broadcast product and a sum (the same numbers up to the order of
    summation)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(dim=-2)


def broadcast_pinv(k2: Tensor, iterations: int) -> Tensor:
    """:func:`~densflow.attention.iterative_pinv` with its m×m products as
    :func:`broadcast_matmul`: the same start and the same iteration."""
    eye = torch.eye(k2.shape[-1], dtype=k2.dtype, device=k2.device)
    abs_k2 = k2.abs()
    scale = abs_k2.sum(dim=-2).amax(dim=-1) * abs_k2.sum(dim=-1).amax(dim=-1)  # (B,)
    v = k2.transpose(-1, -2) / scale[..., None, None]
    mm = broadcast_matmul
    for _ in range(iterations):
        p = mm(k2, v)
        v = 0.25 * mm(v, 13 * eye - mm(p, 15 * eye - mm(p, 7 * eye - p)))
    return v


class BroadcastPinv(nn.Module):
    """:class:`~densflow.attention.IterativePinv` computed by :func:`broadcast_pinv`."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations

    def forward(self, k2: Tensor) -> Tensor:
        return broadcast_pinv(k2, self.iterations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


def fuse_pinv(model: nn.Module) -> int:
    """Replace every :class:`~densflow.attention.IterativePinv` of ``model`` by a
    :class:`BroadcastPinv` with the same iterations; returns how many."""
    return replace_modules(model, IterativePinv, lambda plain: BroadcastPinv(plain.iterations))


def unfuse_pinv(model: nn.Module) -> int:
    """Undo :func:`fuse_pinv`; returns how many modules it put back."""
    return replace_modules(model, BroadcastPinv, lambda fused: IterativePinv(fused.iterations))
