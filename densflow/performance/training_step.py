"""The training-step helpers: the optimizer compiled, its learning rate and state, the forward and
backward pass of one step, and that pass captured in a CUDA graph.

* :func:`compile_optimizer` — ``torch.compile`` of the optimizer's update, with the learning
  rate as a tensor (:func:`set_lr`) so that a schedule does not recompile it, and checkpoints
  that load into an eager optimizer (:func:`optimizer_state_dict`).
* :class:`GraphedTrainingStep` — the forward and backward pass of a training step
  (:func:`forward_backward`) captured once in a CUDA graph and replayed, for GPUs, where the
  eager step is bound by the host issuing ~70,000 operator calls.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..bounds import bits_per_dim
from ..glow import ActNorm
from ..model import DenseFlow
from .compile import _compile_with_fallback
from .precision import autocast

__all__ = [
    "compile_optimizer",
    "set_lr",
    "optimizer_state_dict",
    "forward_backward",
    "GraphedTrainingStep",
]


def compile_optimizer(optimizer: torch.optim.Optimizer, **compile_kwargs) -> bool:
    """``torch.compile`` ``optimizer.step`` in place: the update of every parameter in a few fused
    kernels. ``False`` if it already was compiled.

    Eagerly, even the multi-tensor (``foreach``) update runs op by op and tensor by tensor on a
    CPU, with a host read of each step count: 401 parameter tensors in the small model, 3,423 in
    the paper's. So that a learning-rate schedule does not recompile it, each group's ``lr``
    becomes a 0-dim tensor of the parameters' dtype and device (change it with :func:`set_lr`)
    and the groups are made ``capturable`` (step counts and bias corrections stay tensors;
    torch's Adam takes a tensor ``lr`` in its multi-tensor path only so). The update is the
    eager one's, up to the float32 rounding of the bias corrections (torch's step counts are
    float32 tensors): ~1e-7 relative for Adamax, ~1e-5 for Adam's :math:`1 - \\beta_2^t` in
    its first steps.

    Save :func:`optimizer_state_dict`, which loads into an eager optimizer too. If compilation
    fails, a warning is issued, the groups get back their float ``lr`` and ``capturable``
    setting, and the step runs eagerly.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"compile_optimizer expects a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if getattr(optimizer.step, "densflow_compiled", False):
        return False
    optimizer.densflow_capturable = [group.get("capturable") for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        first = group["params"][0]
        group["lr"] = torch.tensor(float(group["lr"]), dtype=first.dtype, device=first.device)
        if "capturable" in group:
            group["capturable"] = True
            for p in group["params"]:  # a capturable step count lives with its parameter
                state = optimizer.state.get(p, {})
                if isinstance(state.get("step"), Tensor):
                    state["step"] = state["step"].to(p.device)

    def restore_eager_groups() -> None:
        eager = optimizer.densflow_capturable
        for group, capturable in zip(optimizer.param_groups, eager, strict=True):
            group["lr"] = float(group["lr"])
            if capturable is not None:
                group["capturable"] = capturable

    return _compile_with_fallback(optimizer, "step", restore_eager_groups, **compile_kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate: in place where it is a tensor (:func:`compile_optimizer`),
    so that the compiled step sees the new value without recompiling."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def optimizer_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as the eager optimizer would give it: float ``lr``, the
    ``capturable`` setting from before :func:`compile_optimizer`, step counts on the CPU where
    not capturable. Checkpoints written from it load into compiled and eager optimizers alike."""
    state_dict = optimizer.state_dict()
    eager = getattr(optimizer, "densflow_capturable", None)
    if eager is None:
        return state_dict
    groups = []
    for group, capturable in zip(state_dict["param_groups"], eager, strict=True):
        group = dict(group, lr=float(group["lr"]))
        if capturable is not None:
            group["capturable"] = capturable
            if not capturable:  # eager non-capturable steps read their count on the host
                for i in group["params"]:
                    state = state_dict["state"].get(i)
                    if state is not None and isinstance(state.get("step"), Tensor):
                        state_dict["state"][i] = dict(state, step=state["step"].cpu())
        groups.append(group)
    return {"state": state_dict["state"], "param_groups": groups}


def forward_backward(
    net: nn.Module,
    x: Tensor,
    noise: dict[str, Tensor],
    amp: str = "none",
    max_norm: float = math.inf,
    cache_enabled: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""The forward and backward pass of one training step; the gradients land in ``p.grad``.

    The loss is the single-sample bound (eq. 5) in bits per dimension, averaged over the batch,

    .. math:: \mathcal{L} = -\frac{1}{B}\sum_b \frac{\ln \hat p(x_b)}{D \ln 2},

    computed in float32 whatever ``amp`` is. ``net`` is a :class:`~densflow.model.DenseFlow` or a
    wrapper that forwards ``noise`` to it (DistributedDataParallel); ``noise`` comes from
    ``DenseFlow.draw_noise``. Returns the loss and the gradient norm (after clipping to
    ``max_norm``; infinite: measured, not clipped), both on the device: reading them is the
    caller's choice.
    """
    with autocast(x.device, amp, cache_enabled):
        log_prob = net(x, noise=noise)
    loss = bits_per_dim(log_prob.float().mean(), x.shape[1:])
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    return loss.detach(), grad_norm


class GraphedTrainingStep:
    """:func:`forward_backward` captured once in a CUDA graph, then replayed for every batch.

    Why: run eagerly, one training step of the paper model calls ~69,000 operators (29,000 in the
    forward pass, 39,000 in the backward, counted with a dispatch hook), and on a GPU the host
    issuing them is the bottleneck. On an H200 (2026-11-30) the eager step took ~1.2 s both at 32×32
    batch 64 and at 64×64 batch 32 (twice the pixels), and bf16 autocast, which adds casts, made
    it slower. A replay launches the recorded kernels with no Python, dispatcher or autograd work.

    Use: ``step(x, noise)`` copies the uint8 batch and the noise (drawn eagerly on the caller's
    generator, ``model.draw_noise``) into the graph's input buffers, replays, and returns copies
    of the loss and the gradient norm. The first call captures, after ``warmup`` eager passes on
    a side stream (CUDA's libraries set up their workspaces then); the model's buffers (BatchNorm
    statistics) are restored afterwards, so capturing changes nothing. Then:

    * the gradients are the graph's tensors, rewritten by each replay: take the optimizer step
      after each call, and do not set them to None (``zero_grad(set_to_none=True)``) in between;
    * shapes and memory formats are those of the first call, and ActNorm must be initialised;
    * the optimizer step stays outside the graph, so that the caller can skip it when the loss is
      not finite, as the Trainer does (its one host read per step).

    On a CPU, or where the capture fails (a warning says why), each call runs
    :func:`forward_backward` eagerly on the same buffers instead: the same numbers either way.
    """

    def __init__(
        self, model: DenseFlow, amp: str = "none", max_norm: float = math.inf, warmup: int = 3
    ) -> None:
        if not isinstance(model, DenseFlow):
            raise TypeError(f"GraphedTrainingStep expects a DenseFlow, got {type(model).__name__}")
        if not all(m.is_initialized() for m in model.modules() if isinstance(m, ActNorm)):
            raise ValueError(
                "ActNorm is not initialised: run one training-mode forward pass on a "
                "batch first (the Trainer does), then build the GraphedTrainingStep"
            )
        autocast("cpu", amp)  # checks amp now rather than at the first step
        self.model, self.amp, self.max_norm, self.warmup = model, amp, max_norm, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._x: Tensor | None = None
        self._noise: dict[str, Tensor] = {}
        self._out: tuple[Tensor, Tensor] | None = None

    @property
    def captured(self) -> bool:
        """Whether calls replay a CUDA graph (rather than running eagerly)."""
        return self.graph is not None

    def __call__(self, x: Tensor, noise: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        if self._x is None:
            self._set_up(x, noise)
        else:
            self._check_like(x, noise)
            self._x.copy_(x)
            for name, t in noise.items():
                self._noise[name].copy_(t)
        if self.graph is not None:
            self.graph.replay()
            loss, grad_norm = self._out
        else:
            self.model.zero_grad(set_to_none=True)
            loss, grad_norm = self._run()
        return loss.clone(), grad_norm.clone()

    def _run(self, cache_enabled: bool = True) -> tuple[Tensor, Tensor]:
        return forward_backward(
            self.model, self._x, self._noise, self.amp, self.max_norm, cache_enabled
        )

    def _set_up(self, x: Tensor, noise: dict[str, Tensor]) -> None:
        if x.dtype != torch.uint8:
            raise ValueError(f"GraphedTrainingStep takes uint8 images, got {x.dtype}")
        self._x = x.clone()  # clone keeps the memory format (channels_last stays so)
        self._noise = {name: t.clone() for name, t in noise.items()}
        if x.device.type != "cuda":
            return  # nothing to capture: eager calls on the buffers
        try:
            self._capture()
        except Exception as err:  # an operator that cannot be captured on this platform, …
            # self.graph is set only by a capture that completed: calls run eagerly.
            warnings.warn(
                f"CUDA graph capture failed ({err.__class__.__name__}: {err}); the "
                "training step runs eagerly",
                RuntimeWarning,
                stacklevel=3,
            )

    def _capture(self) -> None:
        buffers = list(self.model.buffers())
        saved = [b.clone() for b in buffers]
        side = torch.cuda.Stream(self._x.device)
        side.wait_stream(torch.cuda.current_stream(self._x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model.zero_grad(set_to_none=True)
                self._run()
        torch.cuda.current_stream(self._x.device).wait_stream(side)
        torch._foreach_copy_(buffers, saved)
        # Gradients None at capture: the graph's backward then writes them rather than adding.
        self.model.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._run(cache_enabled=False)
        self.graph = graph

    def _check_like(self, x: Tensor, noise: dict[str, Tensor]) -> None:
        got = (tuple(x.shape), x.dtype, {n: tuple(t.shape) for n, t in noise.items()})
        want = (
            tuple(self._x.shape),
            self._x.dtype,
            {n: tuple(t.shape) for n, t in self._noise.items()},
        )
        if got != want:
            raise ValueError(
                f"GraphedTrainingStep was set up for images {want[0]} {want[1]} and "
                f"noise {want[2]}, got {got[0]} {got[1]} and {got[2]}; build one "
                "per batch size"
            )
