"""Cross-unit coupling (Sec. 2.1, eqs. 5–9 of the paper): noise augmentation between two units.

A dense block chains *units*; each unit is a stack of glow-like modules. Between two units the
state is **augmented** with ``growth_rate`` noise channels whose distribution depends on the
block's earlier representations (dense connectivity):

.. math:: e \\sim \\mathcal N(0, I), \\qquad
   (\\mu, r) = g_i(\\text{earlier representations}), \\qquad \\log\\sigma = 2\\tanh(r/2),

.. math:: z_{aug} = [z,\\; \\sigma \\odot e + \\mu] \\qquad \\text{(eq. 6)}.

Seen as a map of ``(z, e)`` the Jacobian is block lower-triangular with identity and
``diag(σ)`` on its diagonal (eq. 7), so :math:`\\ln|\\det| = \\sum \\log\\sigma` (eq. 8). The noise
is not part of the data, so its density enters the Monte-Carlo lower bound of eq. 5 (proved in
Appendix D):

.. math:: \\ln p(z) \\ge \\mathbb E_{e}\\left[\\ln p(z_{aug}) + \\sum\\log\\sigma
   - \\ln\\mathcal N(e; 0, I)\\right]
   \\qquad \\text{(eq. 9)}.

The inverse simply drops the appended channels: no conditioning network is evaluated. The units
and couplings of one block make an
:class:`~densflow.invertible_dense_block.InvertibleDenseBlock`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .base import NO_NOISE, FlowStep, Shape, ldj_dtype, standard_normal_log_prob
from .coupling import affine_scale, zero_conv1x1
from .utils.errors import InputError

__all__ = ["CrossUnitCoupling"]


class CrossUnitCoupling(FlowStep):
    """Noise augmentation between units ``i−1`` and ``i`` (eqs. 6–9).

    Arguments:
        cond_channels: channels of the conditioning input of :math:`g_i` (the ``context``).
        growth_rate: noise channels appended (10 in DenseFlow-74-10).

    :math:`g_i` is a 3×3 conv to ``4·cond_channels``, ReLU, and a zero-initialised 1×1 conv to
    ``2·growth_rate`` channels: ``μ`` and the raw scale as **contiguous** halves.
    """

    def __init__(self, cond_channels: int, growth_rate: int) -> None:
        super().__init__()
        self.growth_rate = growth_rate
        self.g = nn.Sequential(
            nn.Conv2d(cond_channels, 4 * cond_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            zero_conv1x1(4 * cond_channels, 2 * growth_rate),
        )

    def noise_params(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, log σ)`` of the appended channels, each ``(B, growth_rate, H, W)``."""
        mu, raw = self.g(cond).chunk(2, dim=1)
        return mu.to(ldj_dtype(mu)), affine_scale(raw)

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(z_aug, {"": Σ log σ − ln N(e; 0, I)})``, the augmented state (eq. 6) and its
        term of the bound (eq. 9).

        ``context``: the earlier representations ``g_i`` reads, concatenated by channel;
        ``noise[""]``: ``e``, ``(B, growth_rate, H, W)``
        (:func:`~densflow.base.forward_with_draws` draws it).
        """
        if context is None:
            raise InputError(
                "CrossUnitCoupling.flow_forward needs context: the earlier representations g_i "
                "reads, concatenated by channel (InvertibleDenseBlock passes them)"
            )
        e = noise[""]
        mu, log_sigma = self.noise_params(context)
        e_hat = mu + torch.exp(log_sigma) * e  # eq. 6
        z_aug = torch.cat([x, e_hat.to(x.dtype)], dim=1)
        return z_aug, {"": log_sigma.flatten(1).sum(dim=1) - standard_normal_log_prob(e)}

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        return z[:, : -self.growth_rate]  # drop the appended noise channels

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        if sampling:
            return {}
        b, _, h, w = shape
        return {"": (b, self.growth_rate, h, w)}

    def output_shape(self, shape: Shape) -> Shape:
        b, c, h, w = shape
        return (b, c + self.growth_rate, h, w)
