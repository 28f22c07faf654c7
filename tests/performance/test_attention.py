"""The pseudo-inverse written for a compiler (densflow.performance.attention)."""

from __future__ import annotations

import copy

import torch
from utils import perturb

from densflow.attention import NystromAttention
from densflow.performance import (
    BroadcastPinv,
    fuse_pinv,
)


def test_fused_pseudo_inverse_attention_equals_the_plain_one(float64):
    plain = perturb(NystromAttention(8, 4, num_landmarks=4), 0.3)
    fused = copy.deepcopy(plain)
    assert fuse_pinv(fused) == 1 and type(fused.pinv) is BroadcastPinv
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 8, 4, 4)
    assert torch.allclose(fused(x), plain(x), rtol=0, atol=1e-12)
