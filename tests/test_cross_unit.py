"""The cross-unit coupling (densflow.cross_unit, eqs. 6–9)."""

from __future__ import annotations

import pytest
import torch
from utils import (
    perturb,
)

from densflow.base import forward_with_draws
from densflow.cross_unit import CrossUnitCoupling

pytestmark = pytest.mark.usefixtures("float64")


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


def test_cross_unit_coupling_needs_its_context_and_its_inverse_drops_the_noise():
    coupling = perturb(CrossUnitCoupling(cond_channels=3, growth_rate=2), 0.3)
    z, cond = torch.randn(2, 4, 2, 2), torch.randn(2, 3, 2, 2)
    with pytest.raises(ValueError, match="needs context"):
        coupling.flow_forward(z, {"": torch.randn(2, 2, 2, 2)})
    z_aug, terms = forward_with_draws(coupling, z, torch.Generator().manual_seed(0), cond)
    assert z_aug.shape == (2, 6, 2, 2) and list(terms) == [""]
    assert torch.equal(z_aug[:, :4], z) and torch.equal(coupling.flow_inverse(z_aug), z)
