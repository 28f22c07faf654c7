"""Every speed switch keeps the log-likelihood of the plain float32 path (issue: performance).

float32 switches: within 1e-5 relative; bf16 autocast: within 0.01 bits/dim, with every log-det,
prior term and the bound itself still in float32.
"""

from __future__ import annotations

import pytest
import torch
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig, bits_per_dim, fixed_noise
from densflow.performance import autocast, compile_networks, to_channels_last


@pytest.fixture
def model_and_images():
    torch.manual_seed(0)
    model = perturb(DenseFlow(DenseFlowConfig.tiny(image_size=32)), 0.02)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))
    init_actnorms(model, x, generator=torch.Generator().manual_seed(1))
    return model, x


def reference_log_prob(model, x):
    with torch.no_grad(), fixed_noise(0.3):
        return model.log_prob(x)


def test_channels_last_keeps_the_float32_likelihood(model_and_images):
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    fast = to_channels_last(model)
    got = reference_log_prob(fast, to_channels_last(x))
    assert torch.allclose(got, expected, rtol=1e-5, atol=0)


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
        loss = bits_per_dim(model(x, generator=torch.Generator().manual_seed(0)), x.shape[1:]).mean()
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_autocast_rejects_unknown_modes():
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast("cpu", "fp8")


def test_compiled_networks_keep_keys_and_numbers(model_and_images):
    # The "eager" dynamo backend traces the networks without code generation: it checks the
    # wiring (what gets compiled, keys, numbers) in seconds rather than the minutes of inductor.
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    keys = list(model.state_dict())
    assert compile_networks(model, backend="eager") == 8  # 5 coupling nets + 3 conditioning nets
    assert compile_networks(model, backend="eager") == 0  # idempotent
    assert list(model.state_dict()) == keys
    assert torch.allclose(reference_log_prob(model, x), expected, rtol=1e-5, atol=0)


def test_compile_falls_back_to_eager_when_the_backend_fails(model_and_images):
    model, x = model_and_images
    expected = reference_log_prob(model, x)

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    compile_networks(model, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="running .* eagerly"):
        got = reference_log_prob(model, x)
    assert torch.equal(got, expected)
