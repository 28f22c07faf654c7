"""Speed without changing the numbers: mixed precision, memory format and compilation.

Each switch here is optional and keeps the log-likelihood equal to the plain float32 path
(float32 switches within 1e-5 relative, bf16 within 0.01 bits/dim; see ``tests/test_performance.py``
and ``benchmarks/benchmark.py`` for what each one buys on a given machine):

* :func:`autocast` — bf16 autocast for the networks inside the flow (coupling and conditioning
  nets). The invertible path itself (1×1 convolutions, affine updates) and every log-det, prior
  term and the loss stay in float32: see :func:`densflow.base.full_precision`.
* ``channels_last`` — NHWC memory format for the convolutions (:func:`to_channels_last`).
* :func:`compile_networks` — ``torch.compile`` of every coupling and conditioning network, with a
  fallback to eager execution if compilation fails on this platform.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import Tensor, nn

from .coupling import CouplingNet
from .cross_unit import CrossUnitCoupling

__all__ = ["AMP_MODES", "autocast", "to_channels_last", "compile_networks"]

AMP_MODES = ("none", "bf16")


def autocast(device: torch.device | str, amp: str = "none") -> contextlib.AbstractContextManager:
    """The autocast context for ``amp`` in ``AMP_MODES`` on ``device`` (CPU or CUDA)."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def to_channels_last(module_or_tensor: nn.Module | Tensor) -> nn.Module | Tensor:
    """Convert a model (its 4-D parameters) or an image batch to NHWC memory format.

    Only the layout changes: every reshape in densflow is logical, so results are identical up
    to the summation order of the convolution kernels.
    """
    if isinstance(module_or_tensor, Tensor):
        return module_or_tensor.contiguous(memory_format=torch.channels_last)
    return module_or_tensor.to(memory_format=torch.channels_last)


def _compile_with_fallback(net: nn.Module, **compile_kwargs) -> None:
    """Replace ``net.forward`` by a compiled version that falls back to eager on failure.

    Overriding ``forward`` on the instance (rather than wrapping the module) keeps the
    state-dict keys unchanged, so checkpoints move freely between compiled and eager models.
    """
    eager = net.forward
    compiled = torch.compile(eager, **compile_kwargs)
    failed = False

    def forward(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:  # no C++ compiler, unsupported GPU, a dynamo gap, …
                failed = True
                warnings.warn(f"torch.compile failed ({err.__class__.__name__}: {err}); running "
                              f"{net.__class__.__name__} eagerly", RuntimeWarning, stacklevel=2)
        return eager(*args, **kwargs)

    forward.densflow_compiled = True
    net.forward = forward


def compile_networks(model: nn.Module, **compile_kwargs) -> int:
    """Compile every coupling network and cross-unit conditioning network of ``model`` in place.

    The flow's own bookkeeping (splits, log-dets, noise draws) stays eager, so random draws and
    float32 accumulation are untouched, and state-dict keys do not change. Returns the number of
    networks compiled. A compiled model cannot be pickled whole; save its ``state_dict``.
    """
    # Static shapes: one graph per distinct width (the paper model has ~74 coupling nets of a few
    # dozen widths). Dynamic shapes trip inductor on the channel arithmetic of the dense blocks.
    compile_kwargs.setdefault("dynamic", False)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    count = 0
    for module in model.modules():
        net = module.g if isinstance(module, CrossUnitCoupling) else module
        if isinstance(module, (CouplingNet, CrossUnitCoupling)) and not hasattr(net.forward, "densflow_compiled"):
            _compile_with_fallback(net, **compile_kwargs)
            count += 1
    return count
