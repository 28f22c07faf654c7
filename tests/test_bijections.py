"""Every bijection: exact inverse (float64) and log-det equal to slogdet of the autograd
Jacobian."""

from __future__ import annotations

import pytest
import torch
from utils import init_actnorms, jacobian_logdet, perturb

from densflow.attention import NystromAttention, iterative_pinv
from densflow.base import forward_with_draws, squeeze, unsqueeze
from densflow.coupling import AffineCoupling, CouplingNet
from densflow.cross_unit import CrossUnitCoupling
from densflow.dequantization import VariationalDequantization
from densflow.glow import ActNorm, ChannelSwap, GlowModule, InvertibleConv1x1, LUInvertibleConv1x1
from densflow.invertible_dense_block import InvertibleDenseBlock
from densflow.multiscale import CentredSqueeze, Transition, factor_out
from densflow.noise import draw
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
    x = torch.randn(1, 3, 4, 4)
    jac = torch.autograd.functional.jacobian(lambda t: squeeze(t).flatten(), x).view(48, 48)
    assert torch.equal(jac.abs().sum(0), torch.ones(48)) and torch.equal(jac.sum(1), torch.ones(48))
    assert torch.linalg.slogdet(jac).logabsdet == 0  # a permutation: log-det 0
    assert torch.equal(unsqueeze(squeeze(x)), x)
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


def test_module_defaults_are_the_papers_config():
    # Each default lives in DenseFlowConfig; a module built on its own takes it from there.
    import inspect

    def defaults(f):
        return {
            k: p.default
            for k, p in inspect.signature(f).parameters.items()
            if p.default is not p.empty
        }

    assert defaults(CouplingNet) == {
        "dense_depth": 7,
        "dense_growth": 64,
        "num_landmarks": 4,
        "pinv_iterations": 6,
        "branches": "dense+attention",
    }
    assert defaults(NystromAttention) == {"num_landmarks": 4, "pinv_iterations": 6}
    assert defaults(iterative_pinv) == {"iterations": 6}
    assert defaults(VariationalDequantization) == {
        "num_steps": 4,
        "context_channels": 64,
        "mid_channels": 64,
        "depth": 4,
        "growth": 64,
        "context_depth": 4,
        "context_growth": 16,
    }


def test_cross_unit_coupling_jacobian_is_block_triangular_with_det_prod_sigma():
    """Eq. 7: as a map of (z, e), z_aug = [z, μ(z) + σ(z)·e] has Jacobian
    [[I, 0], [∂/∂z, diag σ]]."""
    coupling = perturb(CrossUnitCoupling(cond_channels=3, growth_rate=2), 0.3)
    z, e = torch.randn(1, 3, 2, 2), torch.randn(1, 2, 2, 2)
    n = z.numel()

    def f(ze):
        zz, ee = ze[:n].view_as(z), ze[n:].view_as(e)
        return coupling.flow_forward(zz, {"": ee}, torch.tanh(zz))[0].flatten()  # on z itself

    jac = torch.autograd.functional.jacobian(f, torch.cat([z.flatten(), e.flatten()]))
    assert torch.equal(jac[:n, :n], torch.eye(n, dtype=jac.dtype))
    assert torch.all(jac[:n, n:] == 0)  # the block above the diagonal
    _, log_sigma = coupling.noise_params(torch.tanh(z))
    sigma = log_sigma.exp().flatten()
    assert torch.allclose(jac[n:, n:], torch.diag(sigma), atol=1e-12)
    assert torch.allclose(torch.linalg.slogdet(jac).logabsdet, log_sigma.sum(), atol=1e-10)
    # and the bound term of eq. 9: Σ log σ − ln N(e; 0, I)
    _, terms = coupling.flow_forward(z, {"": e}, torch.tanh(z))
    log_n = torch.distributions.Normal(0.0, 1.0).log_prob(e).sum()
    assert torch.allclose(terms[""][0], log_sigma.sum() - log_n, atol=1e-10)


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
    z, terms = forward_with_draws(block, x)
    assert z.shape == (4, 8, 4, 4) and all(t.shape == (4,) for t in terms.values())
    assert (block.flow_inverse(z) - x).abs().max() < 1e-10


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
    v, terms = forward_with_draws(deq, x)
    assert torch.equal(VariationalDequantization.quantize(v), x.to(torch.uint8))
    assert terms[""].shape == (2,) and torch.isfinite(terms[""]).all()


def test_transition_round_trip_and_dropped_half_density():
    transition = Transition()
    x = torch.randn(2, 4, 4, 4)
    keep, terms = transition.flow_forward(x)
    assert keep.shape == (2, 8, 2, 2)
    dropped = squeeze(x)[:, 8:]  # the last 2C channels of the squeezed state leave the flow
    assert torch.equal(transition.flow_inverse(keep, {"": dropped}), x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(dropped).flatten(1).sum(1)
    assert torch.allclose(terms[""], expected, atol=1e-10)


def test_prior_density_and_temperature():
    prior = perturb(LearnedGaussianPrior(3), 0.5)
    z = torch.randn(4, 3, 2, 2)
    normal = torch.distributions.Normal(prior.loc, prior.log_scale.exp())
    assert torch.allclose(prior.log_prob(z), normal.log_prob(z).flatten(1).sum(1), atol=1e-10)
    eps = torch.randn(2, 3, 2, 2)
    cold = prior.flow_inverse(None, {"": eps}, temperature=0.0)
    assert torch.allclose(cold, prior.loc.expand(2, 3, 2, 2))
    warm = prior.flow_inverse(None, {"": eps}, temperature=0.5)
    assert torch.allclose(warm, prior.loc + 0.5 * prior.log_scale.exp() * eps, atol=1e-12)


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


def flow_steps():
    """One small instance of every kind of flow step, with an input and a context."""
    x6 = torch.randn(3, 6, 4, 4)
    return {
        "glow": (perturb(small_glow(6), 0.1), x6, None),
        "cross_unit": (perturb(CrossUnitCoupling(3, 2), 0.3), x6, torch.randn(3, 3, 4, 4)),
        "block": (
            perturb(
                InvertibleDenseBlock(
                    6, 3, 1, growth_rate=2, mid_channels=8, dense_depth=1, dense_growth=4
                ),
                0.1,
            ),
            x6,
            None,
        ),
        "transition": (Transition(), x6, None),
        "squeeze": (CentredSqueeze(), torch.rand(3, 3, 4, 4), None),
        "prior": (perturb(LearnedGaussianPrior(6), 0.3), x6, None),
        "dequantization": (
            perturb(VariationalDequantization(1, 4, 4, 1, 4, 1, 4), 0.1),
            torch.randint(0, 256, (3, 3, 4, 4)).double(),
            None,
        ),
    }


@pytest.mark.parametrize("kind", list(flow_steps()))
def test_every_flow_step_keeps_the_contract(kind):
    """flow_forward → (z, terms) with the shape output_shape predicts and one (B,) float64 term
    per name; flow_inverse, given what sampling draws (here: what the forward factored out),
    gives back x."""
    step, x, context = flow_steps()[kind]
    step.eval()
    noise = draw(step.noise_shapes(tuple(x.shape)), torch.Generator().manual_seed(0))
    z, terms = step.flow_forward(x, noise, context)
    assert tuple(z.shape) == step.output_shape(tuple(x.shape))
    assert all(t.shape == (3,) and t.dtype == torch.float64 for t in terms.values())
    sampling = step.noise_shapes(tuple(z.shape), sampling=True)
    if kind == "transition":
        assert sampling == {"": tuple(z.shape)}
        assert torch.equal(step.flow_inverse(z, {"": factor_out(x)[1]}), x)
    elif kind == "prior":
        assert torch.equal(z, x)
    elif kind == "dequantization":
        assert sampling == {} and torch.equal(step.flow_inverse(z), x.to(torch.uint8))
    else:
        assert sampling == {}
        assert (step.flow_inverse(z) - x).abs().max() < 1e-10
    if kind == "block":
        # the paper's 1-based names: f_1, h_1, f_2, h_2, f_3 (Example 1)
        assert list(terms) == ["unit1", "cross_unit1", "unit2", "cross_unit2", "unit3"]
        assert list(noise) == ["cross_unit1", "cross_unit2"]
