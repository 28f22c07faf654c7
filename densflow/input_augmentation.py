"""One-shot noise augmentation before the first unit (VFlow, Chen et al. 2020; ANF, Huang et
al. 2020), the alternative to DenseFlow's incremental augmentation (Sec. 2.1, Fig. 1).

All the noise channels are appended at once, by one cross-unit coupling conditioned on the block's
input (eqs. 6–9 with the input as the only earlier representation), and then a single unit of
glow-like modules transforms data and noise together. It is an
:class:`~densflow.invertible_dense_block.InvertibleDenseBlock` whose first unit is empty, so the
bound's terms, draws and inverse are that class's: ``unit1`` (zero: the empty first unit),
``cross_unit1`` and ``unit2``.
"""

from __future__ import annotations

from torch import nn

from .base import FlowStep
from .cross_unit import CrossUnitCoupling
from .glow import GlowModule
from .invertible_dense_block import InvertibleDenseBlock
from .utils.errors import InputError

__all__ = ["InputAugmentedBlock"]


class InputAugmentedBlock(InvertibleDenseBlock):
    """Append ``noise_channels`` conditioned noise channels, then ``num_layers`` glow-like modules.

    Maps ``(B, C0, H, W)`` to ``(B, C0 + noise_channels, H, W)``; ``module_kwargs`` go to every
    :class:`~densflow.glow.GlowModule`, as in :class:`InvertibleDenseBlock`.
    """

    def __init__(
        self, in_channels: int, num_layers: int, noise_channels: int, **module_kwargs
    ) -> None:
        FlowStep.__init__(self)  # the parent's layout, built here with an empty first unit
        if noise_channels < 1:
            raise InputError(f"InputAugmentedBlock needs noise_channels >= 1, got {noise_channels}")
        self.in_channels, self.growth_rate = in_channels, noise_channels
        self.cross_unit = nn.ModuleList([CrossUnitCoupling(in_channels, noise_channels)])
        self.units = nn.ModuleList([
            nn.ModuleList(),
            nn.ModuleList(
                GlowModule(in_channels + noise_channels, **module_kwargs) for _ in range(num_layers)
            ),
        ])  # fmt: skip
