"""Every Gaussian draw the model makes goes through :func:`randn`.

Two reasons to funnel the draws through one function:

* **Caller-controlled randomness.** Each draw takes an optional ``torch.Generator``; a run seeded
  by the caller is reproducible regardless of what else touches the global RNG.
* **Fixed-noise evaluation.** Under :func:`fixed_noise` every draw returns a constant tensor. The
  reference fixtures of the official implementation (``tests/fixtures/official/golden_A.pt``)
  were made that way, so this is how we prove that our log-likelihood equals theirs number for
  number.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["fixed_noise", "make_generator", "randn", "draw"]

_state = threading.local()


def _fixed_stack() -> list[float]:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextmanager
def fixed_noise(value: float) -> Iterator[None]:
    """Within this context every Gaussian draw of densflow returns the constant ``value``.

    Example:
        >>> import torch, densflow
        >>> with densflow.fixed_noise(0.5):
        ...     densflow.noise.randn((2,), dtype=torch.float64)
        tensor([0.5000, 0.5000], dtype=torch.float64)
    """
    stack = _fixed_stack()
    stack.append(float(value))
    try:
        yield
    finally:
        stack.pop()


def make_generator(where: torch.nn.Module | torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator on the device of ``where`` (a model, or a device), so that draws need no
    host-device copy."""
    if isinstance(where, torch.nn.Module):
        where = next(where.parameters()).device
    return torch.Generator(device=torch.device(where)).manual_seed(seed)


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Standard-normal draws of ``shape`` (or the :func:`fixed_noise` constant when active).

    A generator may live on another device than the requested one (a CPU generator driving a
    CUDA model, say): the draw is then made on the generator's device and moved.
    """
    stack = _fixed_stack()
    if stack:
        return torch.full(tuple(shape), stack[-1], dtype=dtype, device=device)
    if generator is not None and torch.device(generator.device) != torch.device(device or "cpu"):
        out = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=generator.device)
        return out.to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def draw(
    shapes: Mapping[str, Sequence[int]],
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """One :func:`randn` draw per entry of ``shapes``, in their order."""
    return {
        name: randn(shape, generator=generator, dtype=dtype, device=device)
        for name, shape in shapes.items()
    }
