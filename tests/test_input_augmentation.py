"""One-shot input augmentation (densflow.input_augmentation)."""

from __future__ import annotations

import pytest
import torch
from utils import (
    init_actnorms,
    noise_jacobian_logdet,
    perturb,
)

from densflow import DenseFlow, DenseFlowConfig
from densflow.base import forward_with_draws, standard_normal_log_prob
from densflow.input_augmentation import InputAugmentedBlock
from densflow.model import input_noise_channels

pytestmark = pytest.mark.usefixtures("float64")


def small_block(in_channels: int = 2, noise_channels: int = 2) -> InputAugmentedBlock:
    block = InputAugmentedBlock(
        in_channels, 2, noise_channels, mid_channels=8, dense_depth=1, dense_growth=4
    )
    return perturb(block, 0.1)


def test_input_augmentation_appends_its_noise_once_then_runs_one_unit():
    block = small_block()
    assert block.noise_channels == 2 and block.out_channels == 4 and len(block.unit) == 2
    x = torch.randn(3, 2, 2, 2)
    init_actnorms(block, x)
    assert block.noise_shapes(tuple(x.shape)) == {"augmentation": (3, 2, 2, 2)}
    assert block.noise_shapes((3, 4, 2, 2), sampling=True) == {}
    z, terms = forward_with_draws(block, x, torch.Generator().manual_seed(0))
    assert z.shape == (3, 4, 2, 2) and block.output_shape(tuple(x.shape)) == tuple(z.shape)
    assert list(terms) == ["augmentation", "unit"]
    assert (block.flow_inverse(z) - x).abs().max() < 1e-10
    with pytest.raises(ValueError, match="noise_channels >= 1"):
        InputAugmentedBlock(2, 1, 0, mid_channels=8)


def test_the_terms_are_the_log_det_of_the_map_of_x_and_its_noise():
    block = small_block()
    init_actnorms(block, torch.randn(4, 2, 2, 2))
    log_det, terms, noise = noise_jacobian_logdet(block, torch.randn(1, 2, 2, 2))
    expected = sum(terms.values()) + standard_normal_log_prob(noise["augmentation"])
    assert torch.allclose(log_det, expected[0], atol=1e-8)


def test_the_model_augments_its_input_once_with_as_many_latent_dimensions():
    config = DenseFlowConfig.tiny(augmentation="input")
    model = DenseFlow(config).eval()
    first, *rest = model.blocks
    assert isinstance(first, InputAugmentedBlock)
    assert first.noise_channels == input_noise_channels(config) >= 1
    assert all(block.growth_rate == 0 for block in rest)  # no noise after the input
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        terms = model.log_prob_terms(x, torch.Generator().manual_seed(0))
    assert [k for k in terms if k.startswith("block0.")] == ["block0.augmentation", "block0.unit"]
