r"""CUDA-graph replay of the flow's pure functions: the likelihood passes of an evaluation and the
sampling pass.

Why: run eagerly on a GPU, one forward pass of the paper model calls ~29,000 operators, and the host
issuing them, not the GPU, sets the pace (docs/performance.md). The importance-weighted bound that
the paper reports (k = 1000 samples per CIFAR-10 test image, 50 per pass) takes 20 such passes per
batch of test images. A CUDA graph records the kernels of one pass once and replays them with no
Python, dispatcher or allocator work.

What is captured: the two pure functions of :class:`~densflow.model.DenseFlow` (no random draws, no
host reads), given the images and the drawn noise —

* the log-likelihood of a batch (the single-sample bound, eqs. 5 and 9, Sec. 2.1:
  :meth:`~densflow.model.DenseFlow.terms_from_noise`, summed); a chunk of ``c`` samples of the
  importance-weighted bound is that pass on the batch repeated ``c`` times, combined by
  :func:`~densflow.bounds.importance_weighted_log_prob`, as the eager
  :meth:`~densflow.model.DenseFlow.iw_log_prob` does;
* a batch of samples from its noise (:meth:`~densflow.model.DenseFlow.sample_from_noise`; the
  quantization ``floor(256·v)`` follows eagerly), with each plain 1×1 convolution inverted by
  :class:`CapturableConv1x1` (``torch.linalg.inv`` reads its error flag back to the host).

The noise is given (``noise=``), or drawn eagerly on the caller's generator with exactly the draws
of the eager path (:meth:`~densflow.model.DenseFlow.draw_noise`, in the same order), and copied into
the graph's input buffers: a fixed seed gives the same bits/dim and the same samples either way.
A graph holds one set of shapes (:class:`CapturedCall` refuses others); :class:`GraphedFlow` keeps
one per shape.
On a CPU, or where a capture fails (a warning says why), the same function runs eagerly on the same
buffers: the same numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..base import full_precision, ldj_dtype
from ..bounds import importance_weighted_log_prob
from ..glow import InvertibleConv1x1, apply_conv1x1
from ..model import DenseFlow, sum_terms
from ..utils.errors import InputError
from ..utils.validate import check_float, check_images, check_int, check_noise
from .compile import is_compiled
from .modules import replace_modules
from .precision import autocast

__all__ = ["CapturableConv1x1", "CapturedCall", "GraphedFlow", "capture_graph"]

T = TypeVar("T")

Inputs = tuple[Tensor | dict[str, Tensor], ...]


def _clone(args: Inputs) -> Inputs:
    """Buffers like ``args`` (``clone`` keeps the memory format: channels_last stays so)."""
    return tuple(
        {k: t.clone() for k, t in a.items()} if isinstance(a, dict) else a.clone() for a in args
    )


def _copy(buffers: Inputs, args: Inputs) -> None:
    for buf, a in zip(buffers, args, strict=True):
        if isinstance(buf, dict):
            for k, t in a.items():
                buf[k].copy_(t)
        else:
            buf.copy_(a)


def _signature(args: Inputs) -> tuple:
    """Shapes, dtypes and devices of ``args`` (hashable): what a captured graph is bound to."""

    def one(t: Tensor) -> tuple:
        return tuple(t.shape), str(t.dtype).removeprefix("torch."), str(t.device)

    return tuple(
        ("dict", tuple((k, one(t)) for k, t in a.items())) if isinstance(a, dict)
        else ("tensor", one(a))
        for a in args
    )  # fmt: skip


def _first_difference(want: tuple, got: tuple) -> str:
    """The first input whose shape, dtype or device differs, in words."""

    def flat(signature: tuple) -> dict[str, tuple]:
        out = {}
        for i, (kind, a) in enumerate(signature):
            if kind == "dict":
                out.update({f"input {i} {k!r}": one for k, one in a})
            else:
                out[f"input {i}"] = a
        return out

    def say(one: tuple | None) -> str:
        return "nothing" if one is None else "{} {} on {}".format(*one)

    want, got = flat(want), flat(got)
    for name in [*want, *(n for n in got if n not in want)]:
        if want.get(name) != got.get(name):
            return f"{name}: captured for {say(want.get(name))}, got {say(got.get(name))}"
    return "the inputs differ"


def capture_graph(
    fn: Callable[[], T],
    device: torch.device,
    *,
    name: str,
    warmup: int = 0,
    buffers: list[Tensor] | tuple[Tensor, ...] = (),
    stacklevel: int = 2,
) -> tuple[torch.cuda.CUDAGraph, T] | None:
    """``fn()`` recorded in a CUDA graph on ``device``: the graph and the output tensors it
    rewrites at each replay, or None, with a ``RuntimeWarning`` naming ``name``, where the capture
    fails (an operator that cannot be captured on this platform, …); the caller then runs ``fn``
    eagerly. A capture records and runs nothing.

    ``warmup`` eager calls run first on a side stream (CUDA's libraries set up their workspaces
    then), after which ``buffers`` get back their values. The capture checks only this thread's
    CUDA calls (``thread_local``): a DataLoader's pinning thread may call CUDA meanwhile.
    """
    try:
        saved = [b.clone() for b in buffers]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        if buffers:
            torch._foreach_copy_(list(buffers), saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = fn()
    except Exception as err:
        warnings.warn(
            f"CUDA graph capture of {name} failed ({err.__class__.__name__}: {err}); it runs "
            "eagerly",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
        return None
    return graph, out


class CapturedCall:
    """``fn(*args)``, a pure function of tensors, captured once in a CUDA graph for the shapes of
    ``args`` and replayed by each call.

    ``args`` are tensors or dicts of tensors (an image batch, a noise dict); the first ones serve
    for the warm-up and the capture. A call copies its arguments into the graph's input buffers,
    replays, and returns a copy of the output (a tensor). The capture runs ``warmup`` eager calls
    on a side stream first (CUDA's libraries set up their workspaces then) and restores
    ``buffers`` afterwards (a module's buffers: nothing a warm-up changes survives it). ``fn`` must
    draw no random numbers and read nothing back to the host, and it runs as it is called: wrap
    it in ``torch.no_grad()`` and autocast yourself (autocast with ``cache_enabled=False``: its
    cache of cast weights would outlive the capture).

    On a CPU, or where the capture fails (a ``RuntimeWarning`` says why), each call runs ``fn``
    eagerly on the same buffers instead: the same numbers either way.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor],
        *args: Tensor | dict[str, Tensor],
        name: str = "the function",
        warmup: int = 2,
        buffers: list[Tensor] | tuple[Tensor, ...] = (),
    ) -> None:
        self.fn, self.name = fn, name
        self.warmup = check_int("warmup", warmup, minimum=0)
        self._args = _clone(args)
        self._signature = _signature(args)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._out: Tensor | None = None
        devices = {str(t.device) for t in self._tensors()}
        if len(devices) != 1:
            raise InputError(f"{name}: the inputs must share one device, got {sorted(devices)}")
        device = self._tensors()[0].device
        if device.type != "cuda":
            return  # nothing to capture: eager calls on the buffers
        captured = capture_graph(
            lambda: self.fn(*self._args), device, name=name, warmup=self.warmup,
            buffers=list(buffers), stacklevel=3,
        )  # fmt: skip
        if captured is not None:  # else calls run eagerly
            self.graph, self._out = captured

    @property
    def captured(self) -> bool:
        """Whether calls replay a CUDA graph (rather than running eagerly)."""
        return self.graph is not None

    def __call__(self, *args: Tensor | dict[str, Tensor]) -> Tensor:
        got = _signature(args)
        if got != self._signature:
            difference = _first_difference(self._signature, got)
            raise InputError(
                f"{self.name} was captured for other inputs ({difference}); a CUDA graph holds "
                "one set of shapes: build one per shape"
            )
        _copy(self._args, args)
        if self.graph is None:
            return self.fn(*self._args)
        self.graph.replay()
        return self._out.clone()

    def _tensors(self) -> list[Tensor]:
        return [t for a in self._args for t in (a.values() if isinstance(a, dict) else [a])]


class CapturableConv1x1(nn.Module):
    """An :class:`~densflow.glow.InvertibleConv1x1` (``conv``, wrapped) whose inverse takes
    ``W⁻¹`` from ``torch.linalg.inv_ex``: the LU solve of ``torch.linalg.inv`` (the same
    numbers) without its check of the solver's error flag, a host read that a CUDA graph cannot
    hold. A singular ``W`` then gives non-finite values rather than an error. :class:`GraphedFlow`
    puts it in place of each plain 1×1 convolution for the sampling pass only."""

    def __init__(self, conv: InvertibleConv1x1) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.conv(x)

    def inverse_weight(self, dtype: torch.dtype) -> Tensor:
        """``W⁻¹`` in ``dtype``."""
        return torch.linalg.inv_ex(self.conv.weight.to(dtype)).inverse

    def inverse(self, z: Tensor) -> Tensor:
        with full_precision(z):
            return apply_conv1x1(z, self.inverse_weight(ldj_dtype(z)))


class GraphedFlow:
    """The evaluation and sampling passes of an eval-mode :class:`~densflow.model.DenseFlow`,
    each replayed from a CUDA graph: one per shape, captured at its first use.

    ``log_prob``, ``iw_log_prob``, ``sample`` and ``sample_continuous`` take the arguments of the
    model's methods and return their numbers: the noise is drawn eagerly on ``generator`` with
    the same draws, in the same order (or given), and only the pure pass is replayed (float32
    within rounding of the eager path on a GPU, to the bit on a CPU, where every pass runs
    eagerly on the graph's buffers). ``amp`` is :func:`~densflow.performance.autocast`'s (bf16 for
    the networks inside the flow; log-dets, the prior and the bound stay float32), applied inside
    each pass.

    For evaluation only: no gradients, and the model must be in eval mode (BatchNorm's running
    statistics; a training-mode pass would update them, and ActNorm could initialise). The graphs
    read the parameters where they are: updates in place (an optimizer step, ``load_state_dict``)
    are seen by the next replay, but a model moved to another device or dtype needs a new
    ``GraphedFlow``. Each graph keeps the memory of its pass in a pool of its own until the
    ``GraphedFlow`` is dropped. Not for a compiled model (:func:`compile_model` is the
    other way to the same end).
    """

    def __init__(self, model: DenseFlow, amp: str = "none", warmup: int = 2) -> None:
        if not isinstance(model, DenseFlow):
            raise TypeError(f"GraphedFlow expects a DenseFlow, got {type(model).__name__}")
        if is_compiled(model):
            raise InputError(
                "GraphedFlow got a compiled model: choose one of compile and cuda_graphs (a "
                "capture of the compiled flow has not been validated)"
            )
        autocast("cpu", amp)  # checks amp now rather than at the first pass
        self.model, self.amp = model, amp
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.calls: dict[Hashable, CapturedCall] = {}

    @property
    def captured(self) -> bool:
        """Whether every pass so far replayed a CUDA graph (False before the first pass, on a
        CPU and after a failed capture)."""
        return bool(self.calls) and all(call.captured for call in self.calls.values())

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """:meth:`DenseFlow.log_prob <densflow.model.DenseFlow.log_prob>`: the single-sample
        bound in nats, ``(B,)``, the noise drawn from ``generator`` unless ``noise`` is given."""
        self._check(x)
        if noise is None:
            noise = self.model.draw_noise(x.shape[0], generator)
        else:
            check_noise(noise, self.model.noise_shapes(x.shape[0]), x.shape[0], sampling=False)
        return self._call(("log_prob",), self._log_prob, x, noise)

    @torch.no_grad()
    def iw_log_prob(
        self,
        x: Tensor,
        k: int,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:meth:`DenseFlow.iw_log_prob <densflow.model.DenseFlow.iw_log_prob>`: the
        importance-weighted bound ``ln (1/k) Σ_j w_j`` in nats, ``(B,)``
        (:func:`~densflow.bounds.importance_weighted_log_prob`), each chunk of ``chunk_size``
        samples one replayed pass of the repeated batch (a last, smaller chunk has a graph of its
        own)."""
        k = check_int("k", k)
        if chunk_size is not None:
            chunk_size = check_int("chunk_size", chunk_size)
        self._check(x)
        x = x.to(torch.uint8)  # the eager path repeats uint8 images too
        return importance_weighted_log_prob(
            lambda repeated, start: self.log_prob(repeated, generator), x, k, chunk_size
        )

    def _log_prob(self, x: Tensor, noise: dict[str, Tensor]) -> Tensor:
        model = self.model
        with autocast(x.device, self.amp, cache_enabled=False):
            terms = model.terms_from_noise(x.to(model.prior.loc.dtype), noise)
        return sum_terms(terms)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """:meth:`DenseFlow.sample <densflow.model.DenseFlow.sample>`: ``n`` uint8 images
        ``(n, 3, H, W)``; one graph per ``n`` and temperature (a constant of the pass)."""
        v = self.sample_continuous(n, temperature, generator)
        return self.model.dequantization.flow_inverse(v)

    @torch.no_grad()
    def sample_continuous(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        noise: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """:meth:`DenseFlow.sample_continuous
        <densflow.model.DenseFlow.sample_continuous>`: ``v ∈ [0, 1)`` before quantization,
        ``(n, 3, H, W)``, the draws from ``generator`` unless ``noise`` is given."""
        n = check_int("n", n)
        temperature = check_float("temperature", temperature, minimum=0.0)
        self._check_mode()
        if noise is None:
            noise = self.model.draw_noise(n, generator, sampling=True)
        else:
            check_noise(noise, self.model.noise_shapes(n, sampling=True), n, sampling=True)

        def sample_from(noise: dict[str, Tensor]) -> Tensor:
            model = self.model
            # Python runs only while capturing (or eagerly): the replacement is not replayed.
            replace_modules(model, InvertibleConv1x1, CapturableConv1x1)
            try:
                with autocast(model.prior.loc.device, self.amp, cache_enabled=False):
                    return model.sample_from_noise(noise, temperature)
            finally:
                replace_modules(model, CapturableConv1x1, lambda wrapper: wrapper.conv)

        return self._call(("sample", temperature), sample_from, noise)

    # ------------------------------------------------------------------ helpers
    def _check(self, x: Tensor) -> None:
        """The eager path's checks of the images (one line each), and of the mode."""
        check_images(x, self.model.config.image_size, divisor=2 ** len(self.model.blocks))
        self._check_mode()

    def _check_mode(self) -> None:
        if self.model.training:
            raise InputError(
                "GraphedFlow runs evaluation passes: put the model in eval mode first "
                "(model.eval()), so that BatchNorm uses its running statistics"
            )

    def _call(self, key: tuple, fn: Callable[..., Tensor], *args) -> Tensor:
        """``fn(*args)`` through the graph of ``key`` and the shapes of ``args`` (captured now
        if new)."""
        key = (*key, _signature(args))
        call = self.calls.get(key)
        if call is None:
            call = CapturedCall(
                fn, *args, name=f"GraphedFlow.{key[0]}", warmup=self.warmup,
                buffers=list(self.model.buffers()),
            )  # fmt: skip
            self.calls[key] = call
        return call(*args)
