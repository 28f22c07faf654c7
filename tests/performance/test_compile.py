"""``torch.compile`` of the flow (densflow.performance.compile): the same keys, numbers and draws
as the eager model, one graph per pure function, an eager fallback."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from utils import loss_and_flat_grads, reference_log_prob

from densflow import fixed_noise
from densflow.performance import (
    COMPILED_FUNCTIONS,
    BroadcastPinv,
    compile_model,
    compose_coupling_nets,
)


@pytest.mark.compile
def test_compiled_model_keeps_keys_and_numbers(model_and_images):
    # The "eager" dynamo backend traces the flow without code generation: it checks the wiring
    # (what gets compiled, keys, numbers) in seconds, not minutes.
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    keys = list(model.state_dict())
    assert COMPILED_FUNCTIONS == ("terms_from_noise", "sample_from_noise")
    assert compile_model(model, backend="eager") == list(COMPILED_FUNCTIONS)
    assert compile_model(model, backend="eager") == []  # idempotent
    assert list(model.state_dict()) == keys
    assert torch.allclose(reference_log_prob(model, x), expected, rtol=1e-5, atol=0)
    twin = copy.deepcopy(model)  # the copy's compiled methods must use the copy's weights
    with torch.no_grad():
        twin.prior.loc.add_(1.0)
    assert not torch.allclose(reference_log_prob(twin, x), expected, rtol=1e-3, atol=0)
    assert torch.allclose(reference_log_prob(model, x), expected, rtol=1e-5, atol=0)


@pytest.mark.compile
def test_compiled_model_draws_from_the_callers_generator_and_honours_fixed_noise(model_and_images):
    # Dynamo must not bake one draw, nor the fixed_noise constant, into the graph: the noise is
    # drawn eagerly before the compiled pass and enters it as an input.
    model, x = model_and_images
    model.eval()

    def run():
        with torch.no_grad():
            seeded = [model(x, generator=torch.Generator().manual_seed(s)) for s in (0, 1, 0)]
            with fixed_noise(0.3):
                fixed = model(x)
            with fixed_noise(0.5):
                other = model(x)
            sample = model.sample_continuous(2, generator=torch.Generator().manual_seed(2))
        return seeded, fixed, other, sample

    (e0, e1, _), e_fixed, e_other, e_sample = run()
    compile_model(model, backend="eager")
    (c0, c1, c0_again), c_fixed, c_other, c_sample = run()
    assert torch.equal(c0, c0_again) and not torch.allclose(c0, c1)
    for got, expected in (
        (c0, e0),
        (c1, e1),
        (c_fixed, e_fixed),
        (c_other, e_other),
        (c_sample, e_sample),
    ):
        assert torch.allclose(got, expected, rtol=1e-5, atol=0)


@pytest.mark.compile
def test_the_likelihood_and_the_sampler_each_trace_to_one_graph(model_and_images):
    # A graph break (a random draw, a host read, an unsupported call) splits the flow into many
    # small graphs and costs most of what compiling buys.
    model, x = model_and_images
    model.train()
    noise = model.draw_noise(x.shape[0], torch.Generator().manual_seed(0))
    likelihood = torch._dynamo.explain(model.terms_from_noise)(x.float(), noise)
    noise = model.draw_noise(2, torch.Generator().manual_seed(0), sampling=True)
    with torch.no_grad():
        sampler = torch._dynamo.explain(model.sample_from_noise)(noise, 0.7)
    for report in (likelihood, sampler):
        assert (report.graph_count, report.graph_break_count) == (1, 0), report.break_reasons


@pytest.mark.compile
def test_inductor_compiled_training_step_matches_eager(model_and_images):
    # The real code generator (a C++ compiler on the CPU), forward and backward, on a model small
    # enough to compile in about a minute: loss and gradients of the composed and compiled model
    # (what training runs) as the plain eager float32 path's.
    model, x = model_and_images
    model.train()
    compiled = copy.deepcopy(model)
    compile_model(compose_coupling_nets(compiled))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to eager must fail here
        got_loss, got_grads = loss_and_flat_grads(compiled, x)
    expected_loss, expected_grads = loss_and_flat_grads(model, x)
    assert torch.allclose(got_loss, expected_loss, rtol=1e-5, atol=0)
    # As one vector: some entries are exactly zero in theory and 1e-10 noise in either path.
    assert (got_grads - expected_grads).norm() <= 1e-5 * expected_grads.norm()


def test_compile_model_rejects_other_modules():
    with pytest.raises(TypeError, match="expects a DenseFlow"):
        compile_model(torch.nn.Linear(2, 2))


@pytest.mark.compile
def test_compile_falls_back_to_eager_when_the_backend_fails(model_and_images):
    model, x = model_and_images
    expected = reference_log_prob(model, x)

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    compile_model(model, backend=broken_backend)
    assert any(type(m) is BroadcastPinv for m in model.modules())
    with pytest.warns(RuntimeWarning, match="running DenseFlow.terms_from_noise eagerly"):
        got = reference_log_prob(model, x)
    assert torch.equal(got, expected)
    # back to the eager form of the pseudo-inverse, which is faster when not compiled
    assert not any(type(m) is BroadcastPinv for m in model.modules())
