"""The run folder: one writer at a time, checked writable before any work, and cleared of the
temporaries a killed save leaves behind.

:class:`RunFolderLock` is the :class:`~densflow.io.locks.FolderLock` of the run folder: a second
run on the same folder, in this process or another, is refused at once; the system releases the
lock when the holder's process ends, however it ends (an exception, Ctrl-C, ``kill -9``), so a
crash never leaves a stale lock to clean up by hand. Checkpoints are written through the lock's
staging folder (``OUT_DIR/.densflow-tmp``), and taking the lock empties it: a save killed
mid-write leaves its temporary there, and nothing else in the folder is ever removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..io.locks import LOCK_NAME, FolderBusyError, FolderLock
from ..io.outputs import check_output_folder
from ..utils.errors import InputError
from .config import CHECKPOINT_NAME, METRICS_NAME

__all__ = ["LOCK_NAME", "RunFolderLock", "TrainingSetupError"]


class TrainingSetupError(InputError):
    """A run that cannot start as configured (its folder, its data or its device); raised before
    any training work."""


class RunFolderLock:
    """An exclusive lock on a run folder, created (with its parents) if missing.

    :meth:`acquire` raises :class:`TrainingSetupError` when the path is a file, cannot be created
    or written, or another run holds it, refuses a run whose checkpoint or log would land on one
    of ``inputs`` (files) or in ``trees`` (dataset folders), and returns the names of the stale
    temporaries it removed; :meth:`release` (idempotent) gives it back, and removes the folders
    :meth:`acquire` created if nothing was written into them (a run refused at set-up leaves no
    trace).

    Attributes:
        staging: the folder for the temporaries of the run's checkpoints.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        inputs: Iterable[str | os.PathLike | None] = (),
        trees: Iterable[str | os.PathLike | None] = (),
    ) -> None:
        self.out_dir = Path(out_dir)
        self._inputs, self._trees = list(inputs), list(trees)
        self._lock = FolderLock(self.out_dir)
        self.staging = self._lock.staging
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> list[str]:
        if self._lock.held:
            return []
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise TrainingSetupError(
                f"the run folder {out} is a file; choose another --out-dir (out_dir)"
            )
        missing = [p for p in (out, *out.parents) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainingSetupError(
                f"cannot create the run folder {out}: {err.strerror or err}; choose a writable "
                "--out-dir (out_dir)"
            ) from err
        self._created = missing  # deepest first
        try:
            removed = self._lock.acquire()
        except FolderBusyError as err:
            who = f"another densflow run (pid {err.pid})" if err.pid else "another densflow run"
            raise TrainingSetupError(
                f"{who} is writing to {out}; wait for it or choose another --out-dir"
            ) from None
        except OSError as err:
            self._remove_created()
            raise TrainingSetupError(
                f"cannot write to the run folder {out}: {err.strerror or err}; choose a writable "
                "--out-dir (out_dir)"
            ) from err
        try:  # no output on an input, before any work
            names = [CHECKPOINT_NAME, METRICS_NAME]
            check_output_folder("--out-dir", out, names, self._inputs, trees=self._trees)
        except BaseException:
            self.release()
            raise
        return removed

    def release(self) -> None:
        if not self._lock.held:
            return
        self._lock.release()
        self._remove_created()

    def _remove_created(self) -> None:
        """The folders this lock created, if the run wrote nothing into them."""
        if self._created and [p.name for p in self.out_dir.iterdir()] == [LOCK_NAME]:
            (self.out_dir / LOCK_NAME).unlink()
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote to it
                break
        self._created = []

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
