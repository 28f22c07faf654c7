"""Affine coupling (Dinh et al., 2017) with DenseFlow's coupling network (Sec. 2.2, eq. 15, Fig. 2).

The input is split into ``x1`` (the first ⌈C/2⌉ channels) and ``x2`` (the rest). ``x1`` passes
unchanged and conditions an affine map of ``x2`` (eq. 15):

.. math:: z_2 = t(x_1) + \\exp(\\log s(x_1)) \\odot x_2, \\qquad \\log s = 2\\tanh(\\tfrac{r}{2}),

so the Jacobian is triangular and :math:`\\ln|\\det J| = \\sum \\log s`. Bounding ``log s`` to
(−2, 2) with the tanh keeps training stable. The network emits ``(r, t)`` *interleaved* by channel
(channel ``2k`` is the raw scale of output channel ``k``, ``2k+1`` its shift), as the official
checkpoints do.

The coupling network is the paper's fusion of a densely connected block and Nyström
self-attention (Fig. 2): a 1×1 projection of the input to ``mid`` channels ("a low-dimensional
manifold"), the two branches in parallel on it, their concatenation ``[attention, dense]`` mixed by
a BatchNorm–ReLU–1×1 conv unit, and a zero-initialised 1×1 output convolution, so that every
coupling starts as the identity. :func:`densflow.performance.compose_coupling_nets` runs the same
network with fewer convolutions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import NystromAttention
from .base import Bijection, full_precision, ldj_dtype
from .config import COUPLING_NETS, PAPER
from .dense_block import DenseBlock
from .utils.errors import InputError

__all__ = ["CouplingNet", "AffineCoupling", "affine_scale"]


def affine_scale(raw: Tensor) -> Tensor:
    """``log s = 2·tanh(raw/2)``, computed in float32 or wider."""
    return 2.0 * torch.tanh(raw.to(ldj_dtype(raw)) / 2.0)


def zero_conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1×1 convolution initialised to output zeros, so the layer it feeds starts as identity."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class CouplingNet(nn.Module):
    """DenseFlow's coupling network: dense block ∥ Nyström attention, fused (Fig. 2).

    .. code-block:: text

        x ─ in_conv ─ h ┬─ attention ─┐
                        └─ dense ─────┴─ concat ─ mix_norm ─ ReLU ─ mix_conv ─ out_conv ─ (r, t)

    Arguments:
        in_channels: channels of the conditioning half.
        out_channels: channels produced (``2·⌊C/2⌋``: interleaved raw scale and shift).
        mid_channels: width of both branches (48 in DenseFlow-74-10).
        dense_depth, dense_growth: the dense block (7 layers of 64 channels in the paper).
        num_landmarks, pinv_iterations: the Nyström attention (4 landmarks, 6 iterations).
        branches: ``"dense+attention"`` (the paper), or ``"dense"`` or ``"attention"`` alone
            (ablations: the mixing unit then reads the one branch's ``mid`` channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        dense_depth: int = PAPER.coupling_dense_depth,
        dense_growth: int = PAPER.coupling_dense_growth,
        num_landmarks: int = PAPER.num_landmarks,
        pinv_iterations: int = PAPER.pinv_iterations,
        branches: str = PAPER.coupling_net,
    ) -> None:
        super().__init__()
        if dense_depth < 1:
            raise InputError(f"CouplingNet needs dense_depth >= 1, got {dense_depth}")
        if branches not in COUPLING_NETS:
            raise InputError(f"branches must be one of {COUPLING_NETS}, got {branches!r}")
        self.in_conv = nn.Conv2d(in_channels, mid_channels, kernel_size=1)
        # Built in the paper's order, so that a seed initialises the default network as before.
        self.attention = (
            NystromAttention(mid_channels, mid_channels // 2, num_landmarks, pinv_iterations)
            if "attention" in branches
            else None
        )
        self.dense = (
            DenseBlock(mid_channels, mid_channels, dense_depth, dense_growth)
            if "dense" in branches
            else None
        )
        mixed = mid_channels * len(branches.split("+"))
        self.mix_norm = nn.BatchNorm2d(mixed)
        self.mix_conv = nn.Conv2d(mixed, mid_channels, kernel_size=1, bias=False)
        self.out_conv = zero_conv1x1(mid_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.in_conv(x)  # (B, mid, H, W)
        u = torch.cat([b(h) for b in (self.attention, self.dense) if b is not None], dim=1)
        return self.out_conv(self.mix_conv(torch.relu(self.mix_norm(u))))


class AffineCoupling(Bijection):
    """Affine coupling layer; ``net`` maps ``(B, ⌈C/2⌉, H, W)`` to ``(B, 2·⌊C/2⌋, H, W)``.

    ``context`` (optional, for the conditional couplings of the dequantization flow) is
    concatenated after ``x1`` as extra input of the network.
    """

    def __init__(self, channels: int, net: nn.Module) -> None:
        super().__init__()
        self.split = (channels + 1) // 2
        self.net = net

    def _params(self, x1: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.net(x1 if context is None else torch.cat([x1, context], dim=1))
        return affine_scale(h[:, 0::2]), h[:, 1::2].to(ldj_dtype(h))  # interleaved (r, t)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        log_s, t = self._params(x1, context)
        with full_precision(x):
            z2 = t + torch.exp(log_s) * x2
        ldj = log_s.flatten(1).sum(dim=1)
        return torch.cat([x1, z2.to(x.dtype)], dim=1), ldj

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        z1, z2 = z[:, : self.split], z[:, self.split :]
        log_s, t = self._params(z1, context)
        with full_precision(z):
            x2 = (z2 - t) * torch.exp(-log_s)
        return torch.cat([z1, x2.to(z.dtype)], dim=1)
