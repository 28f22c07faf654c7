"""``torch.compile`` of a built DenseFlow, applied from outside the model.

:class:`~densflow.model.DenseFlow` computes everything through two pure functions of drawn noise:
:meth:`~densflow.model.DenseFlow.terms_from_noise` (every likelihood: ``log_prob``,
``iw_log_prob``, training) and :meth:`~densflow.model.DenseFlow.sample_from_noise` (sampling). The
noise is drawn beforehand, eagerly, on the caller's generator, so each is one graph, in which
inductor fuses the element-wise work of the couplings, ActNorms, attention and log-det sums,
forward and backward, across the whole flow. :func:`compile_model` compiles the two, and writes
the attention's pseudo-inverse in the form a compiler fuses (:class:`FusedPinvNystromAttention`).
:func:`~densflow.performance.prepare_model` applies it with the other transforms.
"""

from __future__ import annotations

import contextlib
import functools
import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from ..attention import NystromAttention, iterative_pinv
from ..model import DenseFlow
from .compose import swap_classes

__all__ = [
    "COMPILED_FUNCTIONS",
    "FusedPinvNystromAttention",
    "compile_model",
    "run_eagerly",
]

COMPILED_FUNCTIONS = ("terms_from_noise", "sample_from_noise")
"""The pure functions of :class:`~densflow.model.DenseFlow` that :func:`compile_model` compiles."""


class FusedPinvNystromAttention(NystromAttention):
    """:class:`~densflow.attention.NystromAttention` whose pseudo-inverse writes its m×m products
    as broadcast sums (``iterative_pinv(..., fused=True)``): the same numbers up to summation
    order, fused by inductor into a few kernels where each ``@`` would be a tiny batched matrix
    product (864 fewer such calls per training step of the small model). Eagerly, ``@`` is
    faster, so only compiled models use it."""

    def pseudo_inverse(self, k2: Tensor) -> Tensor:
        return iterative_pinv(k2, self.pinv_iterations, fused=True)


def _compile_with_fallback(
    owner: object, name: str, on_fallback: Callable[[], None] | None = None, **compile_kwargs
) -> bool:
    """Replace the method ``owner.<name>`` by a compiled version that falls back to eager on
    failure (after calling ``on_fallback``); ``False`` if it already was compiled.

    The compiled method is bound on the instance (rather than wrapping the module), so state-dict
    keys do not change and checkpoints move freely between compiled and eager models; being a
    bound method, it follows the model through ``copy.deepcopy``.
    """
    if getattr(getattr(owner, name), "densflow_compiled", False):
        return False
    eager = getattr(type(owner), name)
    compiled = torch.compile(eager, **compile_kwargs)
    failed = False

    @functools.wraps(eager)
    def method(self, *args, **kwargs):
        nonlocal failed
        if not failed:
            try:
                return compiled(self, *args, **kwargs)
            except Exception as err:  # no C++ compiler, unsupported GPU, a dynamo gap, …
                failed = True
                if on_fallback is not None:
                    on_fallback()
                warnings.warn(
                    f"torch.compile failed ({err.__class__.__name__}: {err}); running "
                    f"{type(self).__name__}.{name} eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return eager(self, *args, **kwargs)

    method.densflow_compiled = True
    setattr(owner, name, types.MethodType(method, owner))
    return True


def compile_model(model: DenseFlow, **compile_kwargs) -> list[str]:
    """``torch.compile`` the whole flow in place: :data:`COMPILED_FUNCTIONS`, its log-density
    and its sampler, each as one graph, with the attention's pseudo-inverses fused
    (:class:`FusedPinvNystromAttention`; back to the plain ones if compilation fails).

    Shapes are static (one graph per batch size; dynamic shapes trip inductor on the channel
    arithmetic of the dense blocks). If compilation fails on this platform, a warning is issued
    and the function runs eagerly. Returns the names of the functions compiled now (empty when
    already compiled). The state-dict keys do not change.

    Compilation takes minutes on a CPU and is paid again for each new batch size: worth it for
    training runs and long evaluations, not for a quick look. A compiled model cannot be pickled
    whole; save its ``state_dict``.
    """
    if not isinstance(model, DenseFlow):
        raise TypeError(f"compile_model expects a DenseFlow, got {type(model).__name__}")
    compile_kwargs.setdefault("dynamic", False)
    # One graph per batch size and mode (train/eval, grad/no-grad), each a cache entry.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    swap_classes(model, NystromAttention, FusedPinvNystromAttention)

    def unfuse() -> None:
        swap_classes(model, FusedPinvNystromAttention, NystromAttention)

    return [
        name
        for name in COMPILED_FUNCTIONS
        if _compile_with_fallback(model, name, unfuse, **compile_kwargs)
    ]


def run_eagerly() -> contextlib.AbstractContextManager:
    """A context in which compiled functions run their eager code instead of compiling.

    For a shape met once, such as the last, smaller batch of an evaluation, where a compilation
    (minutes) costs more than the eager pass it replaces. ``torch.compiler.set_stance`` needs
    torch 2.6; on older versions this is a no-op and such shapes compile as usual.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
