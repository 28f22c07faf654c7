"""One process at a time writes a folder densflow manages (a run folder, the weights cache), and
what a killed holder left behind is removed by the next one: only that, never a user's file.

:class:`FolderLock` holds a :class:`filelock.FileLock` on ``FOLDER/.lock`` (the system's file
lock, ``flock`` on Unix: it is released when the holder's process ends, however it ends, so a crash
leaves no stale lock). While holding it, a process writes its temporaries into the
folder's **staging folder** ``FOLDER/.densflow-tmp/``, which holds a marker file that names it as
densflow's (and the holder's pid, for messages). Taking the lock empties the staging folder:
whatever is in it was left by a holder that was killed (nobody else can be writing there), and
nothing outside it is ever touched, however its name looks. A ``.densflow-tmp`` that holds files
but no marker is not densflow's: it is refused, not emptied. The lock file itself stays empty, so
taking the lock changes no file's content.

A process on another machine that shares the folder (a cluster's home folder) is excluded by the
same lock, where the file system supports locks; where it does not, filelock falls back to a lock
file whose holder it checks.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from ..utils.errors import InputError
from .files import write_error

__all__ = ["LOCK_NAME", "STAGING_NAME", "FolderBusyError", "FolderLock"]

LOCK_NAME = ".lock"
"""The lock file in a managed folder (empty: taking the lock changes no file's content)."""
STAGING_NAME = ".densflow-tmp"
"""The staging folder of a managed folder: the temporaries of its lock's holder."""
MARKER_NAME = "DENSFLOW_TEMPORARIES"
_MARKER_TEXT = (
    "This folder holds temporary files of the densflow process that holds ../.lock (its pid is\n"
    "on the last line); the next densflow process to take that lock empties it.\n"
)


class FolderBusyError(InputError):
    """Another process holds the folder's lock. ``pid`` is the holder's, when it could be read."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


class FolderLock:
    """The exclusive lock on ``folder`` (which must exist) and its staging folder.

    Arguments:
        folder: the managed folder.
        wait: wait for another holder to finish (calling ``on_wait`` once first) instead of
            raising :class:`FolderBusyError`.
        on_wait: called before waiting, e.g. to say what the process waits for.

    :meth:`acquire` returns the names of the stale temporaries it removed; :meth:`release`
    (idempotent) removes the staging folder when it is empty and gives the lock back.
    """

    def __init__(
        self, folder: str | os.PathLike, *, wait: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        self.folder = Path(folder)
        self.staging = self.folder / STAGING_NAME
        self._wait, self._on_wait = wait, on_wait
        self._lock: FileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> list[str]:
        if self._lock is not None:
            return []
        lock = FileLock(self.folder / LOCK_NAME)
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if not self._wait:
                    pid = self.holder()
                    who = f"another densflow process (pid {pid})" if pid else "another process"
                    raise FolderBusyError(
                        f"{who} is writing to {self.folder}; wait for it to finish", pid
                    ) from None
                if self._on_wait is not None:
                    self._on_wait()
                lock.acquire()
        except OSError as err:
            raise write_error(self.folder, err, action="lock", kept="nothing was written") from err
        self._lock = lock
        try:
            removed = self._clear_staging()
            (self.staging / MARKER_NAME).write_text(f"{_MARKER_TEXT}{os.getpid()}\n")
            return removed
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            if self.staging.is_dir() and not self.staging.is_symlink():
                if [p.name for p in self.staging.iterdir()] == [MARKER_NAME]:
                    (self.staging / MARKER_NAME).unlink()
                    self.staging.rmdir()
        except OSError:  # left for the next holder, which empties it
            pass
        finally:
            self._lock.release()
            self._lock = None

    def holder(self) -> int | None:
        """The pid the holder wrote into the staging folder's marker (``None`` before it wrote
        it)."""
        try:
            return int((self.staging / MARKER_NAME).read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            return None

    def _clear_staging(self) -> list[str]:
        """Empty the staging folder (create it when missing); its marker is written next."""
        staging = self.staging
        adoptable = staging.is_dir() and (
            (staging / MARKER_NAME).is_file() or not any(staging.iterdir())
        )
        if staging.is_symlink() or (staging.exists() and not adoptable):
            raise InputError(
                f"{staging} exists but was not made by densflow (it has no {MARKER_NAME} file); "
                "densflow keeps its temporaries there: rename it"
            )
        if not staging.exists():
            staging.mkdir()
            return []
        removed = []
        for entry in sorted(staging.iterdir()):
            if entry.name == MARKER_NAME:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
        return removed

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
