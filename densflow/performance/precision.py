"""Number formats and memory layout: bf16 autocast and channels_last.

* :func:`autocast` — bf16 autocast for the networks inside the flow (coupling and conditioning
  nets). The invertible path itself (1×1 convolutions, affine updates) and every log-det, prior
  term and the loss stay in float32: see :func:`densflow.base.full_precision`.
* :func:`to_channels_last` — NHWC memory format for the convolutions.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ..utils.errors import InputError

__all__ = ["AMP_MODES", "autocast", "to_channels_last"]

AMP_MODES = ("none", "bf16")


def autocast(
    device: torch.device | str, amp: str = "none", cache_enabled: bool = True
) -> contextlib.AbstractContextManager:
    """The autocast context for ``amp`` in ``AMP_MODES`` on ``device`` (CPU or CUDA).

    ``cache_enabled=False`` for a CUDA graph capture: autocast's cache of casted weights would
    outlive the capture. (Each weight is cast once per pass here, so the cache saves nothing.)
    """
    if amp not in AMP_MODES:
        raise InputError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(
        torch.device(device).type, dtype=torch.bfloat16, cache_enabled=cache_enabled
    )


def to_channels_last(module_or_tensor: nn.Module | Tensor) -> nn.Module | Tensor:
    """Convert a model (its 4-D parameters) or an image batch to NHWC memory format.

    Only the layout changes: every reshape in densflow is logical, so results are identical up
    to the summation order of the convolution kernels.
    """
    if isinstance(module_or_tensor, Tensor):
        return module_or_tensor.contiguous(memory_format=torch.channels_last)
    return module_or_tensor.to(memory_format=torch.channels_last)
