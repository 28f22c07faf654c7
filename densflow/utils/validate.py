"""Checks of user-given values at the boundaries of the package (configs, public methods, the
command line): each raises an :class:`~densflow.utils.errors.InputError` (a ``ValueError``)
that names the argument, says what was expected and what was given, so that the command line can
show it as one line.

>>> check_int("k", 4)
4
>>> check_int("k", 2.5)
Traceback (most recent call last):
...
densflow.utils.errors.InputError: k must be an integer >= 1, got 2.5
>>> check_float("temperature", float("nan"), minimum=0.0)
Traceback (most recent call last):
...
densflow.utils.errors.InputError: temperature must be a finite number >= 0.0, got nan
"""

from __future__ import annotations

import functools
import math
import numbers
import types
import typing
from typing import Any

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "check_int",
    "check_float",
    "check_images",
    "check_noise",
    "field_default",
    "field_kind",
]


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; a bool, a float (even ``2.0``) or a
    string is refused, so ``k=2.5`` never becomes 2."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise InputError(f"{name} must be an integer {bound}, got {value!r}")


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> float:
    """``value`` as a finite ``float`` with ``minimum <= value <= maximum`` (``minimum < value``
    with ``exclusive``: a positive learning rate is ``minimum=0.0, exclusive=True``). NaN and
    ±inf are always refused."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if number and math.isfinite(value):
        low_ok = minimum is None or (value > minimum if exclusive else value >= minimum)
        if low_ok and (maximum is None or value <= maximum):
            return float(value)
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    bound = (" " + " and ".join(parts)) if parts else ""
    raise InputError(f"{name} must be a finite number{bound}, got {value!r}")


def check_images(x: Any, size: int, *, divisor: int) -> None:
    """``x`` is a batch of 8-bit RGB images ``(B, 3, size, size)``: an integer tensor with values
    0..255 and at least one image (a model of ``divisor`` halvings needs a side divisible by it)."""
    if not isinstance(x, Tensor):
        raise InputError(f"expected a torch.Tensor of uint8 images, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise InputError(
            f"expected uint8 images with values 0..255, got dtype {x.dtype}. DenseFlow models "
            "discrete 8-bit data; convert images in [0, 1] with (x * "
            "255).round().to(torch.uint8)"
        )
    if x.dim() != 4 or x.shape[1] != 3:
        raise InputError(
            f"expected a batch of RGB images of shape (B, 3, H, W), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise InputError("x is an empty batch (B = 0); pass at least one image")
    if tuple(x.shape[2:]) != (size, size):
        raise InputError(
            f"this model was built for {size}×{size} images, got {x.shape[2]}×{x.shape[3]}; "
            "build "
            f"one with DenseFlowConfig(image_size={x.shape[2]}, ...) (needs a square size "
            f"divisible by {divisor})"
        )
    if x.dtype != torch.uint8 and (x.min() < 0 or x.max() > 255):
        raise InputError(
            f"expected integer values in 0..255, got values in [{int(x.min())}, {int(x.max())}]"
        )


def check_noise(
    noise: dict[str, Tensor], expected: dict[str, tuple[int, ...]], batch_size: int,
    *, sampling: bool,
) -> None:  # fmt: skip
    """``noise`` holds floating-point draws of exactly the ``expected`` names and shapes (those of
    ``DenseFlow.noise_shapes(batch_size, sampling=sampling)``)."""
    got = {name: tuple(t.shape) for name, t in noise.items()}
    wrong = [name for name, t in noise.items() if not t.is_floating_point()]
    if wrong:
        raise InputError(f"noise must be floating point (standard-normal draws); {wrong} are not")
    if got != expected:
        raise InputError(
            f"noise does not fit this model and batch of {batch_size}: expected the shapes "
            f"{expected}, got {got}. Make it with model.draw_noise({batch_size}"
            f"{', sampling=True' if sampling else ''})"
        )


@functools.cache
def field_kind(cls: type, name: str) -> tuple[type, bool]:
    """The type of a dataclass field and whether it may be None: ``int | None`` →
    ``(int, True)``, ``bool`` → ``(bool, False)`` (of a union, its first type but None)."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def field_default(cls: type, name: str) -> Any:
    """The default of the dataclass ``cls``'s field ``name``: how a config reads a default whose
    home is another config, so that each number is written once."""
    import dataclasses

    return next(f.default for f in dataclasses.fields(cls) if f.name == name)
