"""One-shot noise augmentation before the first unit (VFlow, Chen et al. 2020; ANF, Huang et
al. 2020), the alternative to DenseFlow's incremental augmentation (Sec. 2.1, Fig. 1).

All the noise channels are appended at once, by one cross-unit coupling conditioned on the block's
input (eqs. 6–9 with the input as the only earlier representation), and then a single unit of
glow-like modules transforms data and noise together. Its terms of the bound, named within the
block: ``augmentation`` (the coupling's ``Σ log σ − ln N(e; 0, I)``, eq. 9) and ``unit`` (the
summed log-dets of the glow-like modules); its one draw: ``augmentation`` (the ``e`` of the
coupling). The inverse runs the modules backwards and drops the appended channels.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from .base import NO_NOISE, FlowStep, Shape, ldj_dtype, nested, within
from .cross_unit import CrossUnitCoupling
from .glow import GlowModule
from .utils.errors import InputError

__all__ = ["InputAugmentedBlock"]

AUGMENTATION = "augmentation"
"""The name of the block's draw and of its coupling's term."""


class InputAugmentedBlock(FlowStep):
    """Append ``noise_channels`` conditioned noise channels, then ``num_layers`` glow-like modules.

    Maps ``(B, C0, H, W)`` to ``(B, C0 + noise_channels, H, W)``; ``module_kwargs`` go to every
    :class:`~densflow.glow.GlowModule` (``coupling_net``, ``conv1x1``, or the options of the
    default coupling network), as in :class:`~densflow.invertible_dense_block.InvertibleDenseBlock`.
    """

    def __init__(
        self, in_channels: int, num_layers: int, noise_channels: int, **module_kwargs
    ) -> None:
        super().__init__()
        if noise_channels < 1:
            raise InputError(f"InputAugmentedBlock needs noise_channels >= 1, got {noise_channels}")
        self.in_channels, self.noise_channels = in_channels, noise_channels
        self.augmentation = CrossUnitCoupling(in_channels, noise_channels)
        self.unit = nn.ModuleList(
            GlowModule(self.out_channels, **module_kwargs) for _ in range(num_layers)
        )

    @property
    def out_channels(self) -> int:
        return self.in_channels + self.noise_channels

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        h, augmentation_terms = self.augmentation.flow_forward(x, within(AUGMENTATION, noise), x)
        terms = nested(AUGMENTATION, augmentation_terms)
        ldj = h.new_zeros(h.shape[0], dtype=ldj_dtype(h))
        for module in self.unit:
            h, module_ldj = module(h)
            ldj = ldj + module_ldj
        terms["unit"] = ldj
        return h, terms

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        for module in reversed(self.unit):
            z = module.inverse(z)
        return self.augmentation.flow_inverse(z)

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        return nested(AUGMENTATION, self.augmentation.noise_shapes(shape, sampling))

    def output_shape(self, shape: Shape) -> Shape:
        b, _, h, w = shape
        return (b, self.out_channels, h, w)
