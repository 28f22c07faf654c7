"""The composed 1×1 convolutions of the coupling networks (densflow.performance.compose)."""

from __future__ import annotations

import copy

import torch
from utils import loss_and_flat_grads, perturb, reference_log_prob

from densflow import DenseFlow
from densflow.coupling import CouplingNet
from densflow.performance import (
    ComposedCouplingNet,
    compose_coupling_nets,
)


def small_coupling_net():
    return perturb(CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4), 0.3)


def test_composed_coupling_net_equals_the_plain_network_and_its_gradients(float64):
    # The composed 1×1 convolutions: the output and every parameter's gradient equal those of
    # the network called layer by layer (Fig. 2), in float64.
    plain = small_coupling_net()
    composed = compose_coupling_nets(copy.deepcopy(plain))
    assert type(composed) is ComposedCouplingNet
    x, weights = torch.randn(2, 3, 8, 8), torch.randn(2, 6, 8, 8)
    results = []
    for net in (composed, plain):
        y = net(x)
        (y * weights).sum().backward()
        results.append((y.detach(), [p.grad for p in net.parameters()]))
    (y_fast, g_fast), (y_plain, g_plain) = results
    assert y_plain.abs().max() > 0.1 and torch.allclose(y_fast, y_plain, rtol=0, atol=1e-12)
    scale = max(g.abs().max() for g in g_plain)  # some are ~0: a bias followed by a batch norm
    for (name, _), a, b in zip(plain.named_parameters(), g_fast, g_plain, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12 * scale), name


def test_composed_coupling_net_composes_its_weights_in_float32_under_bf16_autocast():
    # The products of weight matrices are formed in float32 and cast to bf16 once, by the
    # convolution; autocast must not round them to bf16 first.
    net = compose_coupling_nets(small_coupling_net().float())
    composed = [net._input_projection()[0], net._output_projection()[0]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = [net._input_projection()[0], net._output_projection()[0]]
        y = net(torch.randn(2, 3, 8, 8, dtype=torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(composed, under_autocast, strict=True))
    assert y.dtype == torch.bfloat16


def test_composing_a_model_keeps_its_parameters_state_dict_and_numbers(model_and_images):
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    # a training step from the same state (BatchNorm statistics included) on each
    expected_loss, expected_grads = loss_and_flat_grads(copy.deepcopy(model).train(), x)
    got_loss, got_grads = loss_and_flat_grads(
        compose_coupling_nets(copy.deepcopy(model)).train(), x
    )
    assert torch.allclose(got_loss, expected_loss, rtol=1e-5, atol=0)
    assert (got_grads - expected_grads).norm() <= 1e-5 * expected_grads.norm()

    params, state = list(model.parameters()), model.state_dict()
    nets = sum(type(m) is CouplingNet for m in model.modules())
    assert compose_coupling_nets(model) is model
    assert sum(type(m) is ComposedCouplingNet for m in model.modules()) == nets > 0
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))  # optimizers
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.allclose(reference_log_prob(model, x), expected, rtol=1e-5, atol=0)
    copied = copy.deepcopy(model)  # follows copies, and loads into a plain model
    assert all(type(m) is not CouplingNet for m in copied.modules())
    twin = DenseFlow(model.config).eval()
    twin.load_state_dict(copied.state_dict())
    assert torch.equal(reference_log_prob(twin, x), expected)
