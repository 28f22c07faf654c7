"""The multi-scale reshapes (densflow.multiscale): the first squeeze and the transitions."""

from __future__ import annotations

import pytest
import torch

from densflow.base import squeeze
from densflow.multiscale import CentredSqueeze, Transition, factor_out

pytestmark = pytest.mark.usefixtures("float64")


def test_transition_round_trip_and_dropped_half_density():
    transition = Transition()
    x = torch.randn(2, 4, 4, 4)
    keep, terms = transition.flow_forward(x)
    assert keep.shape == (2, 8, 2, 2)
    dropped = squeeze(x)[:, 8:]  # the last 2C channels of the squeezed state leave the flow
    assert torch.equal(transition.flow_inverse(keep, {"": dropped}), x)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(dropped).flatten(1).sum(1)
    assert torch.allclose(terms[""], expected, atol=1e-10)


def test_the_first_squeeze_centres_and_inverts():
    step = CentredSqueeze()
    v = torch.rand(2, 3, 4, 4)
    z, terms = step.flow_forward(v)
    assert terms == {} and z.shape == step.output_shape(tuple(v.shape)) == (2, 12, 2, 2)
    assert torch.all(z.abs() <= 0.5) and torch.allclose(z.mean(), v.mean() - 0.5)
    assert torch.allclose(step.flow_inverse(z), v, rtol=0, atol=1e-15)


def test_a_transition_samples_its_dropped_half_at_the_temperature():
    keep = torch.randn(2, 8, 2, 2)
    eps = torch.randn(2, 8, 2, 2)
    cold = Transition().flow_inverse(keep, {"": eps}, temperature=0.0)
    assert torch.equal(factor_out(cold)[0], keep) and torch.all(factor_out(cold)[1] == 0)
    warm = Transition().flow_inverse(keep, {"": eps}, temperature=0.5)
    assert torch.allclose(factor_out(warm)[1], 0.5 * eps, rtol=0, atol=0)
