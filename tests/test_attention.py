"""Nyström attention and its iterative pseudo-inverse (densflow.attention)."""

from __future__ import annotations

import pytest
import torch
from utils import defaults

from densflow import DenseFlowConfig
from densflow.attention import IterativePinv, NystromAttention, iterative_pinv

pytestmark = pytest.mark.usefixtures("float64")


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


def test_attention_defaults_are_the_paper_preset():
    paper = DenseFlowConfig.paper()
    assert defaults(NystromAttention) == {
        "num_landmarks": paper.num_landmarks,
        "pinv_iterations": paper.pinv_iterations,
    }
    assert defaults(iterative_pinv) == {"iterations": paper.pinv_iterations}
    assert defaults(IterativePinv) == {"iterations": paper.pinv_iterations}
    assert NystromAttention(8, 4).pinv.iterations == paper.pinv_iterations
