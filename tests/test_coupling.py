"""The affine coupling and DenseFlow's coupling network (densflow.coupling)."""

from __future__ import annotations

import pytest
import torch
from utils import check_bijection, defaults, jacobian_logdet, perturb

from densflow import DenseFlowConfig
from densflow.coupling import AffineCoupling, CouplingNet

pytestmark = pytest.mark.usefixtures("float64")


def test_affine_coupling_with_the_densflow_coupling_network():
    net = CouplingNet(3, 2 * 3, mid_channels=8, dense_depth=2, dense_growth=4)
    coupling = perturb(AffineCoupling(6, net), 0.2).eval()
    check_bijection(coupling, torch.randn(2, 6, 4, 4))


def test_affine_coupling_starts_as_identity():
    net = CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4)
    x = torch.randn(2, 6, 4, 4)
    z, ldj = AffineCoupling(6, net).eval()(x)
    assert torch.equal(z, x) and torch.all(ldj == 0)


def test_coupling_net_calls_every_layer_as_fig_2_draws_it():
    # Fig. 2 layer by layer: every layer that holds weights is called, once, in this order.
    net = perturb(CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4), 0.3)
    calls = []
    for name, module in net.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(2, 3, 8, 8)
    y = net(x)
    assert calls == [
        "in_conv",
        "attention.qkv",
        "attention.out",
        "dense.layers.0.conv_in",
        "dense.layers.0.conv_out",
        "dense.layers.1.conv_in",
        "dense.layers.1.conv_out",
        "dense.gate.conv",
        "mix_norm",
        "mix_conv",
        "out_conv",
    ]
    h = net.in_conv(x)
    u = torch.cat([net.attention(h), net.dense.gate(net.dense.layers(h))], dim=1)
    assert torch.equal(y, net.out_conv(net.mix_conv(torch.relu(net.mix_norm(u)))))


def test_coupling_net_needs_a_dense_layer():
    with pytest.raises(ValueError, match="dense_depth"):
        CouplingNet(3, 6, mid_channels=8, dense_depth=0)


def test_conditional_affine_coupling_inverts_given_the_same_context():
    net = torch.nn.Conv2d(3 + 2, 6, kernel_size=3, padding=1)
    coupling = AffineCoupling(6, net)
    x, context = torch.randn(2, 6, 4, 4), torch.randn(2, 2, 4, 4)
    z, ldj = coupling(x, context)
    assert (coupling.inverse(z, context) - x).abs().max() < 1e-12
    expected = jacobian_logdet(lambda t: coupling(t, context[:1])[0], x[:1])
    assert torch.allclose(ldj[0], expected, atol=1e-9)


def test_coupling_net_defaults_are_the_paper_preset():
    paper = DenseFlowConfig.paper()
    assert defaults(CouplingNet) == {
        "dense_depth": paper.coupling_dense_depth,
        "dense_growth": paper.coupling_dense_growth,
        "num_landmarks": paper.num_landmarks,
        "pinv_iterations": paper.pinv_iterations,
        "branches": paper.coupling_net,
    }
