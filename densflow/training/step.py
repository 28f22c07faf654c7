r"""One optimisation step, ``step(x, noise, lr) -> StepMetrics``, chosen once at start-up.

The loss is the single-sample lower bound (eq. 5, with the cross-unit terms of eq. 9) in bits per
dimension, averaged over the batch (:func:`training_loss`):

.. math:: \mathcal{L} = -\frac{1}{B}\sum_{b=1}^{B}\frac{\ln \hat p(x_b)}{D \ln 2}.

Implementations (:func:`make_step` picks one from :class:`~densflow.training.config.Speed`):

* :class:`TrainStep` — eager; under ``torchrun`` its network is the model wrapped in
  DistributedDataParallel (:func:`wrap_distributed`), which all-reduces the gradients.
* :class:`CompiledStep` — the same, after ``torch.compile`` of the flow
  (:func:`densflow.performance.compile_model`) and of the optimizer update
  (:func:`~densflow.training.optim.compile_optimizer`).
* :class:`GraphedStep` — the forward and backward pass with the gradient clip
  (:class:`GraphedTrainingStep`) and the optimizer update (:class:`GraphedUpdate`), each
  captured once in a CUDA graph and replayed.

Every implementation skips a step whose loss or gradient norm is not finite: no optimizer update,
and the BatchNorm running statistics its forward pass touched are restored, so the model is
exactly as before. Deciding that needs the loss on the host: the one scalar read per step (the
same one ``torch.amp.GradScaler`` makes).

An update can still make a parameter non-finite from a finite gradient (an overflow). After each
update the step computes, on the device, whether all parameters are finite (one fused max-norm
over the parameter list) and reads that flag together with the next step's loss, in the same
single read; a step that finds it false changes nothing and reports ``params_finite=False``, and
the Trainer stops before writing a checkpoint (:meth:`TrainStep.parameters_finite` reads the
flag at once, before a save).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..bounds import bits_per_dim
from ..glow import ActNorm
from ..model import DenseFlow
from ..performance import CapturedCall, Speed, autocast, capture_graph, compile_model
from ..utils.distributed import Dist, join_process_group
from ..utils.errors import InputError
from .optim import compile_optimizer, make_capturable, restore_eager_groups, set_lr

__all__ = [
    "BatchNormStats",
    "CompiledStep",
    "GraphedStep",
    "GraphedTrainingStep",
    "GraphedUpdate",
    "StepMetrics",
    "TrainStep",
    "all_finite",
    "forward_backward",
    "make_step",
    "training_loss",
    "wrap_distributed",
]


def training_loss(log_prob: Tensor, image_shape: tuple[int, ...]) -> Tensor:
    """The training objective: the batch mean of the single-sample bound in bits/dim, in float32
    whatever precision the networks ran in."""
    return bits_per_dim(log_prob.float().mean(), image_shape)


def forward_backward(
    net: nn.Module,
    x: Tensor,
    noise: dict[str, Tensor],
    amp: str = "none",
    max_norm: float = math.inf,
    cache_enabled: bool = True,
) -> tuple[Tensor, Tensor]:
    """The forward and backward pass of one step; the gradients land in ``p.grad``.

    ``net`` is a :class:`~densflow.model.DenseFlow` or a wrapper that forwards ``noise`` to it
    (DistributedDataParallel); ``noise`` comes from ``DenseFlow.draw_noise``. Returns
    :func:`training_loss` and the gradient norm (after clipping to ``max_norm``; infinite:
    measured, not clipped), both on the device: reading them is the caller's choice.
    """
    with autocast(x.device, amp, cache_enabled):
        log_prob = net(x, noise=noise)
    loss = training_loss(log_prob, x.shape[1:])
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    return loss.detach(), grad_norm


def all_finite(params: list[Tensor]) -> Tensor:
    """Whether every tensor of ``params`` is finite, as a device flag: the largest |value| of each
    tensor in one fused call, summed (a NaN or an infinity anywhere survives both)."""
    return torch.isfinite(torch.stack(torch._foreach_norm(params, math.inf)).sum())


@dataclass(frozen=True)
class StepMetrics:
    """What a step reports, on the device: ``loss`` (None when the step was skipped as
    non-finite) and the gradient norm before clipping; ``params_finite`` is False when the
    previous update had made a parameter non-finite (this step was then skipped)."""

    loss: Tensor | None
    grad_norm: Tensor
    params_finite: bool = True


class BatchNormStats:
    """Snapshot and restore of the BatchNorm running statistics (the only state a forward pass
    changes), so that a skipped step leaves the model exactly as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        for b in m.buffers()]  # fmt: skip
        self.saved = [b.clone() for b in self.buffers]

    def save(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def restore(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.saved)


class GraphedTrainingStep:
    """:func:`forward_backward` captured once in a CUDA graph, then replayed for every batch
    (:class:`~densflow.performance.CapturedCall`).

    Why: run eagerly, one training step of the paper model calls ~69,000 operators (29,000 in the
    forward pass, 39,000 in the backward, counted with a dispatch hook), and on a GPU the host
    issuing them is the bottleneck (docs/performance.md: the eager step takes about as long at
    64×64 as at 32×32). A replay launches the recorded kernels with no Python, dispatcher or
    autograd work.

    Use: ``step(x, noise)`` copies the uint8 batch and the noise (drawn eagerly on the caller's
    generator, ``model.draw_noise``) into the graph's input buffers, replays, and returns copies
    of the loss and the gradient norm. The first call captures, after ``warmup`` eager passes on
    a side stream (CUDA's libraries set up their workspaces then); the model's buffers (BatchNorm
    statistics) are restored afterwards, so capturing changes nothing. Then:

    * the gradients are the graph's tensors, rewritten by each replay: take the optimizer step
      after each call, and do not set them to None (``zero_grad(set_to_none=True)``) in between;
    * shapes and memory formats are those of the first call, and ActNorm must be initialised;
    * the optimizer step is not in this graph, so that the caller can skip it when the loss is
      not finite (:class:`GraphedStep` replays it from a graph of its own after that check).

    On a CPU, or where the capture fails (a warning says why), each call runs
    :func:`forward_backward` eagerly on the same buffers instead: the same numbers either way.
    """

    def __init__(
        self, model: DenseFlow, amp: str = "none", max_norm: float = math.inf, warmup: int = 3
    ) -> None:
        if not isinstance(model, DenseFlow):
            raise TypeError(f"GraphedTrainingStep expects a DenseFlow, got {type(model).__name__}")
        if not all(m.is_initialized() for m in model.modules() if isinstance(m, ActNorm)):
            raise InputError(
                "ActNorm is not initialised: run one training-mode forward pass on a "
                "batch first (the Trainer does), then build the GraphedTrainingStep"
            )
        autocast("cpu", amp)  # checks amp now rather than at the first step
        self.model, self.amp, self.max_norm, self.warmup = model, amp, max_norm, warmup
        self._call: CapturedCall | None = None

    @property
    def captured(self) -> bool:
        """Whether calls replay a CUDA graph (rather than running eagerly)."""
        return self._call is not None and self._call.captured

    def __call__(self, x: Tensor, noise: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self._call is None:
            if x.dtype != torch.uint8:
                raise InputError(f"GraphedTrainingStep takes uint8 images, got {x.dtype}")
            self._call = CapturedCall(
                self._step, x, noise, name="the training step", warmup=self.warmup,
                buffers=list(self.model.buffers()),
            )  # fmt: skip
        loss, grad_norm = self._call(x, noise)
        return loss, grad_norm

    def _step(self, x: Tensor, noise: dict[str, Tensor]) -> Tensor:
        # Gradients None first: the captured backward then writes them rather than adding to the
        # warm-up's, and each eager call starts afresh. No autocast cache: it would outlive a
        # capture.
        self.model.zero_grad(set_to_none=True)
        loss, grad_norm = forward_backward(
            self.model, x, noise, self.amp, self.max_norm, cache_enabled=False
        )
        return torch.stack([loss, grad_norm.to(loss.dtype)])


class TrainStep:
    """The eager step: ``step(x, noise, lr)`` sets the rate, runs :func:`forward_backward` on
    ``net`` (the model, or its DDP wrapper) and updates, or skips a non-finite step.

    ``step(x, noise, lr, overlap=fn)`` calls ``fn()`` once the forward and backward pass are
    issued and before the step's one host read: on a GPU the host prepares the next batch
    (:meth:`~densflow.training.batches.StepInputs.prefetch`) while the device computes this one.
    ``fn`` must not touch the model.
    """

    def __init__(
        self,
        model: DenseFlow,
        optimizer: torch.optim.Optimizer,
        *,
        net: nn.Module | None = None,
        amp: str = "none",
        max_norm: float = math.inf,
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.net = model if net is None else net
        self.amp, self.max_norm = amp, max_norm
        self._stats = BatchNormStats(model)
        self._optimizer_update: Callable[[], object] = optimizer.step
        self._params = [p for p in model.parameters() if p.requires_grad]
        # Whether the parameters after the last update are finite, on the device, unread.
        self._params_ok = torch.ones((), dtype=torch.bool, device=self._params[0].device)

    def __call__(
        self, x: Tensor, noise: dict[str, Tensor], lr: float,
        overlap: Callable[[], object] | None = None,
    ) -> StepMetrics:  # fmt: skip
        set_lr(self.optimizer, lr)
        self._stats.save()
        loss, grad_norm = self._forward_backward(x, noise)
        flags = torch.stack([torch.isfinite(loss) & torch.isfinite(grad_norm), self._params_ok])
        if overlap is not None:
            overlap()
        finite, params_finite = flags.tolist()  # the one read per step
        if finite and params_finite:
            self._params_ok = self._update()
        else:
            self._stats.restore()
        self._clear_grads()
        return StepMetrics(loss if finite and params_finite else None, grad_norm, params_finite)

    def parameters_finite(self) -> bool:
        """Whether every parameter is finite after the last update (a host read)."""
        return bool(self._params_ok)

    def _update(self) -> Tensor:
        """The optimizer update; returns whether all parameters are finite after it, as a device
        flag."""
        self._optimizer_update()
        return all_finite(self._params)

    def _forward_backward(self, x: Tensor, noise: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return forward_backward(self.net, x, noise, self.amp, self.max_norm)

    def _clear_grads(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


class CompiledStep(TrainStep):
    """:class:`TrainStep` with the flow compiled (in place, so that the state-dict keys and
    checkpoints do not change) and the optimizer's update compiled into a function this step
    calls (:func:`~densflow.training.optim.compile_optimizer`). Build it after ActNorm's
    initialisation, so that the flow compiles without the initialisation branch, and after any
    resume (compiling the optimizer makes its lr a tensor)."""

    def __init__(self, model: DenseFlow, optimizer: torch.optim.Optimizer, **kwargs) -> None:
        compile_model(model)
        super().__init__(model, optimizer, **kwargs)
        self._optimizer_update = compile_optimizer(optimizer)


class GraphedUpdate:
    """The optimizer update and the finiteness flag of the parameters after it
    (:func:`all_finite`), captured in a CUDA graph and replayed: one launch instead of the
    multi-tensor update's host loop over every parameter tensor (3,423 in the paper model).

    ``update()`` returns the flag, a device tensor that the next call rewrites. On CUDA the
    optimizer is made capturable (:func:`~densflow.training.optim.make_capturable`: a tensor
    ``lr`` that :func:`~densflow.training.optim.set_lr` fills in place, step counts on the
    device); its first update runs eagerly and creates the optimizer's state, the second is
    captured, then replayed, as is every later one. The gradients must be tensors that stay
    in place between calls (those of :class:`GraphedTrainingStep`).

    On a CPU, or where the capture fails (a warning says why), each call is the eager update.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[Tensor]) -> None:
        self.optimizer, self.params = optimizer, params
        self.graph: torch.cuda.CUDAGraph | None = None
        self._flag: Tensor | None = None
        self._eager = params[0].device.type != "cuda"
        self._updates = 0
        if not self._eager:
            make_capturable(optimizer)

    @property
    def captured(self) -> bool:
        """Whether calls replay a CUDA graph."""
        return self.graph is not None

    def __call__(self) -> Tensor:
        self._updates += 1
        if self.graph is None and not self._eager and self._updates > 1:
            captured = capture_graph(
                self._step, self.params[0].device, name="the optimizer update", stacklevel=3
            )
            if captured is None:  # nothing ran: the eager update, with the eager settings
                self._eager = True
                restore_eager_groups(self.optimizer)
            else:
                self.graph, self._flag = captured
        if self.graph is not None:
            self.graph.replay()
            return self._flag
        return self._step()

    def _step(self) -> Tensor:
        with warnings.catch_warnings():
            # torch's advice for a capturable optimizer stepped outside a capture: the first
            # update runs so on purpose, to create the state that the capture then records.
            warnings.filterwarnings("ignore", message=".*capturable=True.*without CUDA graph")
            self.optimizer.step()
        return all_finite(self.params)


class GraphedStep(TrainStep):
    """:class:`TrainStep` whose forward and backward pass (:class:`GraphedTrainingStep`) and
    optimizer update (:class:`GraphedUpdate`) each replay a CUDA graph, with the step's one host
    read, the finiteness check that decides whether to update, between them. On a CPU both run
    eagerly, with the same numbers as :class:`TrainStep`."""

    def __init__(
        self, model: DenseFlow, optimizer: torch.optim.Optimizer, *, amp: str = "none",
        max_norm: float = math.inf,
    ) -> None:  # fmt: skip
        super().__init__(model, optimizer, amp=amp, max_norm=max_norm)
        self.graphed = GraphedTrainingStep(model, amp, max_norm)
        self.update = GraphedUpdate(optimizer, self._params)

    def _forward_backward(self, x: Tensor, noise: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.graphed(x, noise)

    def _update(self) -> Tensor:
        return self.update()

    def _clear_grads(self) -> None:
        pass  # the graph's gradients are its own tensors, rewritten by each replay


def wrap_distributed(model: DenseFlow, device: torch.device, channels_last: bool) -> nn.Module:
    """``model`` in DistributedDataParallel, joining the ``torchrun`` process group (NCCL on
    CUDA, gloo on the CPU). The wrapper broadcasts rank 0's parameters and buffers, so every rank
    starts from rank 0's initialisation."""
    from torch.nn.parallel import DistributedDataParallel

    join_process_group(device)
    if channels_last:
        # DDP gives each gradient bucket its parameter's strides and warns (once) when a
        # gradient's differ. Under channels_last they differ only for tensors shaped (·, ·, 1, 1),
        # whose two layouts are the same bytes; tests/performance/test_precision.py checks that
        # every gradient has its parameter's layout in the dimensions larger than 1. A filter for
        # the process: a catch_warnings around each step would make every other warning repeat.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def make_step(
    model: DenseFlow,
    optimizer: torch.optim.Optimizer,
    speed: Speed,
    *,
    max_norm: float = math.inf,
    dist: Dist | None = None,
) -> TrainStep:
    """The step implementation for ``speed`` and this process (``dist``: its place in a
    ``torchrun`` job, default a single process); ActNorm must be initialised."""
    dist = dist or Dist()
    device = next(model.parameters()).device
    if speed.cuda_graphs:
        if dist.world_size > 1:
            raise InputError(
                "cuda_graphs works in a single process: a captured step cannot hold "
                "DistributedDataParallel's gradient all-reduce"
            )
        if device.type != "cuda":
            warnings.warn(
                f"cuda_graphs needs a CUDA device; on {device} the step runs eagerly",
                RuntimeWarning,
                stacklevel=3,
            )
        return GraphedStep(model, optimizer, amp=speed.amp, max_norm=max_norm)
    kind = CompiledStep if speed.compile else TrainStep
    # Compiled before the wrapping, so that DDP wraps the compiled flow.
    step = kind(model, optimizer, amp=speed.amp, max_norm=max_norm)
    if dist.world_size > 1:
        step.net = wrap_distributed(model, device, speed.channels_last)
    return step
