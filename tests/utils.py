"""Helpers shared by the tests (imported as a plain module; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def perturb(module: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add ``scale``·N(0, 1) to every parameter, so that zero-initialised layers (which make
    couplings start as the identity) do not hide mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def jacobian_logdet(f, x: Tensor) -> Tensor:
    """``ln|det ∂f(x)/∂x|`` of a map between tensors of the same size, by autograd (one example)."""
    jac = torch.autograd.functional.jacobian(lambda t: f(t.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jac).logabsdet


def init_actnorms(model: nn.Module, *inputs, **kwargs) -> nn.Module:
    """One training-mode forward (data-dependent ActNorm init), then eval mode."""
    model.train()
    with torch.no_grad():
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
    optimizer: torch.optim.Optimizer, params: list[Tensor], lrs: list[float], g: torch.Generator
) -> None:
    """One step per learning rate in ``lrs``, with standard-normal gradients drawn from ``g``."""
    from densflow.training.optim import set_lr

    for lr in lrs:
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)
        set_lr(optimizer, lr)
        optimizer.step()


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
