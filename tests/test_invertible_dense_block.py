"""The invertible dense block (densflow.invertible_dense_block): units joined by cross-unit
couplings."""

from __future__ import annotations

import pytest
import torch
from utils import (
    init_actnorms,
    noise_jacobian_logdet,
    perturb,
)

from densflow.base import forward_with_draws, standard_normal_log_prob
from densflow.invertible_dense_block import InvertibleDenseBlock

pytestmark = pytest.mark.usefixtures("float64")


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


def test_the_terms_are_the_log_det_of_the_map_of_x_and_its_noise():
    # As a map of (x, e_1, e_2) the block is a bijection (eq. 7): the sum of its terms, plus the
    # ln N(e_i) that eq. 9 subtracts, is ln|det| of its Jacobian.
    block = perturb(
        InvertibleDenseBlock(
            2, num_units=3, num_layers=1, growth_rate=1, mid_channels=8, dense_depth=1,
            dense_growth=4,
        ),
        0.1,
    )  # fmt: skip
    init_actnorms(block, torch.randn(4, 2, 2, 2))
    log_det, terms, noise = noise_jacobian_logdet(block, torch.randn(1, 2, 2, 2))
    assert list(noise) == ["cross_unit1", "cross_unit2"]
    expected = sum(terms.values()) + sum(standard_normal_log_prob(e) for e in noise.values())
    assert torch.allclose(log_det, expected[0], atol=1e-8)
