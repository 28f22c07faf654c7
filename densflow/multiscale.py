"""The reshapes of the multi-scale architecture (Sec. 2.2): the first squeeze, and the
transitions between dense blocks, which squeeze and factor out half of the channels.

The multi-scale architecture of RealNVP (Dinh et al., 2017): after a 2×2 squeeze
``(C, H, W) → (4C, H/2, W/2)`` the first ``2C`` channels continue through the next block and the
last ``2C`` leave the flow. DenseFlow scores the dropped half under a **fixed** standard normal
(no learned or conditional parameters):

.. math:: \\ln p(z) = \\ln p(z_{keep}) + \\ln \\mathcal N(z_{drop}; 0, I).

On sampling the dropped half is drawn from N(0, I) again (its standard deviation scaled by the
temperature, :meth:`densflow.DenseFlow.sample_continuous`) and appended after the kept channels
before un-squeezing.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .base import NO_NOISE, FlowStep, Shape, squeeze, standard_normal_log_prob, unsqueeze

__all__ = ["CentredSqueeze", "Transition", "factor_out"]


def factor_out(x: Tensor) -> tuple[Tensor, Tensor]:
    """Squeeze ``(B, C, H, W)`` and split it: ``(z_keep, z_drop)``, each ``(B, 2C, H/2, W/2)``,
    the kept half first."""
    z = squeeze(x)
    keep = z.shape[1] // 2
    return z[:, :keep], z[:, keep:]


class CentredSqueeze(FlowStep):
    """``v ∈ [0, 1)`` → ``squeeze(v − ½)``: the flow's first step after dequantization.

    A shift and a permutation: log-det 0, so no term.
    """

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return squeeze(x - 0.5), {}

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        return unsqueeze(z) + 0.5

    def output_shape(self, shape: Shape) -> Shape:
        b, c, h, w = shape
        return (b, 4 * c, h // 2, w // 2)


class Transition(FlowStep):
    """Squeeze ``(B, C, H, W) → (B, 4C, H/2, W/2)``, keep ``[0, 2C)``, score ``[2C, 4C)``.

    Its term is ``ln N(z_drop; 0, I)``; its inverse takes the dropped half back as its draw
    (:meth:`noise_shapes` with ``sampling``): a standard-normal draw when sampling, the half that
    :func:`factor_out` gave when decoding.
    """

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        keep, dropped = factor_out(x)
        return keep, {"": standard_normal_log_prob(dropped)}

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        """``noise[""]``: a standard-normal draw for the dropped half, scaled by ``temperature``
        (or, with ``temperature = 1``, the dropped half itself)."""
        dropped = temperature * noise[""]
        return unsqueeze(torch.cat([z, dropped.to(z.dtype)], dim=1))

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        return {"": tuple(shape)} if sampling else {}  # the dropped half is as large as the kept

    def output_shape(self, shape: Shape) -> Shape:
        b, c, h, w = shape
        return (b, 2 * c, h // 2, w // 2)
