"""How an evaluation computes a batch's single-sample bound: eagerly, through a compiled model's
compiled pass, or replayed from CUDA graphs. :func:`make_pass` chooses once per evaluation, as
training chooses its step (:func:`densflow.training.step.make_step`); both bounds are built on the
chosen pass (the importance-weighted one on the batch repeated, :mod:`densflow.evaluation.run`).

A compiled model compiles once per shape, and a CUDA graph is captured once per shape. A batch of
fewer images than a full one (the last of a shard) would be a new shape met once, whose
compilation (minutes) or capture (warm-up passes and the memory of new graphs) costs more than it
saves: such a batch runs eagerly. The numbers are the same either way, within rounding.
"""

from __future__ import annotations

import warnings
from typing import Protocol

from torch import Tensor

from ..model import DenseFlow
from ..performance import GraphedFlow, autocast, is_compiled, run_eagerly

__all__ = ["CompiledPass", "EagerPass", "GraphedPass", "Pass", "make_pass"]


class Pass(Protocol):
    def __call__(self, x: Tensor, noise: dict[str, Tensor], images: int) -> Tensor:
        """The single-sample bound in nats ``(len(x),)`` of uint8 images ``x`` with the given
        draws; ``x`` is a batch of ``images`` images, repeated ``len(x) / images`` times."""
        ...


class EagerPass:
    """The model's own pass, under ``amp``."""

    def __init__(self, model: DenseFlow, amp: str, full_batch: int) -> None:
        self.model, self.amp, self.full_batch = model, amp, full_batch

    def __call__(self, x: Tensor, noise: dict[str, Tensor], images: int) -> Tensor:
        with autocast(x.device, self.amp):
            return self.model.log_prob(x, noise=noise)


class CompiledPass(EagerPass):
    """A compiled model's compiled pass (:func:`~densflow.performance.compile_model`); a batch
    smaller than ``full_batch`` images runs eagerly (:func:`~densflow.performance.run_eagerly`)."""

    def __call__(self, x: Tensor, noise: dict[str, Tensor], images: int) -> Tensor:
        if images < self.full_batch:
            with run_eagerly():
                return super().__call__(x, noise, images)
        return super().__call__(x, noise, images)


class GraphedPass(EagerPass):
    """Full batches replayed from the CUDA graphs of a
    :class:`~densflow.performance.GraphedFlow` (the same draws, so the eager numbers within
    rounding); a smaller batch runs eagerly. On a CPU every pass runs eagerly, with a warning."""

    def __init__(self, model: DenseFlow, amp: str, full_batch: int) -> None:
        super().__init__(model, amp, full_batch)
        self.graphed = graphed_flow(model, amp, "evaluation")

    def __call__(self, x: Tensor, noise: dict[str, Tensor], images: int) -> Tensor:
        if images < self.full_batch:
            return super().__call__(x, noise, images)
        return self.graphed.log_prob(x, noise=noise)  # applies amp inside the graph


def graphed_flow(model: DenseFlow, amp: str, what: str) -> GraphedFlow:
    """The :class:`GraphedFlow` of ``cuda_graphs=True``; on a CPU it runs eagerly, and says so."""
    flow = GraphedFlow(model, amp)  # refuses a compiled model before any work
    device = model.prior.loc.device
    if device.type != "cuda":
        warnings.warn(
            f"cuda_graphs needs a CUDA device; on {device} the {what} runs eagerly",
            RuntimeWarning,
            stacklevel=4,
        )
    return flow


def make_pass(model: DenseFlow, amp: str, cuda_graphs: bool, full_batch: int) -> Pass:
    """The pass of an evaluation whose full batches hold ``full_batch`` images: graphed with
    ``cuda_graphs`` (which refuses a compiled model), compiled for a compiled model, else eager."""
    kind = GraphedPass if cuda_graphs else CompiledPass if is_compiled(model) else EagerPass
    return kind(model, amp, full_batch)
