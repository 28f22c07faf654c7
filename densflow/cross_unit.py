"""Cross-unit coupling and the invertible dense block (Sec. 3.1–3.2, eqs. 5–9 of the paper).

A dense block chains *units*; each unit is a stack of glow-like modules. Between two units the
state is **augmented** with ``growth_rate`` noise channels whose distribution depends on the
block's earlier representations (dense connectivity):

.. math:: e \\sim \\mathcal N(0, I), \\qquad
   (\\mu, r) = g_i(\\text{earlier representations}), \\qquad \\log\\sigma = 2\\tanh(r/2),

.. math:: z_{aug} = [z,\\; \\sigma \\odot e + \\mu] \\qquad \\text{(eq. 6)}.

Seen as a map of ``(z, e)`` the Jacobian is block lower-triangular with identity and
``diag(σ)`` on its diagonal (eq. 7), so :math:`\\ln|\\det| = \\sum \\log\\sigma`. The noise is not
part of the data, so its density enters the Monte-Carlo lower bound of eq. 5 (Appendix D):

.. math:: \\ln p(z) \\ge \\mathbb E_{e}\\left[\\ln p(z_{aug}) + \\sum\\log\\sigma
   - \\ln\\mathcal N(e; 0, I)\\right]
   \\qquad \\text{(eq. 9)}.

The inverse simply drops the appended channels: no conditioning network is evaluated.

Conditioning, as in the official implementation (and its released checkpoints): unit ``i ≥ 1``
is conditioned on the block input and the outputs of units ``0 … i−2`` — every earlier
representation except the immediately preceding unit's output, which is the tensor being
augmented.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import ldj_dtype, standard_normal_log_prob
from .coupling import affine_scale, zero_conv1x1
from .glow import GlowModule
from .noise import randn

__all__ = ["CrossUnitCoupling", "InvertibleDenseBlock", "standard_normal_log_prob"]


class CrossUnitCoupling(nn.Module):
    """Noise augmentation between units ``i−1`` and ``i`` (eqs. 6–9).

    Arguments:
        cond_channels: channels of the conditioning input of :math:`g_i`.
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

    def forward(
        self,
        z: Tensor,
        cond: Tensor,
        generator: torch.Generator | None = None,
        e: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Return ``(z_aug, Σ log σ − Σ ln N(e))``: the augmented state and its bound term.

        ``e`` (``(B, growth_rate, H, W)``) is drawn from N(0, I) with ``generator`` unless given.
        """
        b, _, h, w = z.shape
        if e is None:
            # Drawn before g runs, matching the official order of random draws.
            e = randn(
                (b, self.growth_rate, h, w),
                generator=generator,
                dtype=ldj_dtype(z),
                device=z.device,
            )
        mu, log_sigma = self.noise_params(cond)
        e_hat = mu + torch.exp(log_sigma) * e
        z_aug = torch.cat([z, e_hat.to(z.dtype)], dim=1)
        return z_aug, log_sigma.flatten(1).sum(dim=1) - standard_normal_log_prob(e)


class InvertibleDenseBlock(nn.Module):
    """A dense block of ``num_units`` units joined by cross-unit couplings (Fig. 1).

    Unit ``i`` has ``in_channels + i·growth_rate`` channels and ``num_layers`` glow-like
    modules. The block maps ``(B, C0, H, W)`` to ``(B, C0 + (U−1)·growth_rate, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_units: int,
        num_layers: int,
        growth_rate: int,
        mid_channels: int,
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

    def forward_terms(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        noise: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Return ``(z, unit_ldjs, cross_unit_terms)``: one log-det per unit and one bound
        term per cross-unit coupling, each of shape ``(B,)``.

        ``noise`` holds the ``e`` of each cross-unit coupling in order (``U − 1`` tensors of
        ``(B, growth_rate, H, W)``); without it each is drawn with ``generator`` when needed.
        """
        if noise is not None and len(noise) != len(self.cross_unit):
            raise ValueError(
                f"expected {len(self.cross_unit)} noise tensors (one per cross-unit "
                f"coupling), got {len(noise)}"
            )
        earlier = [x]  # x0, out_0, out_1, … : what the conditioning nets may look at
        unit_ldjs, cross_terms = [], []
        h = x
        for i, unit in enumerate(self.units):
            if i > 0:
                e = None if noise is None else noise[i - 1]
                h, term = self.cross_unit[i - 1](h, torch.cat(earlier[:i], dim=1), generator, e)
                cross_terms.append(term)
            ldj = h.new_zeros(h.shape[0], dtype=ldj_dtype(h))
            for module in unit:
                h, module_ldj = module(h)
                ldj = ldj + module_ldj
            unit_ldjs.append(ldj)
            earlier.append(h)
        return h, unit_ldjs, cross_terms

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        z, unit_ldjs, cross_terms = self.forward_terms(x, generator)
        return z, torch.stack(unit_ldjs + cross_terms).sum(dim=0)

    def inverse(self, z: Tensor) -> Tensor:
        for i in reversed(range(len(self.units))):
            for module in reversed(self.units[i]):
                z = module.inverse(z)
            if i > 0:
                z = z[:, : -self.growth_rate]  # drop the appended noise channels
        return z
