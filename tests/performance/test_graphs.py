"""CUDA-graph replay of the flow's passes (densflow.performance.graphs); on a CPU, the eager
numbers to the bit."""

from __future__ import annotations

import copy

import pytest
import torch

from densflow import bits_per_dim
from densflow.coupling import CouplingNet
from densflow.performance import (
    autocast,
    compile_model,
)


def passes(source, x, amp="none", seed=3):
    """The single-sample bound, the IW bound (k=5 in chunks of 2: a last chunk of 1) and samples
    at temperature 0.7 of ``source`` (the model, or a GraphedFlow of it, which has the same
    methods and applies its own amp), each from a generator seeded ``seed``, and the generator
    states after each."""
    out = []
    with torch.no_grad(), autocast(x.device, amp):
        for fn in (
            lambda g: source.log_prob(x, g),
            lambda g: source.iw_log_prob(x, 5, 2, g),
            lambda g: source.sample(3, 0.7, g),
        ):
            g = torch.Generator().manual_seed(seed)
            out.append((fn(g), g.get_state()))
    return out


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_graphed_flow_on_a_cpu_gives_the_eager_numbers_and_draws_to_the_bit(model_and_images, amp):
    from densflow.performance import GraphedFlow

    model, x = model_and_images
    model.eval()
    flow = GraphedFlow(model, amp)
    expected = passes(model, x, amp)
    for _ in range(2):  # the first call of each shape sets up its buffers, the second reuses them
        got = passes(flow, x)
        for (want, want_state), (have, have_state) in zip(expected, got, strict=True):
            assert have.dtype == want.dtype and torch.equal(have, want)
            assert torch.equal(have_state, want_state)  # the same draws, no more, no fewer
    # One pass each: the bound (which the IW chunk of 1 is too: the same shapes), the IW chunks
    # of 2, the sampler; none captured here.
    assert len(flow.calls) == 3 and not flow.captured
    assert expected[2][0].dtype == torch.uint8
    # Another seed gives other numbers: the draws are really the caller's.
    other = passes(flow, x, seed=4)
    assert not torch.equal(other[0][0], expected[0][0])
    assert not torch.equal(other[2][0], expected[2][0])


def test_graphed_flow_respects_amp(model_and_images):
    from densflow.performance import GraphedFlow

    model, x = model_and_images
    model.eval()
    dtypes = []
    net = next(m for m in model.modules() if isinstance(m, CouplingNet))
    net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    fp32 = GraphedFlow(model).log_prob(x, torch.Generator().manual_seed(0))
    assert set(dtypes) == {torch.float32}
    dtypes.clear()
    bf16 = GraphedFlow(model, "bf16").log_prob(x, torch.Generator().manual_seed(0))
    assert set(dtypes) == {torch.bfloat16} and bf16.dtype == torch.float32
    gap = (bits_per_dim(bf16, x.shape[1:]) - bits_per_dim(fp32, x.shape[1:])).abs().max()
    assert 0 < gap < 0.01
    with pytest.raises(ValueError, match="amp must be one of"):
        GraphedFlow(model, "fp16")


def test_graphed_flow_refuses_what_a_graph_cannot_hold(model_and_images):
    from densflow.performance import CapturedCall, GraphedFlow

    model, x = model_and_images
    flow = GraphedFlow(model.train())
    with pytest.raises(ValueError, match=r"^GraphedFlow runs evaluation passes: put the model in"):
        flow.log_prob(x)
    with pytest.raises(ValueError, match="eval mode"):
        flow.sample(2)
    model.eval()
    with pytest.raises(ValueError, match=r"^k must be an integer >= 1, got 0"):
        flow.iw_log_prob(x, 0)
    with pytest.raises(ValueError, match=r"^expected uint8 images"):
        flow.log_prob(x.float())
    with pytest.raises(TypeError, match="GraphedFlow expects a DenseFlow, got Linear"):
        GraphedFlow(torch.nn.Linear(2, 2))
    # One graph, one set of shapes: the first input that differs, named in one line.
    call = CapturedCall(model.terms_from_noise, x.float(), model.draw_noise(4), name="terms")
    with pytest.raises(ValueError) as info:
        call(x[:2].float(), model.draw_noise(2))
    message = str(info.value)
    assert "\n" not in message and message.startswith("terms was captured for other inputs")
    assert "input 0: captured for (4, 3, 32, 32) float32 on cpu, got (2, 3, 32, 32)" in message
    with pytest.raises(ValueError, match=r"input 1 'dequantization': captured for .* float32 on"):
        call(x.float(), {k: v.double() for k, v in model.draw_noise(4).items()})
    compiled = copy.deepcopy(model)
    compile_model(compiled, backend="eager")
    with pytest.raises(ValueError, match="choose one of compile and cuda_graphs"):
        GraphedFlow(compiled)


def test_graphed_sampling_inverts_the_1x1_convolutions_without_a_host_read(
    model_and_images, monkeypatch
):
    # torch.linalg.inv reads its error flag back to the host, which a CUDA graph cannot hold;
    # inv_ex is the same solve. The swap lasts for the sampling pass only.
    from densflow.glow import InvertibleConv1x1
    from densflow.performance import CapturableConv1x1, GraphedFlow

    model, _ = model_and_images
    plain = [m for m in model.modules() if type(m) is InvertibleConv1x1]
    assert plain  # the tiny model has plain 1×1 convolutions to swap
    for dtype in (torch.float32, torch.float64):
        w = plain[0].inverse_weight(dtype)
        assert torch.equal(CapturableConv1x1(plain[0]).inverse_weight(dtype), w)
    used = []
    real = CapturableConv1x1.inverse_weight
    monkeypatch.setattr(
        CapturableConv1x1, "inverse_weight", lambda self, dtype: used.append(1) or real(self, dtype)
    )
    GraphedFlow(model.eval()).sample(2, generator=torch.Generator().manual_seed(0))
    # Each plain 1×1 convolution of the flow inverted without a host read (sampling does not run
    # the dequantization's own flow).
    assert len(used) == sum(type(m) is InvertibleConv1x1 for m in model.blocks.modules()) > 0
    assert [m for m in model.modules() if type(m) is InvertibleConv1x1] == plain  # swapped back
