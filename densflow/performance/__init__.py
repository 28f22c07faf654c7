"""Speed without changing the numbers: transforms of a built model, each proven equal to the plain
model by the tests in ``tests/performance/``.

The model modules compute the paper's equations layer by layer; everything here changes *how*
they run, never *what*: float32 transforms keep the log-likelihood within 1e-5 relative, bf16
within 0.01 bits/dim (``benchmarks/benchmark.py`` measures what each buys on a machine).

Every transform leaves the model's classes alone: it replaces submodules on their parents by new
modules built from them (:func:`replace_modules`), never a method or a class of an instance.

* :mod:`~densflow.performance.compose` — :func:`compose_coupling_nets`: the coupling networks'
  adjacent 1×1 convolutions run as one (same parameters and state-dict keys).
* :mod:`~densflow.performance.precision` — :func:`autocast` (bf16 for the networks inside the
  flow; the invertible path and every term stay float32) and :func:`to_channels_last` (NHWC).
* :mod:`~densflow.performance.compile` — :func:`compile_model`: ``torch.compile`` of the flow's
  two pure functions, its log-density and its sampler, one graph each
  (:func:`compile_with_fallback`, also the optimizer's); :func:`prepare_model` applies the
  transforms to a loaded model; :func:`run_eagerly` skips compilation for a shape met once.
* :mod:`~densflow.performance.attention` — :func:`fuse_pinv`: the attention's pseudo-inverse
  with its m×m products written for the compiler (:func:`compile_model` applies it).
* :mod:`~densflow.performance.speed` — :class:`Speed`, the switches above, checked together; what
  training and evaluation choose their step or pass from.
* :mod:`~densflow.performance.graphs` — :class:`GraphedFlow`: the evaluation and sampling passes
  (the same two pure functions) replayed from CUDA graphs, one per shape, the noise drawn eagerly
  with the eager path's draws; :class:`CapturedCall`, one such graph; :class:`CapturableConv1x1`,
  the plain 1×1 convolution's inverse without a host read.
"""

from ..model import DenseFlow
from .attention import BroadcastPinv, fuse_pinv, unfuse_pinv
from .compile import (
    COMPILED_FUNCTIONS,
    CompiledPasses,
    compile_model,
    compile_with_fallback,
    is_compiled,
    run_eagerly,
)
from .compose import ComposedCouplingNet, compose_coupling_nets
from .graphs import CapturableConv1x1, CapturedCall, GraphedFlow, capture_graph
from .modules import replace_modules
from .precision import AMP_MODES, autocast, to_channels_last
from .speed import Speed

__all__ = [
    "AMP_MODES",
    "Speed",
    "autocast",
    "to_channels_last",
    "compose_coupling_nets",
    "ComposedCouplingNet",
    "compile_model",
    "compile_with_fallback",
    "is_compiled",
    "prepare_model",
    "run_eagerly",
    "replace_modules",
    "GraphedFlow",
    "CapturedCall",
    "CapturableConv1x1",
    "capture_graph",
    "COMPILED_FUNCTIONS",
    "CompiledPasses",
    "BroadcastPinv",
    "fuse_pinv",
    "unfuse_pinv",
]


def prepare_model(
    model: DenseFlow, channels_last: bool = False, compile: bool = False, compose: bool = True
) -> DenseFlow:
    """``model`` with the speed transforms applied, in place: for a loaded model that is to
    evaluate or sample as fast as a trained one. ``compose``: the coupling networks' composed
    1×1 convolutions (:func:`compose_coupling_nets`); ``channels_last``
    (:func:`to_channels_last`); ``compile`` (:func:`compile_model`)."""
    if compose:
        compose_coupling_nets(model)
    if channels_last:
        model = to_channels_last(model)
    if compile:
        compile_model(model)
    return model
