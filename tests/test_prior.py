"""The learned Gaussian prior (densflow.prior)."""

from __future__ import annotations

import pytest
import torch
from utils import (
    perturb,
)

from densflow.prior import LearnedGaussianPrior

pytestmark = pytest.mark.usefixtures("float64")


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
