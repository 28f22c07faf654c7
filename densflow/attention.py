"""Nyström self-attention (Xiong et al., 2021), the second branch of DenseFlow's coupling network.

Exact softmax attention over ``n = H·W`` tokens costs ``O(n²)``. Nyström attention picks ``m``
landmarks (means of ``m`` consecutive groups of tokens) and approximates the attention matrix by

.. math:: \\mathrm{softmax}(Q K^\\top) \\approx
   \\underbrace{\\mathrm{softmax}(Q \\tilde K^\\top)}_{K_1\\,(n\\times m)}\\;
   \\underbrace{\\mathrm{softmax}(\\tilde Q \\tilde K^\\top)^{+}}_{K_2^{+}\\,(m\\times m)}\\;
   \\underbrace{\\mathrm{softmax}(\\tilde Q K^\\top)}_{K_3\\,(m\\times n)},

where :math:`K_2^{+}` is the Moore–Penrose pseudo-inverse, computed by an iterative scheme
(Razavi et al., 2014) so that only matrix products are needed.

DenseFlow's variant, which a faithful re-implementation must follow to load official weights:

* tokens are taken by a *memory-order reshape* of the ``(B, 3E, H, W)`` projection to
  ``(B, H·W, 3E)`` (not a transpose), and the output is reshaped back the same way;
* only the landmarks are scaled, by ``1/sqrt(H·W)``;
* every softmax normalises over dimension −2;
* the value tokens are added back (residual ``+ v``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import full_precision, ldj_dtype
from .config import PAPER
from .utils.errors import InputError

__all__ = ["NystromAttention", "IterativePinv", "iterative_pinv"]


def iterative_pinv(k2: Tensor, iterations: int = PAPER.pinv_iterations) -> Tensor:
    """Approximate Moore–Penrose pseudo-inverse of a batch of square matrices ``(B, m, m)``.

    Start from :math:`V_0 = K^\\top / (\\max_j \\sum_i |K_{ij}| \\cdot \\max_i \\sum_j |K_{ij}|)`
    and iterate :math:`V \\leftarrow \\tfrac14 V (13 I - P(15 I - P(7 I - P)))` with
    :math:`P = K V`. The maxima are taken per matrix, so every example of a batch is independent
    of the others (this reproduces the official fixtures exactly; batch-wide maxima do not).
    """
    eye = torch.eye(k2.shape[-1], dtype=k2.dtype, device=k2.device)
    abs_k2 = k2.abs()
    scale = abs_k2.sum(dim=-2).amax(dim=-1) * abs_k2.sum(dim=-1).amax(dim=-1)  # (B,)
    v = k2.transpose(-1, -2) / scale[..., None, None]
    for _ in range(iterations):
        p = k2 @ v
        v = 0.25 * (v @ (13 * eye - p @ (15 * eye - p @ (7 * eye - p))))
    return v


class IterativePinv(nn.Module):
    """:func:`iterative_pinv` with ``iterations`` as a module: the attention's :math:`K_2^{+}`
    step, which holds no parameters (a speed transform may replace it by another module with the
    same numbers, :mod:`densflow.performance.attention`)."""

    def __init__(self, iterations: int = PAPER.pinv_iterations) -> None:
        super().__init__()
        self.iterations = iterations

    def forward(self, k2: Tensor) -> Tensor:
        return iterative_pinv(k2, self.iterations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


class NystromAttention(nn.Module):
    """Single-head Nyström self-attention on a feature map.

    Arguments:
        in_channels: channels of the input and the output ``(B, in_channels, H, W)``.
        embed_dim: dimension E of queries, keys and values (``in_channels // 2`` in DenseFlow).
        num_landmarks: number of landmarks m; ``H·W`` must be divisible by it.
        pinv_iterations: iterations of :func:`iterative_pinv`.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        num_landmarks: int = PAPER.num_landmarks,
        pinv_iterations: int = PAPER.pinv_iterations,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_landmarks = embed_dim, num_landmarks
        self.qkv = nn.Conv2d(in_channels, 3 * embed_dim, kernel_size=1)
        self.pinv = IterativePinv(pinv_iterations)
        self.out = nn.Conv2d(embed_dim, in_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, H, W) → (B, in_channels, H, W)``: project, then attend."""
        return self.attend(self.qkv(x))

    def attend(self, qkv: Tensor) -> Tensor:
        """The attention of the projected tokens ``qkv = self.qkv(x)`` ``(B, 3E, H, W)``;
        returns ``(B, in_channels, H, W)``."""
        b, _, h, w = qkv.shape
        n, m, e = h * w, self.num_landmarks, self.embed_dim
        if n % m:
            raise InputError(f"Nyström attention needs H·W divisible by {m} landmarks, got {h}×{w}")
        q, k, v = qkv.reshape(b, n, 3 * e).split(e, dim=-1)  # memory order, not a transpose
        q_land = q.reshape(b, m, n // m, e).mean(dim=2) / math.sqrt(n)  # (B, m, E)
        k_land = k.reshape(b, m, n // m, e).mean(dim=2) / math.sqrt(n)
        k1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-2)  # (B, n, m)
        k2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-2)  # (B, m, m)
        k3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-2)  # (B, m, n)
        # The pseudo-inverse iteration amplifies rounding (a cubic polynomial, six times), so it
        # runs in float32 or wider even under bf16 autocast; on m×m matrices this costs nothing.
        with full_precision(k2):
            k2_pinv = self.pinv(k2.to(ldj_dtype(k2)))
        out = (k1 @ k2_pinv.to(k1.dtype)) @ (k3 @ v) + v  # (B, n, E)
        return self.out(out.reshape(b, e, h, w))  # memory-order back to a map
