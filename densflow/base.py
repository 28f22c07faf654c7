"""The contract every step of densflow follows, and the squeeze.

Direction, stated once: ``forward`` maps **data to latent** (x → z) and returns the output together
with the log-determinant of its Jacobian, one value per example; ``inverse`` maps latent to data.
With z = f(x), the change of variables (eq. 2, Sec. 1) gives

.. math:: \\ln p(x) = \\ln p(z) + \\ln \\left|\\det \\frac{\\partial f(x)}{\\partial x}\\right|,

so a flow's log-likelihood is the prior's log-density plus the sum of the forward log-dets.
Log-dets are returned in float32 or wider, whatever the activations' dtype, so that mixed
precision never rounds the likelihood.

Not every step of DenseFlow is a bijection: dequantization and the cross-unit couplings add noise,
a transition factors out half of the state, the prior ends the flow. Each still contributes named
terms to the likelihood bound, and each is a :class:`FlowStep`:

* ``flow_forward(x, noise, context) → (z, terms)``: ``noise`` holds the step's standard-normal
  draws and ``terms`` its contributions to ``ln p(x)``, one ``(B,)`` tensor per name;
* ``flow_inverse(z, noise, temperature) → x``: ``noise`` holds the draws sampling needs;
* ``noise_shapes(shape, sampling)`` and ``output_shape(shape)``: what it draws and what it makes,
  without running a network.

Names are relative to the step (``""`` is the step itself); the composite name of a draw or term,
such as ``block0.cross_unit1``, is made by :func:`site` alone. Every :class:`Bijection` is a
:class:`FlowStep` with one term, its log-det, and no draws.

These two calls are the whole contract: a step has no other way in. What a step needs beyond its
input comes through them —

* a cross-unit coupling reads the block's earlier representations as ``context``, and its draw
  ``e`` as ``noise[""]``;
* dequantization draws its base noise ``ε`` as ``noise[""]`` (its inverse is the quantization);
* a transition, whose forward factors out half of the state and scores it, takes that half back
  in its inverse as ``noise[""]``: a standard-normal draw when sampling (scaled by
  ``temperature``), or the factored-out half itself with ``temperature = 1`` when decoding
  (:func:`densflow.multiscale.factor_out` gives it);
* the prior's inverse has nothing above it and draws ``z`` from ``noise[""]``.

:func:`forward_with_draws` runs a step with its draws made from a generator: the one convenience
for using a step on its own (a notebook, a test), with the same draws the model makes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .noise import draw
from .utils.errors import InputError

__all__ = [
    "FlowStep",
    "Bijection",
    "forward_with_draws",
    "site",
    "nested",
    "within",
    "squeeze",
    "unsqueeze",
    "ldj_dtype",
    "full_precision",
    "standard_normal_log_prob",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

Shape = tuple[int, ...]
NO_NOISE: Mapping[str, Tensor] = {}


def ldj_dtype(x: Tensor) -> torch.dtype:
    """The dtype log-dets are accumulated in for activations ``x``: float32 or wider."""
    return torch.promote_types(x.dtype, torch.float32)


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """``Σ ln N(x; 0, I)`` per example, in float32 or wider."""
    x = x.to(ldj_dtype(x))
    return (-_HALF_LOG_2PI - 0.5 * x * x).flatten(1).sum(dim=1)


def full_precision(x: Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast on ``x``'s device, for the parts of the flow that must stay exact.

    Under bf16 autocast only the coupling and conditioning networks should run in bf16; the
    invertible path itself (1×1 convolutions, affine updates) stays in float32 so that inverses
    and log-dets keep their precision.
    """
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def site(step: str, key: str) -> str:
    """The name of a draw or a term: ``key`` within ``step`` (``""`` names the step itself)."""
    return f"{step}.{key}" if key else step


def nested(step: str, named: Mapping[str, object]) -> dict:
    """``named`` (keys relative to ``step``) with the keys made absolute by :func:`site`."""
    return {site(step, key): value for key, value in named.items()}


def within(step: str, named: Mapping[str, object]) -> dict:
    """The entries of ``named`` that belong to ``step``, with keys relative to it."""
    prefix = step + "."
    return {
        ("" if key == step else key[len(prefix) :]): value
        for key, value in named.items()
        if key == step or key.startswith(prefix)
    }


class FlowStep(nn.Module):
    """One step of the flow (x → z), with its likelihood terms and its draws.

    The defaults describe a step with no draws that keeps the shape; subclasses override what
    differs.
    """

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:  # pragma: no cover - interface
        """Return ``(z, terms)``: the output and the step's terms of ``ln p(x)``, each ``(B,)``."""
        raise NotImplementedError

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:  # pragma: no cover - interface
        """Return ``x``; ``noise`` holds the draws of :meth:`noise_shapes` with ``sampling``."""
        raise NotImplementedError

    def noise_shapes(self, shape: Shape, sampling: bool = False) -> dict[str, Shape]:
        """The standard-normal draws of :meth:`flow_forward` given its input ``shape``, or with
        ``sampling`` those of :meth:`flow_inverse` given its input (the forward output) shape."""
        return {}

    def output_shape(self, shape: Shape) -> Shape:
        """The shape :meth:`flow_forward` returns for an input of ``shape``."""
        return tuple(shape)


class Bijection(FlowStep):
    """An invertible map with a tractable log-determinant (x → z)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        """Return ``(z, ldj)`` with ``ldj`` of shape ``(B,)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - interface
        """Return ``x`` with ``forward(x)[0] == z``."""
        raise NotImplementedError

    def flow_forward(
        self, x: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, context: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        z, ldj = self(x)
        return z, {"": ldj}

    def flow_inverse(
        self, z: Tensor, noise: Mapping[str, Tensor] = NO_NOISE, temperature: float = 1.0
    ) -> Tensor:
        return self.inverse(z)


def forward_with_draws(
    step: FlowStep,
    x: Tensor,
    generator: torch.Generator | None = None,
    context: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``step.flow_forward(x, noise, context)`` with ``noise`` drawn from N(0, I) with
    ``generator``: one draw per entry of :meth:`FlowStep.noise_shapes`, in that order, in
    :func:`ldj_dtype` of ``x`` on its device (what :meth:`densflow.DenseFlow.draw_noise` makes
    for the step).

    Example:
        >>> import torch
        >>> from densflow.base import forward_with_draws
        >>> from densflow.cross_unit import CrossUnitCoupling
        >>> coupling = CrossUnitCoupling(cond_channels=2, growth_rate=3)
        >>> z = torch.zeros(1, 2, 4, 4)
        >>> z_aug, terms = forward_with_draws(coupling, z, torch.Generator(), context=z)
        >>> tuple(z_aug.shape), list(terms)
        ((1, 5, 4, 4), [''])
    """
    shapes = step.noise_shapes(tuple(x.shape))
    noise = draw(shapes, generator, dtype=ldj_dtype(x), device=x.device)
    return step.flow_forward(x, noise, context)


def squeeze(x: Tensor) -> Tensor:
    """Space-to-depth 2×2: ``(B, C, H, W) → (B, 4C, H/2, W/2)``.

    Output channel ``4c + 2·dy + dx`` at ``(i, j)`` holds input channel ``c`` at ``(2i+dy, 2j+dx)``,
    so the four sub-pixels of one input channel are adjacent output channels (the layout of the
    official DenseFlow, which the checkpoint converter relies on).
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise InputError(f"squeeze needs an even height and width, got {h}×{w}")
    x = x.view(b, c, h // 2, 2, w // 2, 2)  # (B, C, i, dy, j, dx)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (B, C, dy, dx, i, j)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(z: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`: ``(B, 4C, H, W) → (B, C, 2H, 2W)``."""
    b, c4, h, w = z.shape
    if c4 % 4:
        raise InputError(f"unsqueeze needs a channel count divisible by 4, got {c4}")
    z = z.view(b, c4 // 4, 2, 2, h, w)  # (B, C, dy, dx, i, j)
    z = z.permute(0, 1, 4, 2, 5, 3)  # (B, C, i, dy, j, dx)
    return z.reshape(b, c4 // 4, 2 * h, 2 * w)
