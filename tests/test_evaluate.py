"""Evaluation: resumable test bits/dim, the importance-weighted bound, sample grids."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig
from densflow.evaluate import PAPER_IW_SAMPLES, evaluate, save_sample_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture
def model() -> DenseFlow:
    torch.manual_seed(0)
    flow = perturb(DenseFlow(DenseFlowConfig.tiny()), 0.02, 0)  # non-zero couplings: noise matters
    return init_actnorms(flow, images(8, 1), generator=torch.Generator().manual_seed(1))


def interrupt(model, monkeypatch, at_call: int, **evaluate_kwargs) -> None:
    """Run ``evaluate`` until the ``at_call``-th ``log_prob`` call raises KeyboardInterrupt, as
    a user's Ctrl-C would, leaving its progress file behind."""
    real, calls = model.log_prob, []

    def flaky(x, generator=None):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real(x, generator)

    monkeypatch.setattr(model, "log_prob", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, save_interval_s=0, **evaluate_kwargs)
    monkeypatch.undo()


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(model, tmp_path, monkeypatch):
    data = TensorDataset(images(10))  # batches of 4, 4, 2
    kwargs = dict(batch_size=4, iw_samples=3, chunk_size=2, seed=5, progress=False)
    reference = evaluate(model, data, **kwargs)

    partial = tmp_path / "eval.partial"
    # Batch 0 takes 3 calls (1 single-sample + 2 chunks of the IW bound): stop in batch 1.
    interrupt(model, monkeypatch, 4, dataset=data, partial_path=partial, **kwargs)
    assert partial.exists() and model.training is False  # the mode is restored on the way out

    resumed = evaluate(model, data, partial_path=partial, **kwargs)
    assert not partial.exists()
    assert resumed.bpd_single == reference.bpd_single and resumed.bpd_iw == reference.bpd_iw
    assert np.array_equal(resumed.per_image_single, reference.per_image_single)
    assert np.array_equal(resumed.per_image_iw, reference.per_image_iw)
    assert resumed.n_images == 10 and resumed.per_image_iw.shape == (10,)


@pytest.mark.compile
def test_a_compiled_model_runs_the_last_smaller_batch_eagerly(model):
    # Batches of 4, 4, 2 and the IW bound in chunks of 2. The full batches need two graphs: the
    # single bound of 4 images and the IW pass of 8. The last batch would add a third (2 images)
    # for one use; the "eager" backend counts the graphs without generating code.
    from torch._dynamo.testing import CompileCounterWithBackend

    from densflow.performance import compile_model

    data = TensorDataset(images(10))
    kwargs = dict(batch_size=4, iw_samples=4, chunk_size=2, seed=5, progress=False)
    reference = evaluate(model, data, **kwargs)
    torch._dynamo.reset()  # a graph cached for an earlier test's model would not be counted
    counter = CompileCounterWithBackend("eager")
    compile_model(model, backend=counter)
    result = evaluate(model, data, **kwargs)
    assert counter.frame_count == 2
    np.testing.assert_allclose(result.per_image_single, reference.per_image_single, rtol=1e-6)
    np.testing.assert_allclose(result.per_image_iw, reference.per_image_iw, rtol=1e-6)
    # A dataset of one batch is compiled like any other: the caller asked for it.
    evaluate(model, TensorDataset(images(3)), **kwargs)
    assert counter.frame_count == 4


def test_bf16_evaluation_is_within_0_01_bits_per_dim_and_not_resumed_from_float32(
    model, tmp_path, monkeypatch
):
    data = TensorDataset(images(8))
    kwargs = dict(batch_size=4, iw_samples=3, chunk_size=2, seed=5, progress=False)
    fp32 = evaluate(model, data, **kwargs)
    bf16 = evaluate(model, data, amp="bf16", **kwargs)
    for a, b in [
        (fp32.per_image_single, bf16.per_image_single),
        (fp32.per_image_iw, bf16.per_image_iw),
    ]:
        assert np.abs(a - b).max() < 0.01
        assert not np.array_equal(a, b)  # the networks really ran in bf16
    with pytest.raises(ValueError, match="amp must be one of"):
        evaluate(model, data, amp="fp16", **kwargs)

    partial = tmp_path / "eval.partial"
    interrupt(model, monkeypatch, 4, dataset=data, partial_path=partial, **kwargs)
    with pytest.warns(UserWarning, match="starting over"):  # float32 progress, a bf16 run
        resumed = evaluate(model, data, partial_path=partial, amp="bf16", **kwargs)
    assert np.array_equal(resumed.per_image_iw, bf16.per_image_iw)


def test_a_partial_file_of_other_settings_is_not_used(model, tmp_path, monkeypatch):
    data = TensorDataset(images(8))
    partial = tmp_path / "eval.partial"
    interrupt(
        model,
        monkeypatch,
        2,
        dataset=data,
        batch_size=4,
        seed=0,
        progress=False,
        partial_path=partial,
    )
    with pytest.warns(UserWarning, match="starting over"):
        other = evaluate(model, data, batch_size=4, seed=1, progress=False, partial_path=partial)
    fresh = evaluate(model, data, batch_size=4, seed=1, progress=False)
    assert other.bpd_single == fresh.bpd_single


def test_the_importance_weighted_bound_is_tighter(model):
    model.train()
    result = evaluate(
        model,
        TensorDataset(images(8, 2)),
        batch_size=8,
        iw_samples=16,
        chunk_size=8,
        seed=0,
        progress=False,
    )
    assert model.training  # put back in the mode it was in
    assert result.bpd_iw < result.bpd_single
    assert result.to_dict() == {
        "bpd_single": result.bpd_single,
        "bpd_iw": result.bpd_iw,
        "n_images": 8,
        "iw_samples": 16,
    }


def test_same_seed_same_numbers_and_iw_only(model):
    data = TensorDataset(images(6))
    a = evaluate(model, data, batch_size=3, seed=3, progress=False)
    b = evaluate(
        model, data, batch_size=3, generator=torch.Generator().manual_seed(3), progress=False
    )
    assert a.bpd_single == b.bpd_single and a.bpd_iw is None
    iw_only = evaluate(model, data, batch_size=3, iw_samples=2, single=False, progress=False)
    assert iw_only.bpd_single is None and iw_only.bpd_iw is not None
    with pytest.raises(ValueError, match="nothing to compute"):
        evaluate(model, data, single=False)


def test_sample_grid_is_a_png(model, tmp_path):
    from PIL import Image

    path = tmp_path / "grid.png"
    samples = save_sample_grid(model, path, n=8, nrow=4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (8, 3, 16, 16) and samples.dtype == torch.uint8
    with Image.open(path) as img:  # 4 columns and 2 rows of 16 px with 2 px padding
        assert img.size == (4 * 16 + 5 * 2, 2 * 16 + 3 * 2)


def test_sample_grid_in_bf16_keeps_the_draws_and_runs_the_networks_in_bf16(model, tmp_path):
    from densflow.coupling import CouplingNet

    dtypes = []
    net = next(m for m in model.modules() if isinstance(m, CouplingNet))
    net.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))

    def grid(amp):
        path, g = tmp_path / f"{amp}.png", torch.Generator().manual_seed(0)
        return save_sample_grid(model, path, n=8, amp=amp, generator=g)

    exact, fast = grid("none"), grid("bf16")
    assert dtypes == [torch.float32, torch.bfloat16]
    # The same noise through slightly different networks: pixels a level or so apart at most.
    assert (exact.int() - fast.int()).abs().max() <= 2
    with pytest.raises(ValueError, match="amp must be one of"):
        grid("fp16")
    assert not (tmp_path / "fp16.png").exists()


def interrupted_at(call: int, fn):
    """``fn`` that raises KeyboardInterrupt at its ``call``-th call, as a user's Ctrl-C would."""
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return flaky


def count_graphed_passes(monkeypatch) -> list[str]:
    """The GraphedFlow passes that run, by name (a spy on the class)."""
    from densflow.performance import GraphedFlow

    calls = []
    for name in ("log_prob", "iw_log_prob", "sample"):
        real = getattr(GraphedFlow, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(GraphedFlow, name, spy)
    return calls


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_cuda_graphs_on_a_cpu_evaluate_to_the_bit_and_run_the_last_batch_eagerly(
    model, monkeypatch, amp
):
    data = TensorDataset(images(10))  # batches of 4, 4, 2; k = 3 in chunks of 2 and 1
    kwargs = dict(batch_size=4, iw_samples=3, chunk_size=2, seed=5, progress=False, amp=amp)
    reference = evaluate(model, data, **kwargs)
    passes = count_graphed_passes(monkeypatch)
    with pytest.warns(RuntimeWarning, match="cuda_graphs needs a CUDA device; on cpu the eval"):
        graphed = evaluate(model, data, cuda_graphs=True, **kwargs)
    assert passes == ["log_prob", "iw_log_prob"] * 2  # the two full batches; the last is eager
    assert np.array_equal(graphed.per_image_single, reference.per_image_single)
    assert np.array_equal(graphed.per_image_iw, reference.per_image_iw)
    assert graphed.bpd_iw == reference.bpd_iw and graphed.bpd_single == reference.bpd_single
    with pytest.raises(ValueError, match="amp must be one of"):  # before any work
        evaluate(model, data, cuda_graphs=True, **(kwargs | {"amp": "fp16"}))


def test_cuda_graphs_keep_the_progress_file_and_resume_to_the_same_numbers(
    model, tmp_path, monkeypatch
):
    # Interrupted with the flag on and resumed with it, or without it: the same draws either way,
    # so the progress file of one is the other's.
    data = TensorDataset(images(10))
    kwargs = dict(batch_size=4, iw_samples=3, chunk_size=2, seed=5, progress=False)
    reference = evaluate(model, data, **kwargs)
    for resume_with_graphs in (True, False):
        partial = tmp_path / f"eval{resume_with_graphs}.partial"
        # Batch 0 draws 3 times (1 single + 2 IW chunks): stop at the 4th, in batch 1.
        monkeypatch.setattr(model, "draw_noise", interrupted_at(4, model.draw_noise))
        with pytest.warns(RuntimeWarning), pytest.raises(KeyboardInterrupt):
            evaluate(model, data, partial_path=partial, save_interval_s=0, cuda_graphs=True,
                     **kwargs)  # fmt: skip
        monkeypatch.undo()
        assert partial.exists() and model.training is False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the CPU's: tested above
            resumed = evaluate(
                model, data, partial_path=partial, cuda_graphs=resume_with_graphs, **kwargs
            )
        assert not partial.exists()
        assert np.array_equal(resumed.per_image_single, reference.per_image_single)
        assert np.array_equal(resumed.per_image_iw, reference.per_image_iw)


def test_cuda_graphs_on_a_cpu_draw_the_same_samples(model, tmp_path, monkeypatch):
    def grid(name, amp, **kwargs):
        path, g = tmp_path / f"{name}.png", torch.Generator().manual_seed(0)
        return save_sample_grid(model, path, n=8, amp=amp, generator=g, **kwargs), path

    model.train()  # draw_samples puts it in eval mode, and back
    passes = count_graphed_passes(monkeypatch)
    for amp in ("none", "bf16"):
        plain, plain_png = grid(f"plain_{amp}", amp)
        with pytest.warns(RuntimeWarning, match="on cpu the sampling runs eagerly"):
            graphed, graphed_png = grid(f"graphed_{amp}", amp, cuda_graphs=True)
        assert torch.equal(graphed, plain)
        assert graphed_png.read_bytes() == plain_png.read_bytes()
    assert passes == ["sample", "sample"]
    assert model.training


def test_paper_iw_samples():
    assert PAPER_IW_SAMPLES == {
        "cifar10": 1000,
        "imagenet32": 200,
        "imagenet64": 200,
        "celeba": 200,
    }
