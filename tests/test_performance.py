"""Every speed transform keeps the log-likelihood of the plain float32 path.

float32 switches: within 1e-5 relative; bf16 autocast: within 0.01 bits/dim, with every log-det,
prior term and the bound itself still in float32.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from utils import loss_and_flat_grads, perturb

from densflow import DenseFlow, DenseFlowConfig, bits_per_dim, fixed_noise
from densflow.attention import NystromAttention, iterative_pinv
from densflow.coupling import CouplingNet
from densflow.performance import (
    COMPILED_FUNCTIONS,
    BroadcastPinv,
    ComposedCouplingNet,
    autocast,
    compile_model,
    compose_coupling_nets,
    fuse_pinv,
    prepare_model,
    to_channels_last,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def reference_log_prob(model, x):
    with torch.no_grad(), fixed_noise(0.3):
        return model.log_prob(x)


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


def small_coupling_net():
    return perturb(CouplingNet(3, 6, mid_channels=8, dense_depth=2, dense_growth=4), 0.3)


def test_composed_coupling_net_equals_the_plain_network_and_its_gradients(float64):
    # The composed 1×1 convolutions: the output and every parameter's gradient equal those of
    # the network called layer by layer (Fig. 2), in float64.
    plain = small_coupling_net()
    composed = compose_coupling_nets(copy.deepcopy(plain))
    assert type(composed) is ComposedCouplingNet
    x, weights = torch.randn(2, 3, 8, 8), torch.randn(2, 6, 8, 8)
    results = []
    for net in (composed, plain):
        y = net(x)
        (y * weights).sum().backward()
        results.append((y.detach(), [p.grad for p in net.parameters()]))
    (y_fast, g_fast), (y_plain, g_plain) = results
    assert y_plain.abs().max() > 0.1 and torch.allclose(y_fast, y_plain, rtol=0, atol=1e-12)
    scale = max(g.abs().max() for g in g_plain)  # some are ~0: a bias followed by a batch norm
    for (name, _), a, b in zip(plain.named_parameters(), g_fast, g_plain, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12 * scale), name


def test_composed_coupling_net_composes_its_weights_in_float32_under_bf16_autocast():
    # The products of weight matrices are formed in float32 and cast to bf16 once, by the
    # convolution; autocast must not round them to bf16 first.
    net = compose_coupling_nets(small_coupling_net().float())
    composed = [net._input_projection()[0], net._output_projection()[0]]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = [net._input_projection()[0], net._output_projection()[0]]
        y = net(torch.randn(2, 3, 8, 8, dtype=torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(composed, under_autocast, strict=True))
    assert y.dtype == torch.bfloat16


def test_composing_a_model_keeps_its_parameters_state_dict_and_numbers(model_and_images):
    model, x = model_and_images
    expected = reference_log_prob(model, x)
    # a training step from the same state (BatchNorm statistics included) on each
    expected_loss, expected_grads = loss_and_flat_grads(copy.deepcopy(model).train(), x)
    got_loss, got_grads = loss_and_flat_grads(
        compose_coupling_nets(copy.deepcopy(model)).train(), x
    )
    assert torch.allclose(got_loss, expected_loss, rtol=1e-5, atol=0)
    assert (got_grads - expected_grads).norm() <= 1e-5 * expected_grads.norm()

    params, state = list(model.parameters()), model.state_dict()
    nets = sum(type(m) is CouplingNet for m in model.modules())
    assert compose_coupling_nets(model) is model
    assert sum(type(m) is ComposedCouplingNet for m in model.modules()) == nets > 0
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))  # optimizers
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.allclose(reference_log_prob(model, x), expected, rtol=1e-5, atol=0)
    copied = copy.deepcopy(model)  # follows copies, and loads into a plain model
    assert all(type(m) is not CouplingNet for m in copied.modules())
    twin = DenseFlow(model.config).eval()
    twin.load_state_dict(copied.state_dict())
    assert torch.equal(reference_log_prob(twin, x), expected)


def test_fused_pseudo_inverse_attention_equals_the_plain_one(float64):
    plain = perturb(NystromAttention(8, 4, num_landmarks=4), 0.3)
    fused = copy.deepcopy(plain)
    assert fuse_pinv(fused) == 1 and type(fused.pinv) is BroadcastPinv
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 8, 4, 4)
    assert torch.allclose(fused(x), plain(x), rtol=0, atol=1e-12)


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


@pytest.mark.slow
def test_benchmark_reports_ratios_against_the_baseline_of_the_same_run(tmp_path):
    import benchmark  # benchmarks/benchmark.py, on sys.path above

    out = tmp_path / "report.json"
    benchmark.main(
        [
            "--preset",
            "tiny",
            "--image-size",
            "16",
            "--batch-size",
            "2",
            "--variants",
            "eager,channels_last,ddp2",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--eval-iters",
            "1",
            "--iw-samples",
            "4",
            "--iw-chunk",
            "2",
            "--eval-batch",
            "2",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    (setup,) = report["setups"]
    assert len(setup["rounds"]) == 1  # the raw measurements travel with the medians
    eager, channels_last, ddp2 = setup["rows"]
    assert setup["baseline"] == "eager" and eager["train_images_speedup"] == 1.0
    for row in (channels_last, ddp2):
        assert row["train_images_speedup"] == pytest.approx(
            row["train_images_per_s"] / eager["train_images_per_s"]
        )
        assert row["train_losses_finite"] and row["max_rel_logp_diff"] < 1e-5
    assert eager["train_losses_finite"]
    # The two ranks train; evaluation and sampling are not theirs to measure.
    assert math.isnan(ddp2["iw_image_samples_per_s"]) and math.isnan(ddp2["sample_images_per_s"])
    assert ddp2["train_peak_bytes"] > 0  # both ranks' peaks, summed


@pytest.mark.slow
def test_benchmark_processes_return_in_order_and_report_a_failure_with_its_traceback():
    import benchmark

    assert benchmark.in_fresh_processes(math.sqrt, [(9.0,), (4.0,)]) == [3.0, 2.0]
    with pytest.raises(RuntimeError, match=r"(?s)benchmark process 1 failed:.*math domain error"):
        benchmark.in_fresh_processes(math.sqrt, [(4.0,), (-1.0,)])


def test_benchmark_ddp_variant_needs_a_batch_that_splits():
    import benchmark

    with pytest.raises(ValueError, match="does not split into 2 equal shards"):
        benchmark.measure_fresh(
            benchmark.Setup("tiny", DenseFlowConfig.tiny(), 3), "ddp2", torch.device("cpu"), None
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_benchmark_peak_memory_sees_a_transient_allocation():
    # The kernel's high-water mark: a peak freed again before the end still counts, with no
    # sampling thread to compete with the timed threads. Fresh pages from mmap (malloc could
    # reuse memory that is already resident in this long-lived process).
    import mmap

    import benchmark

    with benchmark.PeakRSS() as rss:
        with mmap.mmap(-1, 64 * 2**20) as pages:  # 64 MiB, written, so resident
            mib = b"\1" * 2**20
            for _ in range(64):
                pages.write(mib)
    assert 60 * 2**20 < rss.bytes < 256 * 2**20


GPU_CHECK_PARTS = [
    "benchmark_paper32",
    "train_paper",
    "eval_iw",
    "cuda_tests",
    "checkpoint_stall",
    "benchmark_paper64",
    "benchmark_paper32_compiled",
    "train_paper_compiled",
]


def run_gpu_check(tmp_path, stub_body: str, budget: int | None = None):
    """benchmarks/gpu_check.sh with a stand-in interpreter (there is no GPU here): the stub
    answers the script's CUDA check and logs every other call."""
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = -c ]; then echo "Stub GPU"; exit 0; fi\n'
        f'printf "%s\\0" "$@" >> "{tmp_path}/calls"; printf "\\n" >> "{tmp_path}/calls"\n'
        f"{stub_body}\n"
    )
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub)}
    env.pop("BUDGET", None)
    if budget is not None:
        env["BUDGET"] = str(budget)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls_file = tmp_path / "calls"
    lines = calls_file.read_text().splitlines() if calls_file.exists() else []
    calls = [line.rstrip("\0").split("\0") for line in lines]  # each call's arguments
    ran = [p for p in GPU_CHECK_PARTS if f"== {p}: exit" in done.stdout]
    return done, calls, ran


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_runs_every_part_and_reports_a_failed_one(tmp_path):
    # A failing part (the CUDA tests here) is reported, the parts after it still run, and the
    # summary is written last.
    done, calls, ran = run_gpu_check(tmp_path, 'case "$*" in *"-m cuda"*) exit 1;; esac')
    assert ran == GPU_CHECK_PARTS and len(calls) == len(GPU_CHECK_PARTS) + 1
    assert "== cuda_tests: exit 1 ==" in done.stdout and done.returncode == 1
    assert " ".join(calls[0]).find("--preset paper --image-size 32 --batch-size 64") > 0
    assert calls[-1] == ["benchmarks/gpu_summary.py", str(tmp_path / "out")]
    assert (tmp_path / "out" / "device.txt").read_text().strip() == "Stub GPU"
    assert (tmp_path / "out" / "train_paper.seconds").read_text().strip().isdigit()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_stays_within_its_budget(tmp_path):
    # 62 s of budget: the first part gets it all (and takes 3 s); then under a minute is left,
    # so the rest is skipped rather than started and cut short; the summary still runs.
    done, calls, ran = run_gpu_check(tmp_path, "sleep 3", budget=62)
    assert ran == ["benchmark_paper32"] and len(calls) == 2
    assert re.search(r"== benchmark_paper32 \(limit 6[12]s\) ==", done.stdout)  # 1 s ticks
    assert done.stdout.count("skipped") == len(GPU_CHECK_PARTS) - 1 and done.returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_every_command_of_the_gpu_check_is_accepted_by_its_program(tmp_path):
    # A misspelt option would cost a part of a short GPU loan: each call the script makes is
    # parsed here by the program it calls (the CUDA device aside, the same arguments).
    import benchmark
    import checkpoint_stall

    from densflow.cli import build_parser

    done, calls, _ = run_gpu_check(tmp_path, "")
    assert done.returncode == 0, done.stdout + done.stderr
    seen = set()
    for call in calls:
        if call[0] == "benchmarks/benchmark.py":
            args = benchmark.build_parser().parse_args(call[1:])
            assert set(args.variants.split(",")) <= set(benchmark.VARIANTS), call
        elif call[0] == "benchmarks/checkpoint_stall.py":
            checkpoint_stall.build_parser().parse_args(call[1:])
        elif call[:2] == ["-m", "densflow"]:
            build_parser().parse_args(call[2:])
        elif call[:2] == ["-m", "pytest"]:
            assert Path(call[-1]).exists() and "cuda" in call, call
        else:
            assert call[0] == "benchmarks/gpu_summary.py", call
        seen.add(call[0] if call[0] != "-m" else call[1])
    assert seen == {
        "benchmarks/benchmark.py",
        "benchmarks/checkpoint_stall.py",
        "densflow",
        "pytest",
        "benchmarks/gpu_summary.py",
    }


def test_gpu_summary_sets_the_trainer_against_its_benchmark_row(tmp_path, capsys):
    # A run folder as gpu_check.sh leaves it, with known numbers: the Trainer's first window
    # (the capture) is left out, the window with the epoch end at step 25 is kept apart, and
    # the steady median is compared with the benchmark row of the run's speed switches.
    import gpu_summary  # benchmarks/gpu_summary.py, on sys.path above

    out = tmp_path / "gpu_check"
    (out / "train_paper").mkdir(parents=True)
    (out / "device.txt").write_text("Stub GPU torch 2\n")

    def row(variant, train, iw):
        return {"variant": variant, "train_images_per_s": train, "train_images_speedup": 1.0,
                "train_peak_bytes": 2**30, "iw_peak_bytes": 2**29, "sample_peak_bytes": 2**28,
                "iw_image_samples_per_s": iw,
                "iw_image_samples_speedup": 1.0, "sample_images_per_s": 50.0,
                "sample_images_speedup": 1.0, "max_abs_bpd_diff": 0.0,
                "train_losses_finite": True}  # fmt: skip

    report = {"device": "Stub GPU", "torch": "2", "setups": [{
        "name": "paper 32×32", "batch_size": 64, "baseline": "eager",
        "rows": [row("eager", 60.0, 900.0), row("graph+channels_last+bf16", 262.5, 5000.0)],
    }]}  # fmt: skip
    (out / "benchmark_paper32.json").write_text(json.dumps(report))
    config = {"batch_size": 64, "amp": "bf16", "channels_last": True, "cuda_graphs": True}
    events = [{"event": "start", "config": config, "world_size": 1}]
    events += [{"event": "train", "step": s, "images_per_s": r}
               for s, r in [(10, 100.0), (20, 250.0)]]  # fmt: skip
    events += [{"event": "epoch", "step": 25}]
    events += [{"event": "train", "step": s, "images_per_s": r}
               for s, r in [(30, 200.0), (40, 260.0), (50, 240.0)]]  # fmt: skip
    lines = [json.dumps(e) for e in events] + ['{"event": "tra']  # a line cut by a kill
    (out / "train_paper" / "metrics.jsonl").write_text("\n".join(lines))

    result = {"n_images": 64, "iw_samples": 1000, "bpd_iw": 3.5, "bpd_single": 3.625}
    (out / "eval_iw.json").write_text(json.dumps(result))
    (out / "eval_iw.seconds").write_text("32\n")
    stall = {"preset": "paper", "checkpoint_bytes": 1500 * 2**20, "rounds": 3,
             "sync_median_s": 4.0, "stall_median_s": 0.5, "written_median_s": 5.0,
             "stall_ratio": 0.125, "steps": 5, "steps_without_s": 1.0,
             "steps_during_write_s": 1.25}  # fmt: skip
    (out / "checkpoint_stall.json").write_text(json.dumps(stall))
    rates = gpu_summary.trainer_rates(gpu_summary.read_events(out / "train_paper/metrics.jsonl"))
    seconds = sum(640 / r for r in (250.0, 200.0, 260.0, 240.0))
    assert rates == {"variant": "graph+channels_last+bf16", "steady": 250.0,
                     "with_epoch_end": 200.0, "overall": pytest.approx(2560 / seconds),
                     "windows": (3, 1)}  # fmt: skip
    assert gpu_summary.main([str(out)]) == 0
    text = (out / "summary.md").read_text()
    assert text.startswith("# GPU check on Stub GPU torch 2")
    assert "| train_paper | graph+channels_last+bf16 | 250.0 | 200.0 |" in text
    assert f"| 262.5 | {250 / 262.5:.3f} |" in text
    hours = 10_000 * 1000 / 5000 / 3600  # CIFAR-10's test set at k = 1000
    assert f"At 5000 image·samples/s (paper 32×32, graph+channels_last+bf16): {hours:.2f} h" in text
    assert "| paper 32×32 | eager | 1024 | 512 | 256 |" in text
    assert "## The checkpoint's stall (paper model, 1500 MiB)" in text
    assert "holds the loop 0.500 s (0.12×), the file in place after 5.000 s" in text
    assert "5 training steps: 1.000 s alone, 1.250 s beside a write." in text
    assert "64 images × k = 1000 in 32 s, 2000 image·samples/s; bits/dim 3.5000 (IW)" in text
    assert gpu_summary.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_checkpoint_stall_times_both_saves_in_one_run(tmp_path):
    # The figures of benchmarks/checkpoint_stall.py, not their values: both saves timed in each
    # round, the ratio of their medians, and the steps beside a write.
    import checkpoint_stall

    out = tmp_path / "stall.json"
    assert (
        checkpoint_stall.main(
            ["--preset", "tiny", "--rounds", "2", "--steps", "1", "--json", str(out)]
        )
        == 0
    )
    stall = json.loads(out.read_text())
    assert len(stall["sync_s"]) == len(stall["stall_s"]) == len(stall["written_s"]) == 2
    assert stall["stall_ratio"] == stall["stall_median_s"] / stall["sync_median_s"]
    assert all(w >= s for w, s in zip(stall["written_s"], stall["stall_s"], strict=True))
    assert stall["checkpoint_bytes"] > 0 and stall["steps"] == 1
    with pytest.raises(SystemExit):
        checkpoint_stall.main(["--rounds", "0"])
