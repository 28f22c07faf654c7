"""The invertible dense block of DenseFlow (Sec. 2.2, Fig. 3): units joined by cross-unit couplings.

Unit ``i`` is a stack of glow-like modules (:class:`~densflow.glow.GlowModule`); between units
``i−1`` and ``i`` a :class:`~densflow.cross_unit.CrossUnitCoupling` appends ``growth_rate`` noise
channels (eqs. 6–9), so unit ``i`` works on ``C0 + i·growth_rate`` channels. The last unit has no
coupling after it. (Not to be confused with :class:`~densflow.dense_block.DenseBlock`, the plain
convolutional block inside the coupling networks.)

Conditioning, as eq. 6 (Sec. 2.1) defines it: the coupling before unit ``i ≥ 1`` (0-based) is
conditioned on the block input and the outputs of units ``0 … i−2`` — the paper's
:math:`z_{<i} = [z_0, …, z_{i-1}]` in its 1-based numbering, every earlier representation except
the tensor being augmented (Example 1: :math:`g_1` takes :math:`z_0`). The released checkpoints'
parameter counts confirm it (docs/official.md).

Its terms of the bound, named within the block with the paper's 1-based indices (Example 1):
``unit{j}`` (the summed log-dets of the paper's unit :math:`f_j`, code unit ``j − 1``, eq. 4) and
``cross_unit{i}`` (the term of eq. 9 of the paper's coupling :math:`h_i`, the one after
:math:`f_i` and before code unit ``i``), in the order the block computes them:
``unit1, cross_unit1, unit2, …``. Its draws: ``cross_unit{i}`` (the ``e_i`` of :math:`h_i`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import NO_NOISE, FlowStep, Shape, ldj_dtype, nested, within
from .cross_unit import CrossUnitCoupling
from .glow import GlowModule

__all__ = ["InvertibleDenseBlock"]


def unit_site(i: int) -> str:
    """The name of code unit ``i``'s term within its block: the paper's :math:`f_{i+1}`."""
    return f"unit{i + 1}"


def cross_unit_site(i: int) -> str:
    """The name of the draw and the term of the coupling before code unit ``i`` within its block:
    the paper's :math:`h_i`."""
    return f"cross_unit{i}"


class InvertibleDenseBlock(FlowStep):
    """A dense block of ``num_units`` units joined by cross-unit couplings (Fig. 3).

    Unit ``i`` has ``in_channels + i·growth_rate`` channels and ``num_layers`` glow-like
    modules. The block maps ``(B, C0, H, W)`` to ``(B, C0 + (U−1)·growth_rate, H, W)``.
    ``module_kwargs`` go to every :class:`~densflow.glow.GlowModule` (``coupling_net``,
    ``conv1x1``, or the options of the default coupling network).
    """

    def __init__(
        self,
        in_channels: int,
        num_units: int,
        num_layers: int,
        growth_rate: int,
        mid_channels: int | None = None,
        **module_kwargs,
    ) -> None:
        super().__init__()
        self.in_channels, self.growth_rate = in_channels, growth_rate
        self.cross_unit = nn.ModuleList(
            CrossUnitCoupling(self.cond_channels(i), growth_rate) for i in range(1, num_units)
        )
        self.units = nn.ModuleList(
            nn.ModuleList(
                GlowModule(in_channels + i * growth_rate, mid_channels, **module_kwargs)
                for _ in range(num_layers)
            )
            for i in range(num_units)
        )

    @property
    def out_channels(self) -> int:
        return self.in_channels + (len(self.units) - 1) * self.growth_rate

    def cond_channels(self, i: int) -> int:
        """Width of ``[x0, out_0, …, out_{i−2}]``, the conditioning input of unit ``i ≥ 1``."""
        c0, gr = self.in_channels, self.growth_rate
        return c0 + sum(c0 + j * gr for j in range(i - 1))

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        earlier = [x]  # x0, out_0, out_1, … : what the conditioning nets may look at
        terms = {}
        h = x
        for i, unit in enumerate(self.units):
            if i > 0:
                site = cross_unit_site(i)
                cond = torch.cat(earlier[:i], dim=1)
                h, cross_terms = self.cross_unit[i - 1].flow_forward(h, within(site, noise), cond)
                terms.update(nested(site, cross_terms))
            ldj = h.new_zeros(h.shape[0], dtype=ldj_dtype(h))
            for module in unit:
                h, module_ldj = module(h)
                ldj = ldj + module_ldj
            terms[unit_site(i)] = ldj
            earlier.append(h)
        return h, terms

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        for i in reversed(range(len(self.units))):
            for module in reversed(self.units[i]):
                z = module.inverse(z)
            if i > 0:
                z = self.cross_unit[i - 1].flow_inverse(z)
        return z

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        shapes = {}
        for i, coupling in enumerate(self.cross_unit, start=1):
            shapes.update(nested(cross_unit_site(i), coupling.noise_shapes(shape, sampling)))
            shape = coupling.output_shape(shape)
        return shapes

    def output_shape(self, shape: Shape) -> Shape:
        b, _, h, w = shape
        return (b, self.out_channels, h, w)
