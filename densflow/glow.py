"""The glow-like module (Kingma & Dhariwal, 2018), DenseFlow's intra-unit building block (Sec. 2.2):

    ActNorm (eq. 14) → invertible 1×1 convolution → affine coupling (eq. 15) → swap of the halves.

Each step is a :class:`~densflow.base.Bijection` (x → z, returning the log-det per example).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Bijection, full_precision, ldj_dtype
from .coupling import AffineCoupling, CouplingNet
from .utils.errors import InputError

CouplingNetFactory = Callable[[int, int], nn.Module]
"""``factory(in_channels, out_channels)`` → a network from the conditioning half
``(B, in_channels, H, W)`` to the interleaved raw scales and shifts ``(B, out_channels, H, W)``."""

__all__ = [
    "CouplingNetFactory",
    "ActNorm",
    "InvertibleConv1x1",
    "LUInvertibleConv1x1",
    "apply_conv1x1",
    "ChannelSwap",
    "GlowModule",
]


class ActNorm(Bijection):
    """Per-channel affine normalisation with data-dependent initialisation (eq. 14).

    .. math:: z = (x - \\mu_c)\\, e^{-\\log\\sigma_c}, \\qquad
       \\ln|\\det J| = -H W \\sum_c \\log\\sigma_c.

    On the first forward pass in training mode, ``shift`` and ``log_scale`` are set to the
    per-channel mean and log (unbiased std + 1e-6) of the batch, so that the output starts with
    zero mean and unit variance. Whether that happened is the buffer ``initialized``: it travels
    with the ``state_dict``, so a loaded model is never re-initialised. (To force a new
    initialisation, load a state dict with ``initialized = 0``: editing the buffer in place is not
    seen by a module that has already checked it.)
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.zeros(1))
        # Mirrors `initialized` on the host so that training steps need no device sync to check it.
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded buffer on the next training step

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation from the batch ``x``."""
        x = x.transpose(0, 1).flatten(1)  # (C, B·H·W)
        self.shift.copy_(x.mean(dim=1).view_as(self.shift))
        self.log_scale.copy_(torch.log(x.std(dim=1) + 1e-6).view_as(self.log_scale))
        self.initialized.fill_(1.0)
        self._known_initialized = True

    def _ldj(self, x: Tensor) -> Tensor:
        hw = x.shape[2] * x.shape[3]
        return (-hw * self.log_scale.to(ldj_dtype(x)).sum()).expand(x.shape[0])

    def is_initialized(self) -> bool:
        """Whether the data-dependent initialisation has happened (one device read, then the
        host mirror: a compiled flow then sees a constant, not a graph break)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized.item())
        return self._known_initialized

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self.is_initialized():
            self.initialize(x)
        return (x - self.shift) * torch.exp(-self.log_scale), self._ldj(x)

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(self.log_scale) + self.shift


def apply_conv1x1(x: Tensor, weight: Tensor) -> Tensor:
    """``x`` ``(B, C, H, W)`` multiplied at every pixel by ``weight`` ``(C, C)``, in float32 or
    wider (also under autocast) and returned in ``x``'s dtype."""
    c = weight.shape[0]
    with full_precision(x):
        return F.conv2d(x.to(ldj_dtype(x)), weight.view(c, c, 1, 1).to(ldj_dtype(x))).to(x.dtype)


class InvertibleConv1x1(Bijection):
    """Invertible 1×1 convolution with a plain ``(C, C)`` weight, as in the paper.

    .. math:: z_{:, i, j} = W x_{:, i, j}, \\qquad \\ln|\\det J| = H W \\ln|\\det W|.

    Initialised to a random orthogonal matrix. It always runs in float32 or wider, also under
    autocast, because its output is the flow's state and its inverse must stay accurate.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(q)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with full_precision(x):
            log_det = torch.linalg.slogdet(self.weight.to(ldj_dtype(x))).logabsdet
        ldj = (x.shape[2] * x.shape[3] * log_det).expand(x.shape[0])
        return apply_conv1x1(x, self.weight), ldj

    def inverse_weight(self, dtype: torch.dtype) -> Tensor:
        """``W⁻¹`` in ``dtype``."""
        return torch.linalg.inv(self.weight.to(dtype))

    def inverse(self, z: Tensor) -> Tensor:
        with full_precision(z):
            return apply_conv1x1(z, self.inverse_weight(ldj_dtype(z)))


class LUInvertibleConv1x1(InvertibleConv1x1):
    """The LU-parameterised 1×1 convolution of Glow (Sec. 3.2 of Kingma & Dhariwal, 2018).

    :math:`W = P L (U + \\mathrm{diag}(\\mathrm{sign}\\, e^{\\log|s|}))` with a fixed permutation
    ``P``, unit lower-triangular ``L`` and strictly upper-triangular ``U``; the log-det is then
    :math:`H W \\sum \\log|s|`, with no determinant to compute. An option (``conv1x1="lu"``),
    not the paper's choice; official checkpoints use the plain weight.
    """

    def __init__(self, channels: int) -> None:
        nn.Module.__init__(self)
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def inverse_weight(self, dtype: torch.dtype) -> Tensor:
        """``W⁻¹ = U⁻¹ L⁻¹ Pᵀ`` by two triangular solves: no general inverse needed."""
        lower, upper = (f.to(dtype) for f in self._factors())
        p_t = self.permutation.to(dtype).T
        l_inv_pt = torch.linalg.solve_triangular(lower, p_t, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, l_inv_pt, upper=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ldj = (x.shape[2] * x.shape[3] * self.log_s.to(ldj_dtype(x)).sum()).expand(x.shape[0])
        return apply_conv1x1(x, self.weight), ldj


class ChannelSwap(Bijection):
    """Swap the two halves: ``[x1, x2] → [x2, x1]`` with ``x1`` the first ⌈C/2⌉ channels.

    A permutation (log-det 0). The inverse splits at ⌊C/2⌋, so it is exact for odd C too (the
    official code splits at ⌈C/2⌉ again, which only differs for odd channel counts, never used).
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        split = (x.shape[1] + 1) // 2
        z = torch.cat([x[:, split:], x[:, :split]], dim=1)
        return z, x.new_zeros(x.shape[0], dtype=ldj_dtype(x))

    def inverse(self, z: Tensor) -> Tensor:
        split = z.shape[1] // 2
        return torch.cat([z[:, split:], z[:, :split]], dim=1)


class GlowModule(Bijection):
    """ActNorm → 1×1 conv → affine coupling → channel swap.

    Arguments:
        channels: C of the input ``(B, C, H, W)``.
        mid_channels: width of DenseFlow's coupling network
            (:class:`~densflow.coupling.CouplingNet`), built with ``coupling_net_options``
            (``dense_depth``, ``dense_growth``, ``num_landmarks``, ``pinv_iterations``).
        coupling_net: instead of ``mid_channels``, a :data:`CouplingNetFactory` that builds
            the coupling network from ``(⌈C/2⌉, 2·⌊C/2⌋)`` channels, for another network.
        conv1x1: ``"plain"`` (the paper) or ``"lu"``.
    """

    def __init__(
        self,
        channels: int,
        mid_channels: int | None = None,
        *,
        coupling_net: CouplingNetFactory | None = None,
        conv1x1: str = "plain",
        **coupling_net_options: int,
    ) -> None:
        super().__init__()
        if conv1x1 not in ("plain", "lu"):
            raise InputError(f"conv1x1 must be 'plain' or 'lu', got {conv1x1!r}")
        if (mid_channels is None) == (coupling_net is None):
            raise InputError(
                "GlowModule needs either mid_channels (DenseFlow's coupling network) or a "
                "coupling_net factory, not both and not neither"
            )
        if coupling_net is None:

            def coupling_net(in_channels: int, out_channels: int) -> nn.Module:
                return CouplingNet(in_channels, out_channels, mid_channels, **coupling_net_options)

        elif coupling_net_options:
            raise InputError(
                f"options {sorted(coupling_net_options)} are for the default coupling network; "
                "a coupling_net factory takes its own"
            )
        self.actnorm = ActNorm(channels)
        self.conv1x1 = (
            InvertibleConv1x1(channels) if conv1x1 == "plain" else LUInvertibleConv1x1(channels)
        )
        self.coupling = AffineCoupling(
            channels, coupling_net((channels + 1) // 2, 2 * (channels // 2))
        )
        self.swap = ChannelSwap()

    def steps(self) -> tuple[Bijection, ...]:
        return (self.actnorm, self.conv1x1, self.coupling, self.swap)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ldj = x.new_zeros(x.shape[0], dtype=ldj_dtype(x))
        for step in self.steps():
            x, step_ldj = step(x)
            ldj = ldj + step_ldj
        return x, ldj

    def inverse(self, z: Tensor) -> Tensor:
        for step in reversed(self.steps()):
            z = step.inverse(z)
        return z
