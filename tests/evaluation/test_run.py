"""evaluate(): test-set bits/dim that depend only on the seed, resumable from progress files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from utils import init_actnorms, perturb

from densflow import DenseFlow, DenseFlowConfig
from densflow.evaluation import EvalConfig, NonFiniteError, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def tiny_model() -> DenseFlow:
    torch.manual_seed(0)
    flow = perturb(DenseFlow(DenseFlowConfig.tiny()), 0.02, 0)  # non-zero couplings: noise matters
    return init_actnorms(flow, images(8, 1), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def model() -> DenseFlow:
    return tiny_model()


def spy_passes(model, monkeypatch, at_call: int | None = None) -> list[int]:
    """The images of every pass of ``model`` (eager or replayed: both call its pure function),
    and a KeyboardInterrupt at the ``at_call``-th, as a user's Ctrl-C would."""
    real, passes = model.terms_from_noise, []

    def spy(x, noise):
        passes.append(len(x))
        if len(passes) == at_call:
            raise KeyboardInterrupt
        return real(x, noise)

    monkeypatch.setattr(model, "terms_from_noise", spy)
    return passes


def interrupt(model, monkeypatch, at_call: int, **evaluate_kwargs) -> None:
    """Run ``evaluate`` until its ``at_call``-th pass is interrupted, leaving its progress file
    behind."""
    spy_passes(model, monkeypatch, at_call)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # cuda_graphs on a CPU: tested below
        evaluate(model, save_interval_s=0, **evaluate_kwargs)
    monkeypatch.undo()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_per_image_values_are_the_same_for_every_batch_and_chunk_size(dtype):
    torch.set_default_dtype(dtype)
    try:
        model = tiny_model()
    finally:
        torch.set_default_dtype(torch.float32)
    data = TensorDataset(images(10))
    runs = {
        (batch, chunk): evaluate(model, data, batch_size=batch, iw_samples=5, chunk_size=chunk,
                                 seed=3, progress=False)
        for batch, chunk in [(1, 1), (3, 2), (8, 5), (10, 50)]
    }  # fmt: skip
    reference = runs[1, 1]
    assert reference.per_image_iw.dtype == np.float64 and reference.per_image_iw.shape == (10,)
    for (batch, chunk), result in runs.items():
        for got, want in [
            (result.per_image_single, reference.per_image_single),
            (result.per_image_iw, reference.per_image_iw),
        ]:
            if dtype == torch.float64:  # the same computation per image: equal to the bit
                assert np.array_equal(got, want), (batch, chunk)
            else:  # float32 kernels round differently per batch shape
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    # The draws are the seed's: another seed, other numbers; an image's own, not its neighbour's.
    other = evaluate(model, data, batch_size=3, iw_samples=5, seed=4, progress=False)
    assert not np.array_equal(other.per_image_single, reference.per_image_single)
    twice = evaluate(model, TensorDataset(torch.cat([images(10)[:1]] * 2)), seed=3, progress=False)
    assert twice.per_image_single[0] == reference.per_image_single[0]
    assert twice.per_image_single[1] != twice.per_image_single[0]  # image 1 draws its own noise


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(model, tmp_path, monkeypatch):
    data = TensorDataset(images(10))  # batches of 4, 4, 2
    kwargs = dict(batch_size=4, iw_samples=3, chunk_size=2, seed=5, progress=False)
    reference = evaluate(model, data, **kwargs)

    partial = tmp_path / "eval.partial"
    # Batch 0 takes 3 passes (1 single-sample + 2 chunks of the IW bound): stop in batch 1.
    interrupt(model, monkeypatch, 4, dataset=data, partial_path=partial, **kwargs)
    assert partial.exists() and model.training is False  # the mode is restored on the way out
    saved = torch.load(partial, weights_only=True)
    assert saved["start"] == 0 and saved["iw"].shape == (4,)  # batch 0's images

    resumed = evaluate(model, data, partial_path=partial, **kwargs)
    assert not partial.exists()
    assert resumed.bpd_single == reference.bpd_single and resumed.bpd_iw == reference.bpd_iw
    assert np.array_equal(resumed.per_image_single, reference.per_image_single)
    assert np.array_equal(resumed.per_image_iw, reference.per_image_iw)
    assert resumed.n_images == 10 and resumed.per_image_iw.shape == (10,)


def test_progress_resumes_with_another_batch_size(model, tmp_path, monkeypatch):
    # The values of an image do not depend on its batch, so neither does the progress file.
    data = TensorDataset(images(9))
    kwargs = dict(iw_samples=2, chunk_size=2, seed=1, progress=False)
    reference = evaluate(model, data, batch_size=2, **kwargs)
    partial = tmp_path / "eval.partial"
    # Batches of 3, each two passes (single, one IW chunk): stop in batch 1, images 0-2 kept.
    interrupt(model, monkeypatch, 3, dataset=data, partial_path=partial, batch_size=3, **kwargs)
    passes = spy_passes(model, monkeypatch)
    resumed = evaluate(model, data, partial_path=partial, batch_size=2, **kwargs)
    assert sum(passes) == (9 - 3) * (1 + 2)  # images 3..8 only, each once single and twice IW
    np.testing.assert_allclose(resumed.per_image_iw, reference.per_image_iw, rtol=1e-6)
    np.testing.assert_allclose(resumed.per_image_single, reference.per_image_single, rtol=1e-6)


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
    kwargs = dict(batch_size=4, progress=False, partial_path=partial)
    interrupt(model, monkeypatch, 2, dataset=data, seed=0, **kwargs)
    with pytest.warns(UserWarning, match="starting over"):
        other = evaluate(model, data, seed=1, **kwargs)
    fresh = evaluate(model, data, batch_size=4, seed=1, progress=False)
    assert other.bpd_single == fresh.bpd_single
    # Another model's progress is not resumed either.
    interrupt(model, monkeypatch, 2, dataset=data, seed=1, **kwargs)
    with torch.no_grad():
        model.prior.loc.add_(0.5)
    with pytest.warns(UserWarning, match="another model or other settings"):
        moved = evaluate(model, data, seed=1, **kwargs)
    assert moved.bpd_single != fresh.bpd_single


def test_the_importance_weighted_bound_is_tighter(model):
    model.train()
    result = evaluate(
        model, TensorDataset(images(8, 2)), batch_size=8, iw_samples=16, chunk_size=8, seed=0,
        progress=False,
    )  # fmt: skip
    assert model.training  # put back in the mode it was in
    assert result.bpd_iw < result.bpd_single
    assert result.to_dict() == {
        "bpd_single": result.bpd_single,
        "bpd_iw": result.bpd_iw,
        "n_images": 8,
        "iw_samples": 16,
    }
    full = result.to_dict(per_image=True)
    assert full["per_image_iw"] == result.per_image_iw.tolist()
    assert np.mean(full["per_image_single"]) == pytest.approx(result.bpd_single, rel=1e-12)


def test_a_config_and_changes_and_iw_only(model):
    data = TensorDataset(images(6))
    a = evaluate(model, data, EvalConfig(batch_size=3, seed=3, progress=False))
    b = evaluate(model, data, EvalConfig(batch_size=2), seed=3, progress=False)
    assert a.bpd_single == pytest.approx(b.bpd_single, rel=1e-6) and a.bpd_iw is None
    iw_only = evaluate(model, data, batch_size=3, iw_samples=2, single=False, progress=False)
    assert iw_only.bpd_single is None and iw_only.bpd_iw is not None
    assert evaluate(model, data, limit=4, progress=False).n_images == 4
    with pytest.raises(ValueError, match="nothing to compute"):
        evaluate(model, data, single=False)
    with pytest.raises(ValueError, match=r"^unknown evaluation settings \['generator'\]"):
        evaluate(model, data, generator=torch.Generator())
    with pytest.raises(ValueError, match="iw_samples='paper' needs the dataset's name"):
        evaluate(model, data, iw_samples="paper")


def test_non_finite_bits_per_dim_are_refused_by_the_result(model):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)  # finite weights whose flow overflows
    result = evaluate(model, TensorDataset(images(4)), batch_size=2, progress=False)
    assert not result.finite and result.to_dict()["non_finite"] is True
    with pytest.raises(NonFiniteError, match=r"^the bits/dim are not finite .* 4 of 4 images"):
        result.check_finite()


def count_graphed_passes(monkeypatch) -> list[str]:
    """The GraphedFlow passes that run, by name (a spy on the class)."""
    from densflow.performance import GraphedFlow

    calls = []
    for name in ("log_prob", "sample_continuous"):
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
    assert passes == ["log_prob"] * 3 * 2  # the two full batches' 3 passes; the last is eager
    assert np.array_equal(graphed.per_image_single, reference.per_image_single)
    assert np.array_equal(graphed.per_image_iw, reference.per_image_iw)
    assert graphed.bpd_iw == reference.bpd_iw and graphed.bpd_single == reference.bpd_single
    with pytest.raises(ValueError, match="amp must be one of"):  # before any work
        evaluate(model, data, cuda_graphs=True, **(kwargs | {"amp": "fp16"}))
    with pytest.raises(ValueError, match="choose one of compile and cuda_graphs"):
        evaluate(model, data, cuda_graphs=True, compile=True)


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
        # Batch 0 takes 3 passes (1 single + 2 IW chunks): stop at the 4th, in batch 1.
        interrupt(model, monkeypatch, 4, dataset=data, partial_path=partial, cuda_graphs=True,
                  **kwargs)  # fmt: skip
        assert torch.load(partial, weights_only=True)["iw"].shape == (4,)
        assert partial.exists() and model.training is False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the CPU's: tested above
            resumed = evaluate(
                model, data, partial_path=partial, cuda_graphs=resume_with_graphs, **kwargs
            )
        assert not partial.exists()
        assert np.array_equal(resumed.per_image_single, reference.per_image_single)
        assert np.array_equal(resumed.per_image_iw, reference.per_image_iw)
