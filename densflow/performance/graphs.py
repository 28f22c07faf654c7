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
  :meth:`~densflow.model.DenseFlow.terms_from_noise`, summed), and the importance-weighted
  bound's chunk of ``c`` samples, :math:`\operatorname{logsumexp}_{j \le c} \ln w_j` for each
  image (the batch repeated ``c`` times in one pass, as
  :meth:`~densflow.model.DenseFlow.iw_log_prob` does);
* a batch of samples from its noise (:meth:`~densflow.model.DenseFlow.sample_from_noise`, then the
  quantization ``floor(256·v)``), with each plain 1×1 convolution inverted by
  :class:`CapturableConv1x1` (``torch.linalg.inv`` reads its error flag back to the host).

The noise is drawn eagerly, on the caller's generator, with exactly the draws of the eager path
(:meth:`~densflow.model.DenseFlow.draw_noise`, in the same order), and copied into the graph's input
buffers: a fixed seed gives the same bits/dim and the same samples either way. A graph holds one
set of shapes (:class:`CapturedCall` refuses others); :class:`GraphedFlow` keeps one per shape.
On a CPU, or where a capture fails (a warning says why), the same function runs eagerly on the same
buffers: the same numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
from torch import Tensor

from ..glow import InvertibleConv1x1
from ..model import DenseFlow
from ..utils.errors import InputError
from ..utils.validate import check_float, check_images, check_int
from .compose import swap_classes
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


class CapturableConv1x1(InvertibleConv1x1):
    """:class:`~densflow.glow.InvertibleConv1x1` whose ``W⁻¹`` comes from
    ``torch.linalg.inv_ex``: the LU solve of ``torch.linalg.inv`` (the same numbers) without its
    check of the solver's error flag, a host read that a CUDA graph cannot hold. A singular ``W``
    then gives non-finite values rather than an error. :class:`GraphedFlow` swaps it in for the
    sampling pass only (:func:`~densflow.performance.compose.swap_classes`: no state of its own)."""

    def inverse_weight(self, dtype: torch.dtype) -> Tensor:
        return torch.linalg.inv_ex(self.weight.to(dtype)).inverse


class GraphedFlow:
    """The evaluation and sampling passes of an eval-mode :class:`~densflow.model.DenseFlow`,
    each replayed from a CUDA graph: one per shape, captured at its first use.

    ``log_prob``, ``iw_log_prob`` and ``sample`` take the arguments of the model's methods and
    return their numbers: the noise is drawn eagerly on ``generator`` with the same draws, in the
    same order, and only the pure pass is replayed (float32 within rounding of the eager path on
    a GPU, to the bit on a CPU, where every pass runs eagerly on the graph's buffers). ``amp``
    is :func:`~densflow.performance.autocast`'s (bf16 for the networks inside the flow; log-dets,
    the prior and the bound stay float32), applied inside each pass.

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
        if getattr(model.terms_from_noise, "densflow_compiled", False):
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
    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:meth:`DenseFlow.log_prob <densflow.model.DenseFlow.log_prob>`: the single-sample
        bound in nats, ``(B,)``."""
        self._check(x)
        noise = self.model.draw_noise(x.shape[0], generator)
        return self._call(("log_prob",), self._log_prob, x, noise)

    @torch.no_grad()
    def iw_log_prob(
        self,
        x: Tensor,
        k: int,
        chunk_size: int = 50,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:meth:`DenseFlow.iw_log_prob <densflow.model.DenseFlow.iw_log_prob>`: the
        importance-weighted bound ``ln (1/k) Σ_j w_j`` in nats, ``(B,)``, ``chunk_size`` samples
        per replayed pass (a last, smaller chunk has a graph of its own), combined with a running
        ``logaddexp``."""
        k, chunk_size = check_int("k", k), check_int("chunk_size", chunk_size)
        self._check(x)
        x = x.to(torch.uint8)  # the eager path repeats uint8 images too
        b = x.shape[0]
        running = None
        done = 0
        while done < k:
            c = min(chunk_size, k - done)
            noise = self.model.draw_noise(c * b, generator)
            chunk = self._call(("iw_chunk", c), self._iw_chunk, x, noise)
            running = chunk if running is None else torch.logaddexp(running, chunk)
            done += c
        return running - math.log(k)

    def _log_prob(self, x: Tensor, noise: dict[str, Tensor]) -> Tensor:
        model = self.model
        with autocast(x.device, self.amp, cache_enabled=False):
            terms = model.terms_from_noise(x.to(model.prior.loc.dtype), noise)
        return torch.stack(list(terms.values())).sum(dim=0)

    def _iw_chunk(self, x: Tensor, noise: dict[str, Tensor]) -> Tensor:
        """``logsumexp`` over the chunk's ``c`` samples of each image's ``ln w``: the batch
        repeated ``c`` times, in one pass."""
        b = x.shape[0]
        c = next(iter(noise.values())).shape[0] // b
        log_w = self._log_prob(x.repeat(c, 1, 1, 1), noise).view(c, b)
        return torch.logsumexp(log_w, dim=0)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """:meth:`DenseFlow.sample <densflow.model.DenseFlow.sample>`: ``n`` uint8 images
        ``(n, 3, H, W)``; one graph per ``n`` and temperature (a constant of the pass)."""
        n = check_int("n", n)
        temperature = check_float("temperature", temperature, minimum=0.0)
        self._check_mode()
        noise = self.model.draw_noise(n, generator, sampling=True)

        def sample_from(noise: dict[str, Tensor]) -> Tensor:
            model = self.model
            # Python runs only while capturing (or eagerly): the swap is not replayed.
            swap_classes(model, InvertibleConv1x1, CapturableConv1x1)
            try:
                with autocast(model.prior.loc.device, self.amp, cache_enabled=False):
                    v = model.sample_from_noise(noise, temperature)
            finally:
                swap_classes(model, CapturableConv1x1, InvertibleConv1x1)
            return model.dequantization.flow_inverse(v)

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
