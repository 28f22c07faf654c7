"""Variational dequantization (Ho et al., 2019, "Flow++", Sec. 3.1 there), DenseFlow's input layer.

A density model of continuous values assigns no probability mass to the integers of an 8-bit
image. Dequantization adds noise ``u ∈ [0, 1)^D`` and models ``v = (x + u)/256``. For any noise
distribution ``q(u | x)``, Jensen's inequality gives a lower bound on the discrete log-likelihood:

.. math:: \\ln P(x) \\ge \\mathbb E_{u \\sim q(\\cdot\\mid x)}
   \\left[\\ln p(v) - D\\ln 256 - \\ln q(u \\mid x)\\right],

where :math:`-D\\ln 256` is the log-det of ``(x + u) ↦ (x + u)/256``. With uniform noise
(``ln q = 0``) this is the classic bound; a *learned* ``q`` makes it tighter. Here ``q`` is a
conditional flow: a Gaussian ``ε`` at half resolution (12 channels) is pushed through
``S`` steps of (1×1 conv, affine coupling conditioned on a context computed from ``x``), a final
1×1 conv, an un-squeeze to the image layout and a sigmoid, so that ``u ∈ (0, 1)``:

.. math:: \\ln q(u\\mid x) = \\ln \\mathcal N(\\epsilon; \\mu, \\sigma) - \\sum_k \\ln|\\det J_k|.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import NO_NOISE, FlowStep, Shape, ldj_dtype, standard_normal_log_prob, unsqueeze
from .config import PAPER
from .coupling import AffineCoupling, zero_conv1x1
from .dense_block import DenseBlock
from .glow import InvertibleConv1x1

__all__ = ["VariationalDequantization", "DequantizationContext", "LOG_256"]

LOG_256 = math.log(256.0)


class DequantizationContext(nn.Module):
    """Context features of ``x`` at half resolution for the conditional couplings.

    ``2x/255 − 1`` → dense block (3 → mid) → 2×2 stride-2 conv → dense block (mid → context).
    """

    def __init__(self, mid_channels: int, context_channels: int, depth: int, growth: int) -> None:
        super().__init__()
        self.dense_in = DenseBlock(3, mid_channels, depth, growth)
        self.down = nn.Conv2d(mid_channels, mid_channels, kernel_size=2, stride=2)
        self.dense_out = DenseBlock(mid_channels, context_channels, depth, growth)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense_out(self.down(self.dense_in(2.0 * x / 255.0 - 1.0)))


class VariationalDequantization(FlowStep):
    """``q(u | x)`` as a conditional flow, and the dequantization bound term.

    As the first step of the flow: its term is ``−D ln 256 − ln q(u | x)``, its draw the base
    noise ``ε``, and its inverse the quantization ``floor(256·v)``.

    Arguments:
        num_steps: S, the number of (1×1 conv, conditional coupling) steps (official: 4).
        context_channels: width of the context (official: 64).
        mid_channels: width of the coupling networks and of the context net (official: 64).
        depth, growth: the residual dense block of each coupling network (official: 4, 64).
        context_depth, context_growth: the context net's dense blocks (official: 4, 16).
    """

    channels = 12  # 3 image channels squeezed to half resolution

    def __init__(
        self,
        num_steps: int = PAPER.deq_num_steps,
        context_channels: int = PAPER.deq_context_channels,
        mid_channels: int = PAPER.deq_mid_channels,
        depth: int = PAPER.deq_depth,
        growth: int = PAPER.deq_growth,
        context_depth: int = PAPER.deq_context_depth,
        context_growth: int = PAPER.deq_context_growth,
    ) -> None:
        super().__init__()
        c, half = self.channels, self.channels // 2
        self.context = DequantizationContext(
            mid_channels, context_channels, context_depth, context_growth
        )
        self.base_loc = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.base_log_scale = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.convs = nn.ModuleList(InvertibleConv1x1(c) for _ in range(num_steps + 1))
        self.couplings = nn.ModuleList(
            AffineCoupling(
                c,
                nn.Sequential(
                    nn.Conv2d(half + context_channels, mid_channels, kernel_size=1),
                    DenseBlock(mid_channels, mid_channels, depth, growth, residual=True),
                    zero_conv1x1(mid_channels, c),
                ),
            )
            for _ in range(num_steps)
        )

    def flow(self, eps: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """Push base noise ``ε (B, 12, H/2, W/2)`` to ``u (B, 3, H, W)``;
        return ``(u, Σ ln|det J|)``.

        Includes the base affine map ``e = μ + σ ε``, so the returned log-det is that of ``ε ↦ u``.
        """
        h = self.base_loc + torch.exp(self.base_log_scale) * eps
        hw = eps.shape[2] * eps.shape[3]
        ldj = (hw * self.base_log_scale.to(ldj_dtype(eps)).sum()).expand(eps.shape[0])
        for conv, coupling in zip(
            self.convs, self.couplings, strict=False
        ):  # S+1 convs, S couplings
            h, conv_ldj = conv(h)
            h, coupling_ldj = coupling(h, context)
            ldj = ldj + conv_ldj + coupling_ldj
        h, conv_ldj = self.convs[-1](h)
        a = unsqueeze(h)
        a32 = a.to(ldj_dtype(a))
        sigmoid_ldj = (-F.softplus(-a32) - F.softplus(a32)).flatten(1).sum(dim=1)
        return torch.sigmoid(a), ldj + conv_ldj + sigmoid_ldj

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Dequantize integer-valued ``x`` (float tensor, values 0..255) with the base noise
        ``ε = noise[""]`` (``(B, 12, H/2, W/2)``).

        Returns ``(v, {"": term})`` with ``v = (x + u)/256`` and ``term = −D ln 256 − ln q(u | x)``
        per example: what dequantization adds to the log-likelihood bound.
        """
        eps = noise[""]
        u, flow_ldj = self.flow(eps, self.context(x))
        # ln q(u|x) = ln N(ε; 0, I) − ln|det ∂u/∂ε|  (the base's own scale is inside flow_ldj)
        log_q = standard_normal_log_prob(eps) - flow_ldj
        return (x + u) / 256.0, {"": -x[0].numel() * LOG_256 - log_q}

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        return self.quantize(z)

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        if sampling:
            return {}
        b, _, h, w = shape
        return {"": (b, self.channels, h // 2, w // 2)}  # ε lives at the squeezed resolution

    @staticmethod
    def quantize(v: Tensor) -> Tensor:
        """Inverse map to 8-bit images: ``floor(256·v)`` clamped to ``[0, 255]``, as uint8."""
        return torch.floor(256.0 * v).clamp(0, 255).to(torch.uint8)
