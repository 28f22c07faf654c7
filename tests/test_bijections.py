"""Every bijection: exact inverse (float64) and log-det equal to slogdet of the autograd
Jacobian."""

from __future__ import annotations

import pytest
import torch
from utils import init_actnorms, jacobian_logdet, perturb

from densflow.attention import NystromAttention, iterative_pinv
from densflow.base import Squeeze, squeeze, unsqueeze
from densflow.coupling import AffineCoupling, CouplingNet
from densflow.cross_unit import CrossUnitCoupling, InvertibleDenseBlock
from densflow.dequantization import VariationalDequantization
from densflow.glow import ActNorm, ChannelSwap, GlowModule, InvertibleConv1x1, LUInvertibleConv1x1
from densflow.multiscale import Transition
from densflow.prior import LearnedGaussianPrior

pytestmark = pytest.mark.usefixtures("float64")


def small_glow(channels: int = 6) -> GlowModule:
    return GlowModule(channels, mid_channels=8, dense_depth=2, dense_growth=4)


def check_bijection(bij, x, *, atol_inv=1e-10, atol_ldj=1e-8):
    """Round trip on a batch, and the log-det of each example against autograd."""
    z, ldj = bij(x)
    assert ldj.shape == (x.shape[0],)
    assert ldj.dtype == torch.float64
    assert (bij.inverse(z) - x).abs().max() < atol_inv
    for i in range(x.shape[0]):
        expected = jacobian_logdet(lambda t: bij(t)[0], x[i : i + 1])
        assert torch.allclose(ldj[i], expected, atol=atol_ldj, rtol=1e-9), (ldj[i], expected)


def test_squeeze_layout_matches_the_official_ordering():
    x = torch.arange(2 * 4 * 4, dtype=torch.float64).view(1, 2, 4, 4)
    z = squeeze(x)
    assert z.shape == (1, 8, 2, 2)
    for c in range(2):
        for dy in range(2):
            for dx in range(2):
                for i in range(2):
                    for j in range(2):
                        assert z[0, 4 * c + 2 * dy + dx, i, j] == x[0, c, 2 * i + dy, 2 * j + dx]
    assert torch.equal(unsqueeze(z), x)


def test_squeeze_is_a_volume_preserving_bijection():
    check_bijection(Squeeze(), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="even"):
        squeeze(torch.randn(1, 3, 5, 4))


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


def test_affine_coupling_with_the_densflow_coupling_network():
    net = CouplingNet(3, 2 * 3, mid_channels=8, dense_depth=2, dense_growth=4)
    coupling = perturb(AffineCoupling(6, net), 0.2).eval()
    check_bijection(coupling, torch.randn(2, 6, 4, 4))


def test_affine_coupling_starts_as_identity():
    net = CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4)
    x = torch.randn(2, 6, 4, 4)
    z, ldj = AffineCoupling(6, net).eval()(x)
    assert torch.equal(z, x) and torch.all(ldj == 0)


def plain_coupling_net(net: CouplingNet, x: torch.Tensor) -> torch.Tensor:
    """Fig. 2 as drawn: every convolution of ``net`` called on its own."""
    h = net.in_conv(x)
    u = torch.cat([net.attention(h), net.dense.gate(net.dense.layers(h))], dim=1)
    return net.out_conv(net.mix_conv(torch.relu(net.mix_norm(u))))


def test_coupling_net_composed_convolutions_equal_the_plain_network_and_its_gradients():
    # CouplingNet composes adjacent 1×1 convolutions into fewer calls: the output and every
    # parameter's gradient must equal those of the network called layer by layer.
    net = perturb(CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4), 0.3)
    x = torch.randn(2, 3, 8, 8)
    weights = torch.randn(2, 6, 8, 8)
    grads = []
    for forward in (net, lambda t: plain_coupling_net(net, t)):
        net.zero_grad()
        y = forward(x)
        (y * weights).sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    (y_fused, g_fused), (y_plain, g_plain) = grads
    assert y_plain.abs().max() > 0.1 and torch.allclose(y_fused, y_plain, rtol=0, atol=1e-12)
    scale = max(g.abs().max() for g in g_plain)  # some are ~0: a bias followed by a batch norm
    for (name, _), a, b in zip(net.named_parameters(), g_fused, g_plain, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12 * scale), name


def test_coupling_net_composes_its_weights_in_float32_under_bf16_autocast():
    # The products of weight matrices are formed in float32 and cast to bf16 once, by the
    # convolution; autocast must not round them to bf16 first.
    net = perturb(CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4), 0.3).float()
    composed = [net._input_projection()[0], net._output_projection()[0]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = [net._input_projection()[0], net._output_projection()[0]]
        y = net(torch.randn(2, 3, 8, 8, dtype=torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(composed, under_autocast, strict=True))
    assert y.dtype == torch.bfloat16


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


def test_cross_unit_coupling_jacobian_is_block_triangular_with_det_prod_sigma():
    """Eq. 7: as a map of (z, e), z_aug = [z, μ(z) + σ(z)·e] has Jacobian
    [[I, 0], [∂/∂z, diag σ]]."""
    coupling = perturb(CrossUnitCoupling(cond_channels=3, growth_rate=2), 0.3)
    z, e = torch.randn(1, 3, 2, 2), torch.randn(1, 2, 2, 2)
    n = z.numel()

    def f(ze):
        zz, ee = ze[:n].view_as(z), ze[n:].view_as(e)
        return coupling(zz, torch.tanh(zz), e=ee)[0].flatten()  # conditioned on z itself

    jac = torch.autograd.functional.jacobian(f, torch.cat([z.flatten(), e.flatten()]))
    assert torch.equal(jac[:n, :n], torch.eye(n, dtype=jac.dtype))
    assert torch.all(jac[:n, n:] == 0)  # the block above the diagonal
    _, log_sigma = coupling.noise_params(torch.tanh(z))
    sigma = log_sigma.exp().flatten()
    assert torch.allclose(jac[n:, n:], torch.diag(sigma), atol=1e-12)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_sigma.sum(), atol=1e-10)
    # and the bound term of eq. 9: Σ log σ − ln N(e; 0, I)
    _, term = coupling(z, torch.tanh(z), e=e)
    log_n = torch.distributions.Normal(0.0, 1.0).log_prob(e).sum()
    assert torch.allclose(term[0], log_sigma.sum() - log_n, atol=1e-10)


def test_cross_unit_noise_goes_last_and_is_dropped_by_the_inverse():
    block = perturb(
        InvertibleDenseBlock(
            4,
            num_units=3,
            num_layers=1,
            growth_rate=2,
            mid_channels=8,
            dense_depth=1,
            dense_growth=4,
        ),
        0.1,
    )
    x = torch.randn(4, 4, 4, 4)
    init_actnorms(block, x)
    z, ldj = block(x)
    assert z.shape == (4, 8, 4, 4) and ldj.shape == (4,)
    assert (block.inverse(z) - x).abs().max() < 1e-10


def test_dense_block_conditioning_widths_follow_the_official_quirk():
    # paper block 0: 12 channels, growth 10: conditioning nets see 12, 24, 46, 78, 120 channels
    block = InvertibleDenseBlock(
        12, num_units=6, num_layers=1, growth_rate=10, mid_channels=8, dense_depth=1, dense_growth=4
    )
    widths = [c.g[0].in_channels for c in block.cross_unit]
    assert widths == [12, 24, 46, 78, 120]


def test_dequantization_flow_log_det_and_range():
    deq = perturb(
        VariationalDequantization(
            num_steps=2,
            context_channels=4,
            mid_channels=4,
            depth=1,
            growth=4,
            context_depth=1,
            context_growth=4,
        ),
        0.2,
    )
    x = torch.randint(0, 256, (2, 3, 4, 4)).double()
    context = deq.context(x)
    eps = torch.randn(2, 12, 2, 2)
    u, ldj = deq.flow(eps, context)
    assert u.shape == x.shape and torch.all((u > 0) & (u < 1))
    for i in range(2):
        expected = jacobian_logdet(
            lambda t, i=i: deq.flow(t, context[i : i + 1])[0], eps[i : i + 1]
        )
        assert torch.allclose(ldj[i], expected, atol=1e-8)
    v, term = deq(x)
    assert torch.equal(VariationalDequantization.quantize(v), x.to(torch.uint8))
    assert term.shape == (2,) and torch.isfinite(term).all()


def test_transition_round_trip_and_dropped_half_density():
    transition = Transition()
    x = torch.randn(2, 4, 4, 4)
    keep, dropped = transition(x)
    assert keep.shape == dropped.shape == (2, 8, 2, 2)
    assert torch.equal(transition.inverse(keep, dropped), x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(dropped).flatten(1).sum(1)
    assert torch.allclose(transition.log_prob_dropped(dropped), expected, atol=1e-10)


def test_prior_density_and_temperature():
    prior = perturb(LearnedGaussianPrior(3, (2, 2)), 0.5)
    z = torch.randn(4, 3, 2, 2)
    normal = torch.distributions.Normal(prior.loc, prior.log_scale.exp())
    assert torch.allclose(prior.log_prob(z), normal.log_prob(z).flatten(1).sum(1), atol=1e-10)
    cold = prior.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cold, prior.loc.expand(2, 3, 2, 2))


def test_iterative_pinv_approaches_the_pseudo_inverse_of_a_softmax_kernel():
    g = torch.Generator().manual_seed(0)
    k2 = torch.softmax(torch.randn(3, 4, 4, generator=g), dim=-2)
    exact = torch.linalg.pinv(k2)
    errors = [(iterative_pinv(k2, n) - exact).abs().max().item() for n in (1, 3, 6, 12)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-8


def test_nystrom_attention_output_shape_and_landmark_check():
    attention = NystromAttention(8, 4, num_landmarks=4)
    assert attention(torch.randn(2, 8, 4, 4)).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="landmarks"):
        attention(torch.randn(1, 8, 3, 3))
