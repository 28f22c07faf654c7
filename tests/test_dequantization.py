"""Variational dequantization (densflow.dequantization)."""

from __future__ import annotations

import pytest
import torch
from utils import defaults, jacobian_logdet, perturb

from densflow import DenseFlowConfig
from densflow.base import forward_with_draws
from densflow.dequantization import VariationalDequantization

pytestmark = pytest.mark.usefixtures("float64")


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


def test_dequantization_defaults_are_the_paper_preset():
    paper = DenseFlowConfig.paper()
    assert defaults(VariationalDequantization) == {
        "num_steps": paper.deq_num_steps,
        "context_channels": paper.deq_context_channels,
        "mid_channels": paper.deq_mid_channels,
        "depth": paper.deq_depth,
        "growth": paper.deq_growth,
        "context_depth": paper.deq_context_depth,
        "context_growth": paper.deq_context_growth,
    }
