"""An evaluation over the processes of a ``torchrun`` job, on one machine or several.

Each process evaluates a contiguous shard of the images (:meth:`Dist.shard
<densflow.utils.distributed.Dist.shard>`); since image ``i``'s numbers depend on the seed and
``i`` alone, the shards' values put together in rank order are those of one process, and the
per-image values are gathered, in dataset order, on every process (:meth:`Group.gather`).

The processes run in lockstep: the same number of rounds (the most batches any of them has left),
each ending with one sum of the images done, which rank 0 reports as the group's one progress
line (:class:`GroupProgress`). A process that dies breaks that collective: the others stop at once
(:class:`GroupStopped`, or ``torchrun``'s SIGTERM), keep their progress
(:mod:`densflow.evaluation.partial`) and exit, and the same command resumes every process.

The collectives carry a few numbers per batch and the per-image values at the end, so they go
over gloo on the CPU: the default process group where that is gloo, else one gloo group made once
per process beside the GPUs' NCCL group.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as tdist

from ..utils.distributed import Dist, join_process_group
from ..utils.runtime import progress_bar

__all__ = ["Group", "GroupProgress", "GroupStopped"]

logger = logging.getLogger("densflow")

_CPU_GROUP: list[Any] = []  # the gloo group of this process, made at its first evaluation


class GroupStopped(Exception):
    """A collective of the evaluation failed: another process of the ``torchrun`` job stopped
    (killed, out of memory, interrupted) or the connection to it broke. This process's progress
    is kept, as on an interruption: the same command resumes."""


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as err:  # gloo's errors (DistBackendError among them)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GroupStopped(f"another process of this torchrun job stopped ({reason})") from err


class Group:
    """The processes of an evaluation; for a single process every method is a no-op."""

    def __init__(self, dist: Dist, device: torch.device) -> None:
        self.dist = dist
        self.group = None
        if dist.world_size > 1:
            join_process_group(device)
            self.group = _cpu_group()

    def _reduce(self, value: int, op: str) -> int:
        if self.dist.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        with _collective():
            tdist.all_reduce(t, op=getattr(tdist.ReduceOp, op), group=self.group)
        return int(t.item())

    def max(self, value: int) -> int:
        """The largest ``value`` of all processes."""
        return self._reduce(value, "MAX")

    def sum(self, value: int) -> int:
        """The sum of ``value`` over all processes."""
        return self._reduce(value, "SUM")

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order, on every process."""
        if self.dist.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.dist.world_size
        with _collective():
            tdist.all_gather_object(out, obj, group=self.group)
        return out


def _cpu_group() -> Any:
    if tdist.get_backend() == "gloo":
        return None  # the default group
    if not _CPU_GROUP:
        _CPU_GROUP.append(tdist.new_group(backend="gloo"))
    return _CPU_GROUP[0]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class GroupProgress:
    """The group's one progress line, from rank 0: a bar where one is shown (``enabled``: None
    on a terminal and in notebooks), and, for an evaluation that lasts, a ``logging`` line of the
    logger ``densflow`` every ``interval_s`` seconds and at the end — images done of the total,
    images/s and the time left — so that a batch job's log shows it too."""

    def __init__(
        self, dist: Dist, total: int, done: int, *, enabled: bool | None,
        interval_s: float = 60.0,
    ) -> None:  # fmt: skip
        self.main, self.total, self.interval_s = dist.is_main, total, interval_s
        self.start_done = self.done = done
        self.start = self.last_line = time.monotonic()
        self.lines = 0
        self.bar = progress_bar(
            total, initial=done, desc="evaluate", unit="img",
            enabled=enabled if self.main else False,
        )  # fmt: skip

    def update(self, done: int) -> None:
        """The group has done ``done`` images in all."""
        self.bar.update(done - self.done)
        self.done = done
        now = time.monotonic()
        if now - self.last_line >= self.interval_s or (done == self.total and self.lines):
            self.last_line = now
            rate = (done - self.start_done) / max(now - self.start, 1e-9)
            left = _duration((self.total - done) / rate) if rate > 0 else "?"
            if self.main:
                logger.info(
                    "evaluate: %d/%d images (%.1f%%), %.2f images/s, %s left", done, self.total,
                    100 * done / self.total, rate, left,
                )  # fmt: skip
            self.lines += 1

    def close(self) -> None:
        self.bar.close()
