"""The training step: the loss defined once, the forward and backward pass, the eager, compiled
and CUDA-graphed steps (which must give the same step), the skip of a non-finite step, and the
compiled optimizer."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from utils import optimizer_parameters, optimizer_steps

from densflow import DenseFlow, DenseFlowConfig, bits_per_dim, performance
from densflow.performance import Speed
from densflow.training import optim
from densflow.training import step as step_module
from densflow.training.optim import compile_optimizer, optimizer_state_dict
from densflow.training.step import (
    CompiledStep,
    GraphedStep,
    GraphedTrainingStep,
    TrainStep,
    forward_backward,
    make_step,
    training_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def noise(model, seed: int = 3):
    return model.draw_noise(4, torch.Generator().manual_seed(seed))


def state(model, optimizer) -> dict:
    """Every tensor a step may change: parameters, buffers (BatchNorm statistics), optimizer."""
    tensors = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    for i, s in optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{i}.{k}": v.clone() for k, v in s.items()})
    return tensors


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# ----------------------------------------------------------------------------- the loss


def test_the_loss_is_the_mean_bits_per_dimension_of_the_batch():
    log_prob = torch.tensor([-3000.0, -4000.0], dtype=torch.float64)
    expected = -(log_prob.mean()) / (
        3 * 32 * 32 * torch.log(torch.tensor(2.0, dtype=torch.float64))
    )
    loss = training_loss(log_prob, (3, 32, 32))
    assert loss.dtype == torch.float32  # whatever the networks ran in
    assert torch.allclose(loss.double(), expected, rtol=1e-6)
    assert torch.equal(loss, bits_per_dim(log_prob.float().mean(), (3, 32, 32)))


# ----------------------------------------------------------------------------- forward and backward


def flat_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_forward_backward_is_the_bound_its_gradients_and_their_norm(model_and_images):
    model, x = model_and_images
    model.train()
    loss, grad_norm = forward_backward(
        model, x, model.draw_noise(4, torch.Generator().manual_seed(3))
    )
    grads = flat_grads(model)
    model.zero_grad(set_to_none=True)
    expected = bits_per_dim(model.log_prob(x, torch.Generator().manual_seed(3)).mean(), (3, 32, 32))
    expected.backward()
    assert torch.equal(loss, expected.detach()) and torch.equal(grads, flat_grads(model))
    assert torch.allclose(grad_norm, grads.norm(), rtol=1e-5)  # summation order
    # Clipping scales every gradient so that their norm becomes max_norm.
    model.zero_grad(set_to_none=True)
    forward_backward(
        model,
        x,
        model.draw_noise(4, torch.Generator().manual_seed(3)),
        max_norm=float(grad_norm) / 4,
    )
    assert torch.allclose(flat_grads(model), grads / 4, rtol=1e-5, atol=1e-12)


def test_graphed_step_without_cuda_runs_the_eager_step_on_its_buffers(model_and_images):
    # No capture on a CPU: each call is forward_backward on fresh gradients (not added to the
    # last call's), with the noise passed in.
    model, x = model_and_images
    model.train()
    step = GraphedTrainingStep(model)
    for seed, images in ((1, x), (2, x.flip(0))):
        noise = model.draw_noise(4, torch.Generator().manual_seed(seed))
        loss, grad_norm = step(images, noise)
        grads = flat_grads(model)
        model.zero_grad(set_to_none=True)
        expected = forward_backward(model, images, noise)
        assert torch.equal(loss, expected[0]) and torch.equal(grad_norm, expected[1])
        assert torch.equal(grads, flat_grads(model))
    assert not step.captured


def test_graphed_step_explains_what_it_cannot_take(model_and_images):
    model, x = model_and_images
    with pytest.raises(ValueError, match="ActNorm is not initialised"):
        GraphedTrainingStep(DenseFlow(DenseFlowConfig.tiny(image_size=32)))
    with pytest.raises(TypeError, match="expects a DenseFlow"):
        GraphedTrainingStep(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="amp must be one of"):
        GraphedTrainingStep(model, amp="fp16")
    step = GraphedTrainingStep(model.train())
    with pytest.raises(ValueError, match="takes uint8 images"):
        step(x.float(), model.draw_noise(4))
    step(x, model.draw_noise(4))
    with pytest.raises(
        ValueError,
        match=r"training step was captured for other inputs \(input 0: captured for "
        r"\(4, 3, 32, 32\) uint8 on cpu, got \(2, 3, 32, 32\).*build one per shape",
    ):
        step(x[:2], model.draw_noise(2))


# ----------------------------------------------------------------------------- the optimizer


@pytest.mark.parametrize(
    "name, backend, rtol", [("Adamax", "inductor", 1e-6), ("Adam", "aot_eager", 1e-4)]
)
@pytest.mark.compile
def test_compiled_optimizer_makes_the_eager_update_and_a_schedule_does_not_recompile(
    name, backend, rtol
):
    # Adamax is the Trainer's default, through the real code generator; Adam's multi-tensor path
    # takes a tensor lr only when capturable, which compile_optimizer must switch on (and off
    # again in the state dict it saves).
    from torch._dynamo.testing import CompileCounterWithBackend

    optim = getattr(torch.optim, name)
    eager_params, compiled_params = optimizer_parameters(), optimizer_parameters()
    eager = optim(eager_params, lr=1e-3, foreach=True)
    compiled = optim(compiled_params, lr=1e-3, foreach=True)
    counter = CompileCounterWithBackend(backend)
    update = compile_optimizer(compiled, backend=counter)
    assert compiled.step.__func__ is optim.step  # the optimizer's own step is left eager
    start = [p.detach().clone() for p in eager_params]
    lrs = [0.0, 1e-3, 5e-4, 2e-4]  # a warm-up and a decay
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a silent fallback to eager must fail here
        optimizer_steps(eager, eager_params, lrs, torch.Generator().manual_seed(1))
        grads = torch.Generator().manual_seed(1)  # the same gradients
        optimizer_steps(compiled, compiled_params, lrs[:1], grads, update)
        first = counter.frame_count
        optimizer_steps(compiled, compiled_params, lrs[1:], grads, update)
    assert first > 0 and counter.frame_count == first  # no recompilation when the lr changes
    # float64 parameters: what remains is torch's float32 step count, from which a capturable
    # update computes its bias corrections (eagerly, in Python floats): ~1e-7 relative for
    # Adamax's 1 − β₁ᵗ, ~1e-5 for Adam's 1 − β₂ᵗ with β₂ = 0.999.
    for p0, a, b in zip(start, eager_params, compiled_params, strict=True):
        assert (b - a).norm() <= rtol * (a - p0).norm()
    assert isinstance(compiled.param_groups[0]["lr"], torch.Tensor)

    # Its checkpoint is an eager optimizer's: it continues in either, as the eager run does.
    saved = optimizer_state_dict(compiled)
    assert saved["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert type(saved["param_groups"][0]["lr"]) is float
    assert saved["param_groups"][0].get("capturable") in (None, False)
    resumed_params = [p.detach().clone().requires_grad_() for p in compiled_params]
    resumed = optim(resumed_params, lr=1.0, foreach=True)
    resumed.load_state_dict(saved)
    optimizer_steps(resumed, resumed_params, [1e-4], torch.Generator().manual_seed(2))
    optimizer_steps(eager, eager_params, [1e-4], torch.Generator().manual_seed(2))
    for a, b in zip(eager_params, resumed_params, strict=True):
        assert torch.allclose(a, b, rtol=0, atol=100 * rtol * 1e-3)  # lr ≤ 1e-3 per step


def test_compiled_optimizer_falls_back_to_the_eager_update():
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    eager_params, compiled_params = optimizer_parameters(), optimizer_parameters()
    eager = torch.optim.Adam(eager_params, lr=1e-3, foreach=True)
    compiled = torch.optim.Adam(compiled_params, lr=1e-3, foreach=True)
    update = compile_optimizer(compiled, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="running Adam.step eagerly"):
        g = torch.Generator().manual_seed(1)
        optimizer_steps(compiled, compiled_params, [1e-3, 5e-4], g, update)
    optimizer_steps(eager, eager_params, [1e-3, 5e-4], torch.Generator().manual_seed(1))
    assert compiled.param_groups[0]["lr"] == 5e-4 and not compiled.param_groups[0]["capturable"]
    for a, b in zip(eager_params, compiled_params, strict=True):
        assert torch.equal(a, b)


def test_compile_optimizer_rejects_other_objects():
    with pytest.raises(TypeError, match="expects a torch.optim.Optimizer"):
        compile_optimizer(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- step(x, noise, lr)


def test_a_step_updates_with_the_given_rate_and_skips_a_non_finite_one(model_and_images):
    model, x = model_and_images
    model.train()
    optimizer = optim.build_optimizer(model, "adamax", lr=1.0)
    step = TrainStep(model, optimizer)
    metrics = step(x, noise(model), 1e-3)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert metrics.loss is not None and torch.isfinite(metrics.loss)
    assert all(p.grad is None for p in model.parameters())  # cleared for the next step
    before = state(model, optimizer)

    real = model.log_prob
    model.log_prob = lambda *args, **kwargs: real(*args, **kwargs) * float("nan")
    skipped = step(x, noise(model, 4), 1e-3)
    del model.log_prob
    assert skipped.loss is None
    assert_same(before, state(model, optimizer))  # BatchNorm statistics restored too


@pytest.mark.compile
def test_eager_graphed_and_compiled_steps_take_the_same_step(model_and_images, monkeypatch):
    # On a CPU the graphed step runs eagerly on its buffers: the same numbers to the bit. The
    # compiled step (aot_eager: dynamo and AOTAutograd without code generation) within rounding.
    model, x = model_and_images
    model.train()
    monkeypatch.setattr(
        step_module, "compile_model", lambda m: performance.compile_model(m, backend="aot_eager")
    )
    monkeypatch.setattr(
        step_module, "compile_optimizer", lambda o: compile_optimizer(o, backend="aot_eager")
    )
    results = {}
    for speed, kind in [
        (Speed(), TrainStep),
        (Speed(cuda_graphs=True), GraphedStep),
        (Speed(compile=True), CompiledStep),
    ]:
        flow = copy.deepcopy(model)
        optimizer = optim.build_optimizer(flow, "adamax", lr=1.0)
        if speed.cuda_graphs:
            with pytest.warns(RuntimeWarning, match="cuda_graphs needs a CUDA device"):
                step = make_step(flow, optimizer, speed)
        else:
            step = make_step(flow, optimizer, speed)
        assert type(step) is kind
        metrics = [step(x, noise(flow, seed), lr) for seed, lr in ((1, 1e-3), (2, 5e-4))]
        results[kind] = ([m.loss for m in metrics] + [m.grad_norm for m in metrics],
                         state(flow, optimizer))  # fmt: skip
    eager_losses, eager_state = results[TrainStep]
    graphed_losses, graphed_state = results[GraphedStep]
    assert all(torch.equal(a, b) for a, b in zip(eager_losses, graphed_losses, strict=True))
    assert_same(eager_state, graphed_state)
    compiled_losses, compiled_state = results[CompiledStep]
    for a, b in zip(eager_losses, compiled_losses, strict=True):
        assert torch.allclose(a, b, rtol=1e-4)
    # The gradients, through Adamax's first moment: (1 - 0.9) g1 · 0.9 + (1 - 0.9) g2. (The
    # parameters themselves move by about ±lr wherever a gradient is near 0, whatever its
    # rounding.)
    moments = [k for k in eager_state if k.endswith(".exp_avg")]
    assert len(moments) == len(list(model.parameters()))
    for k in moments:
        a, b = eager_state[k].double(), compiled_state[k].double()
        assert (a - b).norm() <= 1e-4 * a.norm() + 1e-9, k


def test_speed_switches_are_checked_together():
    with pytest.raises(ValueError, match="choose one of compile and cuda_graphs"):
        Speed(compile=True, cuda_graphs=True)
    with pytest.raises(ValueError, match="amp must be one of"):
        Speed(amp="fp16")


# ----------------------------------------------------------------------------- overlap and prefetch


def test_overlap_runs_once_between_the_backward_pass_and_the_update(model_and_images):
    # What the next batch's preparation may rely on: the pass is issued (gradients exist) and the
    # update has not happened yet; one call per step, skipped steps included.
    model, x = model_and_images
    model.train()
    optimizer = optim.build_optimizer(model, "adamax", lr=1.0)
    step = TrainStep(model, optimizer)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    seen = []

    def unchanged():
        return all(torch.equal(a, p) for a, p in zip(before, params, strict=True))

    def overlap():
        seen.append((all(p.grad is not None for p in params), unchanged()))

    step(x, noise(model), 1e-3, overlap=overlap)
    assert seen == [(True, True)]
    assert not unchanged()  # and then updated


def test_prefetched_inputs_are_those_of_their_steps(tmp_path):
    # Each (x, noise) is what prepare(batch, step) and noise(x, step) give for its own step,
    # however early it was prepared; the end and a failing batch show at the next request.
    from utils import tiny_run

    from densflow.data import load_dataset
    from densflow.training.batches import StepInputs

    cfg = tiny_run(tmp_path, image_size=32, augmentation=True)
    train_set = load_dataset("photos", None, "train")
    model = DenseFlow(cfg.architecture(32))
    inputs = StepInputs(train_set, cfg, model, torch.device("cpu"), 0, 1)
    expected = []
    for i, raw in enumerate(inputs.batches(1, 2, 6)):
        x = inputs.prepare(raw, 10 + i)
        expected.append((x, inputs.noise(x, 10 + i)))
    prefetch = inputs.prefetch(1, 2, 6, 10)
    got = []
    for item in prefetch:
        prefetch.fetch_next()
        prefetch.fetch_next()  # idempotent: still one batch ahead
        got.append(item)
    assert len(got) == len(expected) == 4
    for (x, z), (ex, ez) in zip(got, expected, strict=True):
        assert torch.equal(x, ex)
        assert z.keys() == ez.keys() and all(torch.equal(z[k], ez[k]) for k in z)
    assert next(iter(prefetch), None) is None

    def failing():
        yield next(inputs.batches(0, 0, 1))
        raise OSError("unreadable batch")

    prefetch = type(prefetch)(inputs, failing(), 0)
    first = next(prefetch)
    prefetch.fetch_next()  # the failure is kept, not raised inside the step
    assert torch.equal(first[0], inputs.prepare(next(inputs.batches(0, 0, 1)), 0))
    with pytest.raises(OSError, match="unreadable batch"):
        next(prefetch)


# ----------------------------------------------------------------------------- the graphed update


def test_a_capturable_optimizer_saves_as_the_eager_one_and_can_be_restored():
    # What GraphedUpdate does to the optimizer on CUDA (its update there: tests/test_cuda.py):
    # a tensor lr that set_lr fills in place, capturable groups, and a state dict that is the
    # eager optimizer's; restore_eager_groups undoes it.
    params = optimizer_parameters(dtype=torch.float32)
    optimizer = torch.optim.Adamax(params, lr=1e-3, foreach=True)
    optimizer_steps(optimizer, params, [1e-3, 5e-4], torch.Generator().manual_seed(1))
    eager_saved = optimizer.state_dict()
    optim.make_capturable(optimizer)
    optim.make_capturable(optimizer)  # idempotent
    lr_tensor = optimizer.param_groups[0]["lr"]
    assert isinstance(lr_tensor, torch.Tensor) and optimizer.param_groups[0]["capturable"]
    optim.set_lr(optimizer, 2**-10)  # a power of two: the same in float32
    assert optimizer.param_groups[0]["lr"] is lr_tensor and float(lr_tensor) == 2**-10
    saved = optimizer_state_dict(optimizer)
    assert saved["param_groups"][0] == dict(eager_saved["param_groups"][0], lr=2**-10)
    for i, s in eager_saved["state"].items():
        assert all(torch.equal(v, saved["state"][i][k]) for k, v in s.items())
    optim.restore_eager_groups(optimizer)
    assert optimizer.param_groups[0]["lr"] == 2**-10
    assert not optimizer.param_groups[0]["capturable"]
    optimizer_steps(optimizer, params, [1e-4], torch.Generator().manual_seed(2))  # eager again


def test_the_graphed_update_is_the_eager_update_on_a_cpu_and_flags_non_finite_parameters():
    from densflow.training.step import GraphedUpdate

    eager_params, graphed_params = optimizer_parameters(), optimizer_parameters()
    eager = torch.optim.Adamax(eager_params, lr=1e-3, foreach=True)
    graphed = torch.optim.Adamax(graphed_params, lr=1e-3, foreach=True)
    update = GraphedUpdate(graphed, graphed_params)
    for seed in (1, 2):
        for params in (eager_params, graphed_params):
            g = torch.Generator().manual_seed(seed)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        eager.step()
        assert bool(update())
    assert not update.captured and type(graphed.param_groups[0]["lr"]) is float
    for a, b in zip(eager_params, graphed_params, strict=True):
        assert torch.equal(a, b)
    graphed_params[1].grad[3] = float("inf")  # Adamax's step then makes that entry NaN
    assert not bool(update())
