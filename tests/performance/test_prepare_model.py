"""prepare_model (densflow.performance): the transforms a loaded model is given."""

from __future__ import annotations

import torch
from utils import reference_log_prob

from densflow import DenseFlow
from densflow.performance import (
    ComposedCouplingNet,
    prepare_model,
    to_channels_last,
)


def test_prepare_model_applies_the_transforms_it_is_asked_for(model_and_images, monkeypatch):
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    compiled = []
    monkeypatch.setattr("densflow.performance.compile_model", compiled.append)
    assert prepare_model(model, channels_last=True, compile=True) is model
    assert compiled == [model]
    assert any(type(m) is ComposedCouplingNet for m in model.modules())
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for p in model.parameters()
        if p.dim() == 4
    )
    plain = prepare_model(DenseFlow(model.config), compose=False)
    assert not any(type(m) is ComposedCouplingNet for m in plain.modules())
    assert torch.allclose(reference_log_prob(model, to_channels_last(x)), expected, rtol=1e-5)
