"""The step contract (densflow.base): the squeeze, forward_with_draws, and every step of the
flow keeping the contract."""

from __future__ import annotations

import pytest
import torch
from utils import (
    perturb,
    small_glow,
)

from densflow import DenseFlow, DenseFlowConfig
from densflow.base import FlowStep, forward_with_draws, squeeze, unsqueeze
from densflow.cross_unit import CrossUnitCoupling
from densflow.dequantization import VariationalDequantization
from densflow.input_augmentation import InputAugmentedBlock
from densflow.invertible_dense_block import InvertibleDenseBlock
from densflow.multiscale import CentredSqueeze, Transition, factor_out
from densflow.noise import draw
from densflow.prior import LearnedGaussianPrior

pytestmark = pytest.mark.usefixtures("float64")


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


def test_forward_with_draws_makes_the_models_draws():
    # The model draws the dequantization's base noise first: the same seed, the same term.
    model = DenseFlow(DenseFlowConfig.tiny()).eval()
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        terms = model.log_prob_terms(x, torch.Generator().manual_seed(5))
        v, deq = forward_with_draws(
            model.dequantization, x.to(model.prior.loc.dtype), torch.Generator().manual_seed(5)
        )
        _, other = forward_with_draws(
            model.dequantization, x.to(model.prior.loc.dtype), torch.Generator().manual_seed(6)
        )
    assert torch.equal(deq[""], terms["dequantization"])
    assert not torch.equal(other[""], deq[""])  # the draws are the generator's
    assert torch.all((v > 0) & (v < 1))


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
        "input_augmentation": (
            perturb(
                InputAugmentedBlock(6, 1, 2, mid_channels=8, dense_depth=1, dense_growth=4), 0.1
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
    assert isinstance(step, FlowStep)
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
    if kind == "input_augmentation":
        assert list(terms) == ["augmentation", "unit"] and list(noise) == ["augmentation"]
