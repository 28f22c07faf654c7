"""``torch.compile`` of a built DenseFlow, applied from outside the model.

:class:`~densflow.model.DenseFlow` computes everything through two pure functions of drawn noise,
the methods of its :class:`~densflow.model.FlowPasses`:
:meth:`~densflow.model.DenseFlow.terms_from_noise` (every likelihood: ``log_prob``,
``iw_log_prob``, training) and :meth:`~densflow.model.DenseFlow.sample_from_noise` (sampling). The
noise is drawn beforehand, eagerly, on the caller's generator, so each is one graph, in which
inductor fuses the element-wise work of the couplings, ActNorms, attention and log-det sums,
forward and backward, across the whole flow. :func:`compile_model` replaces the model's
``passes`` by :class:`CompiledPasses`, and the attention's pseudo-inverses by the form a compiler
fuses (:func:`~densflow.performance.attention.fuse_pinv`).
:func:`~densflow.performance.prepare_model` applies it with the other transforms.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..model import DenseFlow, FlowPasses
from .attention import fuse_pinv, unfuse_pinv

__all__ = [
    "COMPILED_FUNCTIONS",
    "CompiledPasses",
    "compile_model",
    "compile_with_fallback",
    "is_compiled",
    "run_eagerly",
]

F = TypeVar("F", bound=Callable)

COMPILED_FUNCTIONS = ("terms_from_noise", "sample_from_noise")
"""The pure functions of :class:`~densflow.model.DenseFlow` that :func:`compile_model` compiles."""


def compile_with_fallback(
    fn: F, name: str, on_fallback: Callable[..., object] | None = None, **compile_kwargs
) -> F:
    """``torch.compile(fn)``, which runs ``fn`` eagerly from the first failure on (no C++
    compiler, an unsupported GPU, a gap of dynamo), after calling ``on_fallback`` with the
    failed call's arguments and warning, naming ``name``. The returned function carries
    ``densflow_compiled = True``."""
    compiled = torch.compile(fn, **compile_kwargs)
    failed = False

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args, **kwargs)
            except Exception as err:
                failed = True
                if on_fallback is not None:
                    on_fallback(*args, **kwargs)
                warnings.warn(
                    f"torch.compile failed ({err.__class__.__name__}: {err}); running {name} "
                    "eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return fn(*args, **kwargs)

    run.densflow_compiled = True
    return run


class CompiledPasses(nn.Module):
    """:class:`~densflow.model.FlowPasses` (``passes``, kept) with both functions compiled by
    :func:`compile_with_fallback`. Where one of them fails to compile, the flow it was called
    with gets back the plain pseudo-inverses (:func:`~densflow.performance.attention.unfuse_pinv`)
    and runs eagerly."""

    def __init__(self, passes: FlowPasses, **compile_kwargs) -> None:
        super().__init__()
        self.eager = passes

        def unfuse(flow: DenseFlow, *args) -> None:
            unfuse_pinv(flow)

        self._terms = compile_with_fallback(
            passes.terms, "DenseFlow.terms_from_noise", unfuse, **compile_kwargs
        )
        self._sample = compile_with_fallback(
            passes.sample, "DenseFlow.sample_from_noise", unfuse, **compile_kwargs
        )

    def terms(self, flow: DenseFlow, x: Tensor, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._terms(flow, x, noise)

    def sample(self, flow: DenseFlow, noise: dict[str, Tensor], temperature: float) -> Tensor:
        return self._sample(flow, noise, temperature)


def is_compiled(model: DenseFlow) -> bool:
    """Whether :func:`compile_model` has compiled ``model``."""
    return isinstance(model.passes, CompiledPasses)


def compile_model(model: DenseFlow, **compile_kwargs) -> list[str]:
    """``torch.compile`` the whole flow in place: :data:`COMPILED_FUNCTIONS`, its log-density
    and its sampler, each as one graph (:class:`CompiledPasses`), with the attention's
    pseudo-inverses fused (:func:`~densflow.performance.attention.fuse_pinv`; back to the plain
    ones if compilation fails).

    Shapes are static (one graph per batch size; dynamic shapes trip inductor on the channel
    arithmetic of the dense blocks). If compilation fails on this platform, a warning is issued
    and the function runs eagerly. Returns the names of the functions compiled now (empty when
    already compiled). The state-dict keys do not change: the replaced modules hold no state.

    Compilation takes minutes on a CPU and is paid again for each new batch size: worth it for
    training runs and long evaluations, not for a quick look. A compiled model cannot be pickled
    whole; save its ``state_dict``.
    """
    if not isinstance(model, DenseFlow):
        raise TypeError(f"compile_model expects a DenseFlow, got {type(model).__name__}")
    if is_compiled(model):
        return []
    compile_kwargs.setdefault("dynamic", False)
    # One graph per batch size and mode (train/eval, grad/no-grad), each a cache entry.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    fuse_pinv(model)
    model.passes = CompiledPasses(model.passes, **compile_kwargs)
    return list(COMPILED_FUNCTIONS)


def run_eagerly() -> contextlib.AbstractContextManager:
    """A context in which compiled functions run their eager code instead of compiling.

    For a shape met once, such as the last, smaller batch of an evaluation, where a compilation
    (minutes) costs more than the eager pass it replaces. ``torch.compiler.set_stance`` needs
    torch 2.6; on older versions this is a no-op and such shapes compile as usual.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
