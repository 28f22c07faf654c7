"""What an interrupted evaluation keeps, and what the same command resumes from: progress files.

An importance-weighted evaluation of a paper-size model runs for hours. Each process keeps the
bits/dim of the images of its shard that it has finished in a progress file of its own, written
atomically at most every ``save_interval_s`` seconds, and on Ctrl-C, on SIGTERM (which
``torchrun`` sends the other processes when one of them dies) and on any error: ``partial_path``
for a single process, ``partial_path.rank<r>`` for rank ``r`` of several.

Image ``i``'s numbers depend on the seed and ``i`` alone (:mod:`densflow.evaluation.draws`), so
any progress file of the same model, images and settings serves: a process resumes from what any
of them holds for its shard, whatever the number of processes or the batch size that wrote it
(the same command: the uninterrupted numbers to the bit; another batch size: within rounding).

Only files of this program are ever replaced or deleted: a file at a process's own path that is
not such a progress file is refused before any work, and one of another model or other settings
is replaced with a warning; when the evaluation completes, each process deletes its own file and
rank 0 the other files of this evaluation that it found (a file the system refuses to delete
stays, with a warning: the numbers are complete). The files are read as every torch file of
densflow is (:func:`~densflow.io.checkpoint.read_torch_file`: tensors and plain values, nothing in
them run) and written as every file is (:func:`~densflow.io.files.atomic_save`).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..io.checkpoint import read_torch_file
from ..io.files import atomic_save, write_error
from ..model import DenseFlow
from ..utils.distributed import Dist
from ..utils.errors import InputError

__all__ = ["ProgressFiles", "fingerprint", "read_progress"]

FORMAT, VERSION = "densflow-eval-partial", 2


def fingerprint(model: DenseFlow) -> str:
    """SHA-256 of the model's configuration and state, so that progress is never resumed with
    other weights."""
    h = hashlib.sha256(repr(model.config.to_dict()).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_progress(path: Path) -> dict[str, Any]:
    """The progress file ``path``; anything else is refused (:class:`InputError`), since the
    evaluation replaces and finally deletes the file there."""
    try:
        state = read_torch_file(path)
    except InputError:  # not a torch file, or one that needs more than tensors to load
        state, reason = None, "damaged, or not a torch file of tensors and plain values"
    else:
        reason = "no evaluation-progress marker"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(
            f"partial_path {path} exists and is not an evaluation progress file ({reason}); "
            "the evaluation would overwrite and then delete it: pass another partial_path"
        )
    return state


class ProgressFiles:
    """This process's progress file, and what the progress files of this evaluation hold.

    Arguments:
        partial: the ``partial_path`` of the evaluation.
        dist: this process's place (its file is ``partial`` alone, or ``partial.rank<r>``).
        key: what the numbers depend on (the settings and the model's :func:`fingerprint`):
            a file with another key is not resumed from.
    """

    def __init__(self, partial: Path, dist: Dist, key: dict[str, Any]) -> None:
        self.dist, self.key = dist, key
        self.own = self.path_of(partial, dist)
        if partial.is_dir() or self.own.is_dir():
            raise InputError(f"partial_path {partial} is a folder; give a file path")
        own_state = read_progress(self.own) if self.own.exists() else None  # before any work
        if own_state is not None and not self._matches(own_state):
            warnings.warn(
                f"{self.own} holds the progress of another model or other settings; starting over",
                stacklevel=4,
            )
        self.found: dict[Path, dict[str, Any]] = {}
        siblings = [p for p in partial.parent.glob("*") if self._is_sibling(partial, p)]
        for path in [self.own, *sorted(siblings)]:
            try:
                state = own_state if path == self.own else read_progress(path)
            except (InputError, OSError):  # not ours (or unreadable): never touched
                continue
            if state is not None and self._matches(state):
                self.found[path] = state

    @staticmethod
    def path_of(partial: Path, dist: Dist) -> Path:
        """The progress file of ``dist``'s process."""
        if dist.world_size == 1:
            return partial
        return partial.with_name(f"{partial.name}.rank{dist.rank}")

    @staticmethod
    def _is_sibling(partial: Path, path: Path) -> bool:
        rest = path.name.removeprefix(partial.name)
        return path.name == partial.name or (
            path.name != rest and rest.startswith(".rank") and rest[5:].isdigit()
        )

    def _matches(self, state: dict[str, Any]) -> bool:
        return state.get("version") == VERSION and state.get("key") == self.key

    def resume(self, shard: range) -> tuple[list[Tensor], list[Tensor]]:
        """The recorded values of the first images of ``shard``, as far as every image is
        recorded: ``(single, iw)`` bits/dim, each a list of one tensor (or empty)."""
        recorded: dict[int, tuple[float | None, float | None]] = {}
        for state in self.found.values():
            single, iw = state["single"].tolist(), state["iw"].tolist()
            for t in range(max(len(single), len(iw))):
                recorded[state["start"] + t] = (
                    single[t] if single else None,
                    iw[t] if iw else None,
                )
        prefix = []
        for i in shard:
            if i not in recorded:
                break
            prefix.append(recorded[i])
        if not prefix:
            return [], []
        single, iw = zip(*prefix, strict=True)

        def values(column: tuple) -> list[Tensor]:
            return [] if column[0] is None else [torch.tensor(column, dtype=torch.float64)]

        return values(single), values(iw)

    def save(self, start: int, single: list[Tensor], iw: list[Tensor]) -> None:
        """Record the values of the images ``start, start + 1, …`` of this process's shard."""

        def values(parts: list[Tensor]) -> Tensor:
            return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)

        atomic_save({"format": FORMAT, "version": VERSION, "key": self.key, "start": start,
                     "single": values(single), "iw": values(iw)}, self.own)  # fmt: skip

    def remove(self, partial: Path) -> None:
        """The evaluation is complete: delete this process's file, and on rank 0 every other
        file of this evaluation that was found (of another number of processes); each only
        while it is still a progress file."""
        mine = {self.own}
        if self.dist.is_main:
            others = {self.path_of(partial, Dist(r, self.dist.world_size))
                      for r in range(self.dist.world_size)}  # fmt: skip
            mine |= set(self.found) - others
        for path in mine:
            if not path.exists():
                continue
            try:
                read_progress(path)  # still ours (nothing replaced it meanwhile)
            except (InputError, OSError):
                if path == self.own:
                    raise
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as err:  # the evaluation is complete: its result is not withheld
                warnings.warn(str(write_error(path, err, action="delete")), stacklevel=3)
