"""bf16 autocast and channels_last (densflow.performance.precision) keep the likelihood of the
plain float32 path: within 1e-5 relative for float32 switches, within 0.01 bits/dim for bf16, with
every log-det, prior term and the bound itself still in float32."""

from __future__ import annotations

import pytest
import torch
from utils import reference_log_prob

from densflow import bits_per_dim, fixed_noise
from densflow.attention import iterative_pinv
from densflow.performance import (
    autocast,
    compile_model,
    to_channels_last,
)


def test_channels_last_keeps_the_float32_likelihood(model_and_images):
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    fast = to_channels_last(model)
    got = reference_log_prob(fast, to_channels_last(x))
    assert torch.allclose(got, expected, rtol=1e-5, atol=0)


@pytest.mark.compile
@pytest.mark.parametrize("backend", [None, "aot_eager"])
def test_channels_last_gradients_have_their_parameters_layout(model_and_images, backend):
    # What lets the Trainer silence DDP's stride warning under channels_last: a gradient's strides
    # may differ from its parameter's only in dimensions of size 1, which address no memory.
    model, x = model_and_images
    model = to_channels_last(model.train())
    if backend is not None:
        compile_model(model, backend=backend)
    loss = bits_per_dim(
        model(to_channels_last(x), generator=torch.Generator().manual_seed(0)), x.shape[1:]
    ).mean()
    loss.backward()

    def layout(t):
        return [stride for size, stride in zip(t.shape, t.stride(), strict=True) if size > 1]

    params = list(model.named_parameters())
    assert any(p.dim() == 4 and not p.is_contiguous() for _, p in params)  # NHWC 3×3 weights
    for name, p in params:
        assert layout(p.grad) == layout(p), name


def test_bf16_autocast_keeps_log_dets_in_float32_and_bpd_within_0_01(model_and_images):
    model, x = model_and_images
    expected = bits_per_dim(reference_log_prob(model, x), x.shape[1:])
    with torch.no_grad(), fixed_noise(0.3), autocast("cpu", "bf16"):
        terms = model.log_prob_terms(x)
    assert all(t.dtype == torch.float32 for t in terms.values())
    got = bits_per_dim(sum(terms.values()), x.shape[1:])
    assert (got - expected).abs().max() < 0.01


def test_bf16_autocast_training_step_has_a_float32_loss_and_finite_grads(model_and_images):
    model, x = model_and_images
    model.train()
    with autocast("cpu", "bf16"):
        loss = bits_per_dim(
            model(x, generator=torch.Generator().manual_seed(0)), x.shape[1:]
        ).mean()
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_autocast_rejects_unknown_modes():
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast("cpu", "fp8")


def test_the_pseudo_inverse_iteration_runs_in_float32_under_bf16_autocast(
    model_and_images, monkeypatch
):
    # Six rounds of a cubic matrix polynomial amplify bf16 rounding; compiled bf16 training gave
    # non-finite gradients before the iteration was kept in float32.
    from densflow import attention

    dtypes = []

    def recording_pinv(k2, iterations):
        dtypes.append((k2.dtype, torch.is_autocast_enabled("cpu")))
        return iterative_pinv(k2, iterations)

    monkeypatch.setattr(attention, "iterative_pinv", recording_pinv)
    model, x = model_and_images
    with torch.no_grad(), fixed_noise(0.3), autocast("cpu", "bf16"):
        model.log_prob(x)
    assert dtypes and set(dtypes) == {(torch.float32, False)}
