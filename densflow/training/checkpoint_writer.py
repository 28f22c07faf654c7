"""Checkpoints that do not stall training: a host copy of the state, written in the background.

:meth:`CheckpointWriter.save` takes a training checkpoint
(:func:`~densflow.training.state.training_checkpoint`: the model and optimizer state, the position,
the generators) and copies every tensor of it onto the host, so that the copy is independent of
the updates that follow. On CUDA the copies go into pinned buffers, all enqueued without
blocking and waited for by one synchronisation; on the CPU they are plain copies. The copy is
refused when a model tensor is not finite (:func:`~densflow.training.state.refuse_nonfinite`,
nothing is written), then one background thread writes it with
:func:`~densflow.io.files.atomic_save`.
The training thread stalls only for the copy and its check; serialising, writing and ``fsync``
overlap the next steps. The buffers (the size of a checkpoint: ~1.5 GB for the paper's model with
its Adamax state) are kept for the next saves.

**One write at a time.** A save first waits for the write before it (whose buffers it reuses).

**When a checkpoint counts.** A checkpoint counts as written when its file is in place: only then
is ``on_written`` called (the trainer logs it then and makes it the last good checkpoint of its
:class:`~densflow.training.divergence.DivergenceGuard`). :attr:`CheckpointWriter.submitted` names
the last one handed over, written or not. The ``metrics_bytes`` a checkpoint records is the size
of the metrics log at its copy, so a run resumed from it cuts exactly the log lines of the steps
it replays, whenever its write finished.

**Errors are not lost.** A write that fails (a full disk, no write access) leaves the previous
file as it was, and its :class:`~densflow.io.files.WriteError` (the synchronous
write's error, word for word) is raised in the training thread by the next :meth:`save` or
:meth:`wait`; :meth:`settle` hands it over as a clause instead, for a message that already stops
the run. A process killed during a write leaves the previous checkpoint and a temporary in the run
folder's staging folder, which the next run empties when it takes the lock
(:mod:`densflow.training.rundir`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.files import atomic_save
from .state import refuse_nonfinite

__all__ = ["CheckpointWriter"]

logger = logging.getLogger("densflow")


class CheckpointWriter:
    """Writes training checkpoints from host copies in one background thread (see the module).

    Arguments:
        on_written: called with ``(path, step)`` in the writer's thread when a checkpoint's file
            is in place.
        staging: the folder of the temporaries (the run folder lock's staging folder; default:
            the checkpoint's folder).

    Attributes:
        submitted: ``(path, step)`` of the last checkpoint handed to :meth:`save` and not
            refused (in flight, written, or failed).
    """

    def __init__(
        self,
        on_written: Callable[[Path, int], None] | None = None,
        staging: str | Path | None = None,
    ) -> None:
        self._on_written = on_written
        self._staging = staging
        self._thread: threading.Thread | None = None
        self._failure: tuple[int, BaseException] | None = None
        self._buffers: dict[tuple, Tensor] = {}
        self.submitted: tuple[Path, int] | None = None

    def save(self, path: str | Path, step: int, checkpoint: dict[str, Any]) -> None:
        """Wait for the write before (raising its error), copy ``checkpoint`` onto the host,
        refuse it if its ``"model"`` is not finite, and start writing it to ``path``."""
        self.wait()
        path = Path(path)
        snapshot, finite = self._host_copy(checkpoint)
        if not finite:  # names the tensors and raises (unless a sum merely overflowed)
            refuse_nonfinite(snapshot["model"], path)
        self.submitted = (path, step)
        self._thread = threading.Thread(
            target=self._write, args=(snapshot, path, step), name="densflow-checkpoint",
            daemon=True,  # fit() waits for it; only a process that dies anyway abandons it
        )  # fmt: skip
        self._thread.start()

    def wait(self) -> None:
        """Wait for the write in flight; raise its error if it failed (once)."""
        failure = self._join()
        if failure is not None:
            raise failure[1]

    def settle(self) -> str | None:
        """Wait for the write in flight, without raising: ``None``, or a clause saying which
        checkpoint could not be written and why (which reports the failure)."""
        failure = self._join()
        if failure is None:
            return None
        step, error = failure
        reason = getattr(error.__cause__, "strerror", None) or str(error)
        return f"the checkpoint of step {step} could not be written ({reason})"

    def wait_while_failing(self, failing: BaseException) -> None:
        """Wait for the write in flight while ``failing`` stops the run: a failed write is
        reported beside it (a log line, and a note on ``failing``), not in its place."""
        clause = self.settle()
        if clause is not None:
            logger.error("%s", clause)
            failing.add_note(clause)

    def _join(self) -> tuple[int, BaseException] | None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        failure, self._failure = self._failure, None
        return failure

    # ------------------------------------------------------------------ the two threads
    def _host_copy(self, checkpoint: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``checkpoint`` with its containers copied and each tensor replaced by a host copy in
        the writer's buffers (a tensor met twice is copied once; a state dict keeps its
        ``_metadata``, so the file is the synchronous write's, byte for byte), and whether every
        tensor of its ``"model"`` is finite.

        The check is one sum per tensor on its own device, read with the copies: a NaN or an
        infinity makes the sum non-finite; an overflowing sum alone is sorted out by the exact
        check that follows a ``False``."""
        sources: list[Tensor] = []
        copies: dict[int, Tensor] = {}

        def copy_of(obj: Any, key: tuple) -> Any:
            if isinstance(obj, Tensor):
                if id(obj) not in copies:
                    copies[id(obj)] = self._buffer(key, obj)
                    sources.append(obj.detach())
                return copies[id(obj)]
            if isinstance(obj, dict):
                out = type(obj)((k, copy_of(v, (*key, k))) for k, v in obj.items())
                if hasattr(obj, "_metadata"):  # module versions, read by load_state_dict
                    out._metadata = type(obj._metadata)(
                        (k, dict(v)) for k, v in obj._metadata.items()
                    )
                return out
            if isinstance(obj, (list, tuple)):
                items = [copy_of(v, (*key, i)) for i, v in enumerate(obj)]
                return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
            return obj  # numbers, strings, None: nothing training changes in place

        sums = [t.detach().sum() for t in checkpoint["model"].values() if t.is_floating_point()]
        finite = copy_of(torch.isfinite(torch.stack(sums)).all(), ("ok",)) if sums else True
        snapshot = copy_of(checkpoint, ())
        pairs = list(zip(copies.values(), sources, strict=True))
        host = [(buf, t) for buf, t in pairs if t.device.type == "cpu"]
        if host:  # one call for the tensors already on the host
            torch._foreach_copy_([buf for buf, _ in host], [t for _, t in host])
        for buf, t in pairs:  # from a device: into pinned memory without blocking, then one wait
            if t.device.type != "cpu":
                buf.copy_(t, non_blocking=t.is_cuda)
        for device in {t.device for t in sources if t.is_cuda}:
            torch.cuda.synchronize(device)
        return snapshot, bool(finite)

    def _buffer(self, key: tuple, t: Tensor) -> Tensor:
        """The host buffer of the tensor at ``key``: last save's when it still fits ``t``."""
        buf = self._buffers.get(key)
        if buf is None or (buf.shape, buf.dtype, buf.stride()) != (t.shape, t.dtype, t.stride()):
            # t's own strides where it is dense (channels_last weights stay so)
            stride = torch.empty_like(t, device="meta").stride()
            buf = torch.empty_strided(
                t.shape, stride, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda
            )
            self._buffers[key] = buf
        return buf

    def _write(self, snapshot: dict[str, Any], path: Path, step: int) -> None:
        try:
            atomic_save(snapshot, path, staging=self._staging)
            if self._on_written is not None:
                self._on_written(path, step)
        except BaseException as err:  # raised in the training thread by wait()
            self._failure = (step, err)
