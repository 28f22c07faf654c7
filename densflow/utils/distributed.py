"""A process's place in a ``torchrun`` job, and the process group that its collectives use.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or per CPU slot) on
every node and tells each where it stands through environment variables: ``RANK`` (0 … N−1 over
all nodes), ``WORLD_SIZE`` (N), ``LOCAL_RANK`` (its index on its node) and ``MASTER_ADDR`` /
``MASTER_PORT`` (the rendezvous that the process group connects through). Training
(DistributedDataParallel, :mod:`densflow.training.step`) and evaluation (a shard of the test set
per process, :mod:`densflow.evaluation.distributed`) read it from :class:`Dist`; without
``torchrun`` a process is rank 0 of 1 and no process group is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InputError
from .runtime import resolve_device

__all__ = ["Dist", "broadcast_buffers", "gather_objects", "join_process_group"]


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        """The place ``torchrun`` gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        values = {name: os.environ.get(name) for name in names}
        if values["WORLD_SIZE"] in (None, "1"):
            return cls()
        try:
            rank, world, local = (int(values[name] or "0") for name in names)
        except ValueError:
            rank = world = local = -1
        if not (0 <= rank < world and local >= 0) or values["RANK"] is None:
            found = ", ".join(f"{name}={value}" for name, value in values.items())
            raise InputError(
                f"the torchrun environment is inconsistent ({found}); start the command with "
                "torchrun, which sets these variables, or unset WORLD_SIZE to run one process"
            )
        return cls(rank, world, local)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes a job's outputs."""
        return self.rank == 0

    def device(
        self, requested: str | torch.device | None = "auto", option: str = "device"
    ) -> torch.device:
        """Where this process runs: ``cuda:LOCAL_RANK`` under ``torchrun`` when ``requested``
        is ``"auto"`` or ``"cuda"`` and CUDA is available (one GPU per process), else
        ``requested`` as :func:`~densflow.utils.runtime.resolve_device` reads it (a bad one
        refused naming ``option``)."""
        name = "auto" if requested is None else str(requested)
        if self.world_size > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
            return resolve_device(f"cuda:{self.local_rank}", option)
        return resolve_device(name, option)

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items: ``[rank·n/N, (rank+1)·n/N)``; the shares
        of all ranks, in rank order, are ``range(n)``.

        Example:
            >>> [Dist(r, 3).shard(10) for r in range(3)]
            [range(0, 3), range(3, 6), range(6, 10)]
        """
        return range(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)


def join_process_group(device: torch.device) -> None:
    """Join ``torchrun``'s default process group, once per process: NCCL for CUDA devices, gloo
    on the CPU. Every rank must call it (it waits for all of them)."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's communicator uses the current device
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers of ``module`` (BatchNorm's running statistics, …) on every process, in
    place, so that the processes hold one model: each rank's statistics saw only its own data.
    Every rank must call it."""
    import torch.distributed as tdist

    for buffer in module.buffers():
        tdist.broadcast(buffer, src=0)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` (picklable) of every process of the default group, in rank order, on every
    process. Every rank must call it."""
    import torch.distributed as tdist

    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out
