"""Helpers shared by the tests (imported as a plain module; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import pickle
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from densflow.cli import main
from densflow.training import TrainConfig


def perturb(module: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add ``scale``·N(0, 1) to every parameter, so that zero-initialised layers (which make
    couplings start as the identity) do not hide mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def defaults(f) -> dict:
    """The keyword defaults of ``f``'s signature."""
    return {
        k: p.default for k, p in inspect.signature(f).parameters.items() if p.default is not p.empty
    }


def jacobian_logdet(f, x: Tensor) -> Tensor:
    """``ln|det ∂f(x)/∂x|`` of a map between tensors of the same size, by autograd (one example)."""
    jac = torch.autograd.functional.jacobian(lambda t: f(t.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac).logabsdet


def reference_log_prob(model: nn.Module, x: Tensor) -> Tensor:
    """The single-sample bound of ``x`` under fixed noise (0.3), without gradients."""
    from densflow import fixed_noise

    with torch.no_grad(), fixed_noise(0.3):
        return model.log_prob(x)


def check_bijection(bij, x: Tensor, *, atol_inv: float = 1e-10, atol_ldj: float = 1e-8) -> None:
    """Round trip on a batch, and the log-det of each example against autograd (float64)."""
    z, ldj = bij(x)
    assert ldj.shape == (x.shape[0],)
    assert ldj.dtype == torch.float64
    assert (bij.inverse(z) - x).abs().max() < atol_inv
    for i in range(x.shape[0]):
        expected = jacobian_logdet(lambda t: bij(t)[0], x[i : i + 1])
        assert torch.allclose(ldj[i], expected, atol=atol_ldj, rtol=1e-9), (ldj[i], expected)


def small_glow(channels: int = 6) -> nn.Module:
    """A glow-like module with a small DenseFlow coupling network."""
    from densflow.glow import GlowModule

    return GlowModule(channels, mid_channels=8, dense_depth=2, dense_growth=4)


def noise_jacobian_logdet(step, x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """For a flow step that appends noise, seen as a map of ``x`` (one example) and its draws:
    ``(ln|det J|, terms, noise)``, the log-det by autograd, and the step's terms for the same
    draws (seeded 0)."""
    from densflow.noise import draw

    shapes = step.noise_shapes(tuple(x.shape))
    noise = draw(shapes, torch.Generator().manual_seed(0))
    sizes = [x.numel(), *(t.numel() for t in noise.values())]

    def f(flat: Tensor) -> Tensor:
        first, *rest = flat.split(sizes)
        drawn = {k: t.view(shape) for (k, shape), t in zip(shapes.items(), rest, strict=True)}
        return step.flow_forward(first.view_as(x), drawn)[0].flatten()

    flat = torch.cat([x.flatten(), *(t.flatten() for t in noise.values())])
    jac = torch.autograd.functional.jacobian(f, flat)
    assert jac.shape[0] == jac.shape[1], "the step and its noise are not a square map"
    _, terms = step.flow_forward(x, noise)
    return torch.linalg.slogdet(jac).logabsdet, terms, noise


def init_actnorms(model: nn.Module, *inputs, **kwargs) -> nn.Module:
    """One training-mode forward (data-dependent ActNorm init), then eval mode: the model's own
    call, or a flow step's ``flow_forward`` with its noise drawn."""
    from densflow.base import Bijection, FlowStep, forward_with_draws

    model.train()
    with torch.no_grad():
        if isinstance(model, FlowStep) and not isinstance(model, Bijection):
            forward_with_draws(model, *inputs, **kwargs)
        else:
            model(*inputs, **kwargs)
    return model.eval()


def loss_and_flat_grads(model: nn.Module, x: Tensor, amp: str = "none") -> tuple[Tensor, Tensor]:
    """The mean bits/dim of ``x`` under fixed noise (0.3), and every parameter gradient as one
    vector: one training step's numbers, to compare a fast path with the eager float32 one."""
    from densflow import bits_per_dim, fixed_noise
    from densflow.performance import autocast

    model.zero_grad()
    with fixed_noise(0.3), autocast(x.device, amp):
        loss = bits_per_dim(model(x), x.shape[1:]).mean()
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def optimizer_parameters(
    seed: int = 0, dtype: torch.dtype = torch.float64, device: str = "cpu"
) -> list[Tensor]:
    """A conv weight, a bias and a matrix: a small parameter list for optimizer tests."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 4, 3, 3), (8,), (5, 5)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device).requires_grad_() for s in shapes]


def optimizer_steps(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    lrs: list[float],
    g: torch.Generator,
    update: Callable[[], object] | None = None,
) -> None:
    """One step per learning rate in ``lrs``, with standard-normal gradients drawn from ``g``;
    ``update`` (e.g. :func:`~densflow.training.optim.compile_optimizer`'s) instead of
    ``optimizer.step``."""
    from densflow.training.optim import set_lr

    for lr in lrs:
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
        set_lr(optimizer, lr)
        (update or optimizer.step)()


def assert_same_training_state(
    model_a: dict[str, Tensor], optimizer_a: dict, model_b: dict[str, Tensor], optimizer_b: dict
) -> None:
    """Bit-equal model tensors, name by name, and bit-equal optimizer states (the ``"state"`` of
    ``optimizer.state_dict()``): what an exact resume must give."""
    assert model_a.keys() == model_b.keys()
    for name, x in model_a.items():
        assert torch.equal(x, model_b[name]), name
    assert optimizer_a.keys() == optimizer_b.keys()
    for k, state in optimizer_a.items():
        assert state.keys() == optimizer_b[k].keys(), k
        for key, value in state.items():
            assert torch.equal(value, optimizer_b[k][key]), (k, key)


def snapshot(root: Path) -> dict[str, str | None]:
    """Every path under ``root`` with the SHA-256 of its bytes (None for a folder): equal
    snapshots mean that no file or folder was changed, lost or left behind."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else None
        for p in sorted(root.rglob("*"))
    }


def temporaries(folder: Path) -> list[str]:
    """What atomic writes into ``folder`` left: temporaries beside their targets, and anything in
    its staging folder besides the marker."""
    from densflow.io.files import TEMP_SUFFIX
    from densflow.io.locks import MARKER_NAME, STAGING_NAME

    beside = [p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    staging = folder / STAGING_NAME
    staged = (
        [p.name for p in staging.iterdir() if p.name != MARKER_NAME] if staging.is_dir() else []
    )
    return sorted(beside + staged)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` in this process: its exit status (argparse's SystemExit too), stdout and
    stderr."""
    try:
        status = main(argv)
    except SystemExit as exit_info:
        status = exit_info.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line(err: str, pattern: str) -> None:
    """``err`` is one ``error:`` line matching ``pattern``: no traceback, no usage block, no log
    lines."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def tiny_run(out_dir: str | Path, **overrides) -> TrainConfig:
    """A run of the tiny model on photos (16×16, batch 4, 2 epochs, 3 warm-up steps) that logs
    every step, evaluates never and checkpoints only at epoch ends, unless ``overrides`` say
    otherwise."""
    fields = dict(
        dataset="photos",
        model="tiny",
        image_size=16,
        batch_size=4,
        epochs=2,
        warmup_steps=3,
        out_dir=str(out_dir),
        log_every=1,
        checkpoint_every=0,
        eval_every=0,
        progress=False,
    )
    return TrainConfig(**{**fields, **overrides})


def subprocess_env(**changes: str) -> dict[str, str]:
    """The environment of a densflow subprocess: this checkout's densflow, one thread."""
    path = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    )
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **changes}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    *args: str, cwd: str | Path | None = None, nodes: int = 1, timeout: float = 600
) -> list[subprocess.CompletedProcess]:
    """``torchrun … args`` with two CPU processes (one thread each, this checkout's densflow):
    one launcher of two (``nodes=1``), or two launchers of one each that meet at a c10d
    rendezvous on localhost, as two machines would (``nodes=2``). Returns each launcher's run."""
    env = subprocess_env()
    run = [sys.executable, "-m", "torch.distributed.run"]
    if nodes == 1:
        commands = [[*run, "--standalone", "--nproc_per_node", "2", *args]]
    else:
        endpoint = f"127.0.0.1:{free_port()}"
        rendezvous = ["--nnodes", str(nodes), "--nproc_per_node", "1", "--rdzv-backend", "c10d",
                      "--rdzv-endpoint", endpoint, "--rdzv-id", "test"]  # fmt: skip
        commands = [[*run, *rendezvous, *args]] * nodes
    launched = [
        subprocess.Popen(
            c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for c in commands
    ]
    done = []
    for process in launched:
        out, err = process.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return done


def write_official_run(root, golden, *, prefix="module.", dataset="cifar10"):
    """An official run folder: args.pickle (argparse.Namespace) and check/checkpoint.pt."""
    cfg = golden["config"]
    args = argparse.Namespace(
        epochs=10,
        seed=0,
        device="cuda",
        parallel="dp",
        resume=None,
        name="golden",
        project=None,
        eval_every=1,
        check_every=1,
        log_tb=False,
        log_wandb=False,
        dataset=dataset,
        num_bits=8,
        batch_size=64,
        num_workers=4,
        pin_memory=True,
        augmentation="eta",
        num_classes=None,
        growth_rate=cfg["growth_rate"],
        checkpointing=False,
        block_conf=cfg["block_config"],
        layer_mid_chnls=cfg["layer_mid_chnls"],
        layers_conf=cfg["layers_config"],
        optimizer="adamax",
        lr=1e-3,
        warmup=5000,
        momentum=0.9,
        momentum_sqr=0.999,
        gamma=0.995,
        use_grad_norm=False,
    )
    (root / "check").mkdir(parents=True)
    with open(root / "args.pickle", "wb") as f:
        pickle.dump(args, f)
    state = {prefix + k: v for k, v in golden["state_dict"].items()}
    torch.save(
        {
            "current_epoch": 9,
            "train_metrics": {"bpd": [9.0]},
            "eval_metrics": {"bpd": [9.1]},
            "eval_epochs": [9],
            "model": state,
            "optimizer": {"state": {}, "param_groups": []},
            "scheduler_iter": None,
            "scheduler_epoch": None,
        },
        root / "check" / "checkpoint.pt",
    )
    return root
