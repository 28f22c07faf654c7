"""The learned base distribution at the end of the flow: a per-channel Gaussian (the
termination of the recursion of eq. 4, Sec. 2.1).

.. math:: \\ln p(z) = \\sum_{c,i,j} \\left[-\\tfrac12\\ln 2\\pi - \\log\\sigma_c
   - \\tfrac12 e^{-2\\log\\sigma_c}(z_{c,i,j} - \\mu_c)^2\\right].

Sampling multiplies the standard deviation by the temperature ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import NO_NOISE, FlowStep, Shape, ldj_dtype

__all__ = ["LearnedGaussianPrior"]


class LearnedGaussianPrior(FlowStep):
    """``N(loc_c, exp(log_scale_c)²)`` per channel, broadcast over space.

    As the last step of the flow its forward scores ``z`` (the term ``ln p(z)``) and passes it
    on; its inverse has nothing above it and draws ``z`` from its noise.

    Arguments:
        channels: C of the final latent.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def log_prob(self, z: Tensor) -> Tensor:
        """``ln p(z)`` per example, in float32 or wider."""
        dtype = ldj_dtype(z)
        z, loc, log_scale = z.to(dtype), self.loc.to(dtype), self.log_scale.to(dtype)
        log_p = (
            -0.5 * math.log(2 * math.pi)
            - log_scale
            - 0.5 * torch.exp(-2 * log_scale) * (z - loc) ** 2
        )
        return log_p.flatten(1).sum(dim=1)

    def sample_from(self, eps: Tensor, temperature: float = 1.0) -> Tensor:
        """``z = μ + T σ ε`` for standard-normal ``eps`` ``(n, C, h, w)``."""
        return self.loc + temperature * torch.exp(self.log_scale) * eps

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return x, {"": self.log_prob(x)}

    def flow_inverse(
        self, z: Tensor | None, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        """``z = μ + T σ ε`` with ``ε = noise[""]`` (``z`` itself is not read)."""
        return self.sample_from(noise[""], temperature)

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        return {"": tuple(shape)} if sampling else {}
