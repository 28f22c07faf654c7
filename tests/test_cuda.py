"""The paper model on a GPU: forward/backward in float32 and under bf16 autocast; a compiled
bf16 training step; the compiled optimizer step; the CUDA-graphed training step and optimizer
update, alone and in the Trainer.

Skipped on machines without CUDA (CI has none); run them on a GPU box with ``make test``.
"""

from __future__ import annotations

import pytest
import torch

from densflow import DenseFlow, DenseFlowConfig, bits_per_dim

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def paper_on_gpu():
    torch.manual_seed(0)
    model = DenseFlow(DenseFlowConfig.paper()).cuda()
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device="cuda")
    with torch.no_grad():
        model.train()(x)  # data-dependent ActNorm init
    return model


def batch(n=8, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device="cuda", generator=g)


def test_paper_forward_backward_float32(paper_on_gpu):
    model = paper_on_gpu.train()
    model.zero_grad()
    loss = bits_per_dim(
        model.log_prob(batch(), torch.Generator(device="cuda").manual_seed(0)), (3, 32, 32)
    ).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_paper_bf16_autocast_keeps_log_dets_in_float32(paper_on_gpu):
    model = paper_on_gpu.eval()
    x = batch(4, seed=1)
    with torch.no_grad():
        reference = model.log_prob(x, torch.Generator(device="cuda").manual_seed(0))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            terms = model.log_prob_terms(x, torch.Generator(device="cuda").manual_seed(0))
    assert all(t.dtype == torch.float32 for t in terms.values())
    mixed = sum(terms.values())
    gap = (bits_per_dim(mixed, (3, 32, 32)) - bits_per_dim(reference, (3, 32, 32))).abs().max()
    assert gap < 0.01, f"bf16 autocast moved bits/dim by {gap:.4f}"
    model.train()
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = -model.log_prob(x, torch.Generator(device="cuda").manual_seed(0)).mean()
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_compiled_bf16_training_step_matches_eager_on_the_gpu():
    # The small model (the paper model takes many minutes to compile): inductor's CUDA kernels,
    # forward and backward under bf16 autocast, against the same step run eagerly.
    from utils import loss_and_flat_grads

    from densflow.performance import compile_model

    torch.manual_seed(0)
    eager = DenseFlow(DenseFlowConfig.small()).cuda().train()
    x = batch(8, seed=2)
    with torch.no_grad():
        eager(x)  # data-dependent ActNorm init
    compiled = DenseFlow(DenseFlowConfig.small()).cuda().train()
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled)
    got_loss, got_grads = loss_and_flat_grads(compiled, x, amp="bf16")
    expected_loss, expected_grads = loss_and_flat_grads(eager, x, amp="bf16")
    assert torch.isfinite(got_loss) and torch.isfinite(got_grads).all()
    assert (got_loss - expected_loss).abs() < 0.01
    assert (got_grads - expected_grads).norm() <= 0.05 * expected_grads.norm()


@pytest.mark.parametrize("name", ["Adamax", "Adam"])
def test_compiled_optimizer_step_matches_eager_on_the_gpu(name):
    # On the GPU the lr tensor and the capturable step counts live on the device; the saved
    # state must still be an eager optimizer's (float lr, step counts on the host).
    import warnings

    from utils import optimizer_parameters, optimizer_steps

    from densflow.training.optim import compile_optimizer, optimizer_state_dict

    optim = getattr(torch.optim, name)
    eager_params = optimizer_parameters(dtype=torch.float32, device="cuda")
    compiled_params = optimizer_parameters(dtype=torch.float32, device="cuda")
    start = [p.detach().clone() for p in eager_params]
    eager = optim(eager_params, lr=1e-3, foreach=True)
    compiled = optim(compiled_params, lr=1e-3, foreach=True)
    compile_optimizer(compiled)
    lrs = [1e-3, 5e-4, 2e-4]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
        optimizer_steps(eager, eager_params, lrs, torch.Generator().manual_seed(1))
        optimizer_steps(compiled, compiled_params, lrs, torch.Generator().manual_seed(1))
    assert compiled.param_groups[0]["lr"].device.type == "cuda"
    for p0, a, b in zip(start, eager_params, compiled_params, strict=True):
        assert (b - a).norm() <= 1e-3 * (a - p0).norm()  # float32 parameters of size ~1
    saved = optimizer_state_dict(compiled)
    assert type(saved["param_groups"][0]["lr"]) is float
    assert all(s["step"].device.type == "cpu" for s in saved["state"].values())


def test_graphed_training_step_replays_the_eager_step_on_the_gpu():
    # Three optimizer steps each way, float32. The capture's warm-up passes must leave the
    # BatchNorm statistics as they were (compared below with every other buffer and parameter),
    # and each replay must rewrite the gradients, not add to the last step's.
    import copy

    from densflow.training.step import GraphedTrainingStep, forward_backward

    torch.manual_seed(0)
    eager = DenseFlow(DenseFlowConfig.small()).cuda().train()
    with torch.no_grad():
        eager(batch(8, seed=9))  # data-dependent ActNorm init
    replayed = copy.deepcopy(eager)
    step = GraphedTrainingStep(replayed)
    opt_eager = torch.optim.Adamax(eager.parameters(), lr=1e-3, foreach=True)
    opt_replayed = torch.optim.Adamax(replayed.parameters(), lr=1e-3, foreach=True)
    for i in range(3):
        x = batch(8, seed=i)
        noise = eager.draw_noise(8, torch.Generator(device="cuda").manual_seed(i))
        expected, _ = forward_backward(eager, x, noise)
        opt_eager.step()
        opt_eager.zero_grad(set_to_none=True)
        got, _ = step(x, noise)
        opt_replayed.step()
        assert step.captured
        assert (got - expected).abs() <= 1e-5 * expected.abs(), i
    for (name, a), b in zip(
        eager.state_dict().items(), replayed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name


def test_a_capturable_adamax_updates_as_the_eager_one_on_the_gpu():
    # What GraphedUpdate makes of the optimizer: a device lr and step counts; the same update
    # up to the float32 rounding of the bias corrections.
    from utils import optimizer_parameters, optimizer_steps

    from densflow.training.optim import make_capturable

    eager_params = optimizer_parameters(dtype=torch.float32, device="cuda")
    capturable_params = optimizer_parameters(dtype=torch.float32, device="cuda")
    start = [p.detach().clone() for p in eager_params]
    eager = torch.optim.Adamax(eager_params, lr=1e-3, foreach=True)
    capturable = torch.optim.Adamax(capturable_params, lr=1e-3, foreach=True)
    make_capturable(capturable)
    lrs = [1e-3, 5e-4, 2e-4]
    optimizer_steps(eager, eager_params, lrs, torch.Generator().manual_seed(1))
    optimizer_steps(capturable, capturable_params, lrs, torch.Generator().manual_seed(1))
    for p0, a, b in zip(start, eager_params, capturable_params, strict=True):
        assert (b - a).norm() <= 1e-5 * (a - p0).norm()


def test_the_graphed_step_and_update_follow_the_eager_step_on_the_gpu():
    # Forward, backward, clip and Adamax each replayed from a graph against TrainStep, float32:
    # five steps with a changing rate, the third skipped for a NaN in its noise (no update, the
    # BatchNorm statistics restored). The optimizer's graph is captured at its second update.
    import copy
    import warnings

    from densflow.training.optim import optimizer_state_dict
    from densflow.training.step import GraphedStep, TrainStep

    torch.manual_seed(0)
    eager = DenseFlow(DenseFlowConfig.small()).cuda().train()
    with torch.no_grad():
        eager(batch(8, seed=9))  # data-dependent ActNorm init
    replayed = copy.deepcopy(eager)
    steps = [
        TrainStep(eager, torch.optim.Adamax(eager.parameters(), lr=1.0, foreach=True),
                  max_norm=50.0),
        GraphedStep(replayed, torch.optim.Adamax(replayed.parameters(), lr=1.0, foreach=True),
                    max_norm=50.0),
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
        for i, lr in enumerate([1e-3, 8e-4, 6e-4, 4e-4, 2e-4]):
            x = batch(8, seed=i)
            noise = eager.draw_noise(8, torch.Generator(device="cuda").manual_seed(i))
            if i == 2:
                first = next(iter(noise))
                noise[first] = torch.full_like(noise[first], float("nan"))
            expected, got = (step(x, noise, lr) for step in steps)
            if i == 2:
                assert expected.loss is None and got.loss is None
                continue
            assert (got.loss - expected.loss).abs() <= 1e-5 * expected.loss.abs(), i
            assert (got.grad_norm - expected.grad_norm).abs() <= 1e-4 * expected.grad_norm, i
    graphed = steps[1]
    assert graphed.graphed.captured and graphed.update.captured
    assert graphed.parameters_finite()
    for (name, a), b in zip(
        eager.state_dict().items(), replayed.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), name
    saved = optimizer_state_dict(graphed.optimizer)
    assert type(saved["param_groups"][0]["lr"]) is float
    assert saved["param_groups"][0]["capturable"] is False
    assert all(s["step"].device.type == "cpu" for s in saved["state"].values())
    assert all(float(s["step"]) == 4 for s in saved["state"].values())  # the skip did not count


def test_trainer_with_cuda_graphs_follows_the_eager_run_on_the_gpu(tmp_path):
    from utils import tiny_run

    from densflow.training import Trainer, read_metrics
    from densflow.training.step import GraphedStep

    def bpds(cuda_graphs):
        cfg = tiny_run(
            tmp_path / str(cuda_graphs), image_size=32, batch_size=8, epochs=1, max_steps=6,
            warmup_steps=2, device="cuda", amp="bf16", channels_last=True,
            cuda_graphs=cuda_graphs,
        )  # fmt: skip
        trainer = Trainer(cfg)
        trainer.fit()
        step = trainer.train_step
        graphed = isinstance(step, GraphedStep) and step.graphed.captured and step.update.captured
        assert graphed == cuda_graphs
        return [e["bpd"] for e in read_metrics(cfg.out_dir) if e["event"] == "train"]

    expected, got = bpds(False), bpds(True)
    assert len(got) == len(expected) == 6
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-3
