"""Densely connected convolutional block (Huang et al., 2017), as used inside DenseFlow's
coupling networks (Fig. 2, Sec. 2.2) and in its dequantization flow.

A plain (not invertible) network. The *invertible* dense block of DenseFlow, a chain of flow units
joined by cross-unit couplings, is :class:`densflow.invertible_dense_block.InvertibleDenseBlock`.

Layer ``k`` sees the block input concatenated with the outputs of all earlier layers
(``c_k = c_in + k·growth`` channels) and appends ``growth`` new feature maps:

.. math:: h_k = \\mathrm{ReLU}(\\mathrm{conv}_{3\\times3}(
   \\mathrm{ReLU}(\\mathrm{conv}_{1\\times1}(x_k)))),
   \\qquad x_{k+1} = [x_k, h_k].

After the last layer a *gated* 1×1 convolution maps the ``c_in + depth·growth`` channels to
``3·c_out`` channels ``(a, b, c)`` and returns :math:`a + b \\odot \\sigma(c)`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .utils.errors import InputError

__all__ = ["DenseLayer", "DenseBlock", "GatedConv1x1"]


class DenseLayer(nn.Module):
    """One densely connected layer: ``x → [x, ReLU(conv3x3(ReLU(conv1x1(x))))]``."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.conv_out = nn.Conv2d(in_channels, growth, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv_out(torch.relu(self.conv_in(x))))
        return torch.cat([x, h], dim=1)


class GatedConv1x1(nn.Module):
    """``a + b ⊙ sigmoid(c)`` with ``(a, b, c)`` the contiguous thirds of one 1×1 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        a, b, c = self.conv(x).chunk(3, dim=1)
        return a + b * torch.sigmoid(c)


class DenseBlock(nn.Module):
    """``depth`` dense layers of ``growth`` channels followed by a gated 1×1 projection.

    Arguments:
        in_channels: channels of the input ``(B, in_channels, H, W)``.
        out_channels: channels of the output ``(B, out_channels, H, W)``.
        depth: number of dense layers (7 in DenseFlow's coupling networks).
        growth: channels each layer appends (64 in DenseFlow's coupling networks).
        residual: return ``x + block(x)`` (used by the dequantization flow; needs
            ``in_channels == out_channels``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, depth: int, growth: int, residual: bool = False
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise InputError(
                f"a residual dense block needs in_channels == out_channels, "
                f"got {in_channels} and {out_channels}"
            )
        self.depth, self.growth, self.residual = depth, growth, residual
        self.layers = nn.Sequential(
            *(DenseLayer(in_channels + k * growth, growth) for k in range(depth))
        )
        self.gate = GatedConv1x1(in_channels + depth * growth, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.gate(self.layers(x))
        return x + h if self.residual else h
