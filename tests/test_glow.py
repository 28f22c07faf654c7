"""The glow-like module and its bijections (densflow.glow): exact inverses in float64, and
log-dets equal to slogdet of the autograd Jacobian."""

from __future__ import annotations

import pytest
import torch
from utils import (
    check_bijection,
    init_actnorms,
    perturb,
    small_glow,
)

from densflow.glow import ActNorm, ChannelSwap, GlowModule, InvertibleConv1x1, LUInvertibleConv1x1

pytestmark = pytest.mark.usefixtures("float64")


def test_actnorm_data_dependent_init_normalises_the_first_batch():
    x = 3.0 + 2.0 * torch.randn(16, 5, 4, 4)
    actnorm = ActNorm(5).train()
    z, _ = actnorm(x)
    assert actnorm.initialized.item() == 1.0
    flat = z.transpose(0, 1).flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(5), atol=1e-10)
    assert torch.allclose(flat.std(1), torch.ones(5), atol=1e-5)  # unbiased std, +1e-6 inside log


def test_actnorm_bijection():
    actnorm = perturb(ActNorm(5), 0.3)
    actnorm.eval()
    check_bijection(actnorm, torch.randn(3, 5, 3, 2))


def test_actnorm_state_survives_save_and_load_and_is_not_reinitialised():
    source = ActNorm(4).train()
    source(torch.randn(8, 4, 3, 3) * 5 + 1)
    target = ActNorm(4).train()
    target.load_state_dict(source.state_dict())
    assert target.initialized.item() == 1.0
    target(torch.randn(8, 4, 3, 3))  # a training step on other data must not re-initialise
    assert torch.equal(target.shift, source.shift) and torch.equal(
        target.log_scale, source.log_scale
    )


def test_actnorm_eval_mode_never_initialises():
    actnorm = ActNorm(3).eval()
    actnorm(torch.randn(4, 3, 2, 2) + 7)
    assert actnorm.initialized.item() == 0.0 and torch.all(actnorm.shift == 0)


@pytest.mark.parametrize("cls", [InvertibleConv1x1, LUInvertibleConv1x1])
def test_invertible_conv1x1(cls):
    conv = perturb(cls(5), 0.3)
    check_bijection(conv, torch.randn(3, 5, 2, 3))


def test_lu_conv1x1_log_det_is_that_of_its_weight():
    conv = perturb(LUInvertibleConv1x1(6), 0.3)
    _, ldj = conv(torch.randn(1, 6, 2, 2))
    assert torch.allclose(ldj[0], 4 * torch.linalg.slogdet(conv.weight).logabsdet, atol=1e-10)


@pytest.mark.parametrize("channels", [6, 7])
def test_channel_swap_inverts_for_even_and_odd_channel_counts(channels):
    check_bijection(ChannelSwap(), torch.randn(2, channels, 2, 2))


def test_glow_module():
    module = perturb(small_glow(6), 0.1)
    x = torch.randn(4, 6, 4, 4)
    init_actnorms(module, x)
    check_bijection(module, x[:2])


def test_glow_module_every_parameter_gets_a_gradient():
    module = perturb(small_glow(6), 0.1).train()
    z, ldj = module(torch.randn(4, 6, 4, 4))
    (z.square().sum() - ldj.sum()).backward()
    missing = [
        n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not missing, missing


def test_glow_module_takes_a_coupling_network_factory():
    built = []

    def conv_net(in_channels, out_channels):
        built.append((in_channels, out_channels))
        return torch.nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    module = perturb(GlowModule(7, coupling_net=conv_net), 0.1)
    assert built == [(4, 6)] and isinstance(module.coupling.net, torch.nn.Conv2d)
    x = torch.randn(4, 7, 4, 4)
    init_actnorms(module, x)
    check_bijection(module, x[:2])
    with pytest.raises(ValueError, match="either mid_channels"):
        GlowModule(6)
    with pytest.raises(ValueError, match="either mid_channels"):
        GlowModule(6, 8, coupling_net=conv_net)
    with pytest.raises(ValueError, match="default coupling network"):
        GlowModule(6, coupling_net=conv_net, dense_depth=2)
