"""The coupling networks with their adjacent 1×1 convolutions composed: the same function, fewer
convolution calls.

1×1 convolutions applied one after another with nothing in between are one linear map,
``W₂(W₁x + b₁) + b₂ = (W₂W₁)x + (W₂b₁ + b₂)``. In DenseFlow's coupling network (Fig. 2) two such
chains occur: the input projection ``h = in_conv(x)`` followed by the two 1×1 convolutions that
read ``h`` first (the attention's ``qkv`` and the first dense layer's ``conv_in``), and the mixing
convolution followed by the output one. :class:`ComposedCouplingNet` computes
``[h, qkv(h), conv_in(h)]`` with one convolution of ``x`` and ``out_conv ∘ mix_conv`` with one,
from products of the same weights: 3 convolutions fewer per coupling network. That matters on a
CPU, where a small convolution's cost is mostly per call (``docs/performance.md``).

:func:`compose_coupling_nets` applies it to a built model: every
:class:`~densflow.coupling.CouplingNet` with both branches is replaced, on its parent, by a
:class:`ComposedCouplingNet` built from it, which holds the same submodules under the same names,
so the parameters (the same tensors), the state-dict keys and values, an optimizer built before
and a checkpoint written after are all unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import full_precision
from ..coupling import CouplingNet
from ..utils.errors import InputError
from .modules import replace_modules

__all__ = ["ComposedCouplingNet", "compose_coupling_nets"]


class ComposedCouplingNet(nn.Module):
    """A :class:`~densflow.coupling.CouplingNet` with both branches, its adjacent 1×1
    convolutions composed: ``net``'s own submodules (the same parameters and state-dict keys),
    another forward."""

    def __init__(self, net: CouplingNet) -> None:
        super().__init__()
        if net.attention is None or net.dense is None:
            raise InputError(
                "ComposedCouplingNet needs a coupling network with both branches (attention and "
                "dense): a one-branch network has nothing to compose"
            )
        # the coupling network's submodules, registered in its order: the same state dict
        self.in_conv, self.attention, self.dense = net.in_conv, net.attention, net.dense
        self.mix_norm, self.mix_conv, self.out_conv = net.mix_norm, net.mix_conv, net.out_conv
        self.train(net.training)

    def forward(self, x: Tensor) -> Tensor:
        mid, e = self.in_conv.out_channels, self.attention.embed_dim
        h, qkv, first_in = F.conv2d(x, *self._input_projection()).split([mid, 3 * e, mid], dim=1)
        u = torch.cat([self.attention.attend(qkv), self._dense(h, first_in)], dim=1)
        return F.conv2d(torch.relu(self.mix_norm(u)), *self._output_projection())

    def _dense(self, h: Tensor, first_in: Tensor) -> Tensor:
        """``self.dense(h)`` given its first layer's ``conv_in(h)``."""
        first, *rest = self.dense.layers
        h = torch.cat([h, torch.relu(first.conv_out(torch.relu(first_in)))], dim=1)
        for layer in rest:
            h = layer(h)
        return self.dense.gate(h)  # a coupling network's dense block is not residual

    def _input_projection(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of ``x ↦ [h, qkv(h), conv_in(h)]`` with ``h = in_conv(x)``."""
        w_in, b_in = self.in_conv.weight.flatten(1), self.in_conv.bias
        readers = (self.attention.qkv, self.dense.layers[0].conv_in)  # the 1×1 convs that read h
        w_h = torch.cat([conv.weight for conv in readers]).flatten(1)
        b_h = torch.cat([conv.bias for conv in readers])
        with full_precision(w_in):  # composed once in full precision, cast once by autocast
            weight = torch.cat([w_in, w_h @ w_in])
            bias = torch.cat([b_in, w_h @ b_in + b_h])
        return weight[:, :, None, None], bias

    def _output_projection(self) -> tuple[Tensor, Tensor]:
        """Weight and bias of ``out_conv ∘ mix_conv`` (``mix_conv`` has no bias)."""
        with full_precision(self.out_conv.weight):
            weight = self.out_conv.weight.flatten(1) @ self.mix_conv.weight.flatten(1)
        return weight[:, :, None, None], self.out_conv.bias


def compose_coupling_nets(model: nn.Module) -> nn.Module:
    """Run every coupling network of ``model`` with both branches as a
    :class:`ComposedCouplingNet`; returns ``model``, changed in place (the same parameters,
    state-dict keys and values), or the composed network when ``model`` is one itself.
    One-branch networks (ablations) have nothing to compose and stay as they are."""
    if type(model) is CouplingNet:
        return ComposedCouplingNet(model) if _composable(model) else model
    replace_modules(
        model, CouplingNet, lambda net: ComposedCouplingNet(net) if _composable(net) else net
    )
    return model


def _composable(net: CouplingNet) -> bool:
    return net.attention is not None and net.dense is not None
