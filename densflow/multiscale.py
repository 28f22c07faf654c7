"""Transitions between dense blocks: squeeze, then factor out half of the channels.

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

import torch
from torch import Tensor, nn

from .base import squeeze, standard_normal_log_prob, unsqueeze

__all__ = ["Transition"]


class Transition(nn.Module):
    """Squeeze ``(B, C, H, W) → (B, 4C, H/2, W/2)``, keep ``[0, 2C)``, score ``[2C, 4C)``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(z_keep, z_drop)``."""
        z = squeeze(x)
        keep = z.shape[1] // 2
        return z[:, :keep], z[:, keep:]

    @staticmethod
    def log_prob_dropped(dropped: Tensor) -> Tensor:
        """``ln N(z_drop; 0, I)`` per example: the dropped half's likelihood term."""
        return standard_normal_log_prob(dropped)

    def inverse(self, z: Tensor, dropped: Tensor) -> Tensor:
        """Put the factored-out half back after the kept one and un-squeeze."""
        return unsqueeze(torch.cat([z, dropped.to(z.dtype)], dim=1))
