"""The run folder: one writer at a time, checked writable before any work, and cleared of the
temporaries a killed save leaves behind.

**One writer.** :class:`RunFolderLock` takes an exclusive ``flock`` on the run folder itself
(not on a file in it, so that a lock file can never be deleted or replaced under a holder). A
second run on the same folder, in this process or another, is refused at once. The operating
system releases the lock when the holder's process ends, however it ends (an exception, Ctrl-C,
``kill -9``), so a crash never leaves a stale lock to clean up by hand. The holder writes its
pid to ``.lock`` in the folder, for the refusal message only; a ``.lock`` left by a killed run
is overwritten by the next one. On file systems without ``flock`` (some network mounts) the
lock fails with an error naming the folder; on platforms without ``fcntl`` runs are not locked.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..io.checkpoint import temporaries_of
from ..utils.errors import InputError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

__all__ = ["LOCK_NAME", "RunFolderLock", "TrainingSetupError", "remove_stale_temporaries"]

LOCK_NAME = ".lock"
"""The file in the run folder that names the pid of the run writing it."""


class TrainingSetupError(InputError):
    """A run that cannot start as configured (its folder, its data or its device); raised before
    any training work."""


class RunFolderLock:
    """An exclusive lock on a run folder, created (with its parents) if missing.

    :meth:`acquire` raises :class:`TrainingSetupError` when the path is a file, cannot be created
    or written, or another run holds it; :meth:`release` (idempotent) gives it back, and removes
    the folders :meth:`acquire` created if they are still empty (a run refused at set-up leaves
    no trace).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise TrainingSetupError(
                f"the run folder {out} is a file; choose another --out-dir (out_dir)"
            )
        missing = [p for p in (out, *out.parents) if not p.exists()]
        try:
            out.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first
            fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as err:
            raise TrainingSetupError(
                f"cannot create the run folder {out}: {err.strerror or err}; choose a writable "
                "--out-dir (out_dir)"
            ) from err
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise TrainingSetupError(
                        f"cannot lock the run folder {out}: {err.strerror or err}; choose an "
                        "--out-dir on a local disk"
                    ) from err
                pid = self._holder()
                who = f"another densflow run (pid {pid})" if pid else "another densflow run"
                raise TrainingSetupError(
                    f"{who} is writing to {out}; wait for it or choose another --out-dir"
                ) from None
        self._fd = fd
        try:  # also proves, before any work, that the folder takes new files
            (out / LOCK_NAME).write_text(f"{os.getpid()}\n")
        except OSError as err:
            self.release()
            raise TrainingSetupError(
                f"cannot write to the run folder {out}: {err.strerror or err}; choose a writable "
                "--out-dir (out_dir)"
            ) from err

    def release(self) -> None:
        if self._fd is None:
            return
        (self.out_dir / LOCK_NAME).unlink(missing_ok=True)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote to it
                break
        self._created = []

    def _holder(self) -> int | None:
        try:
            return int((self.out_dir / LOCK_NAME).read_text().strip())
        except (OSError, ValueError):  # not written yet, or being rewritten
            return None

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def remove_stale_temporaries(checkpoint: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``checkpoint`` (``.checkpoint.pt.<random>.tmp``) that a process
    killed during a save left behind, and return them. Call it holding the folder's lock: then no
    save of another run can be in flight."""
    stale = temporaries_of(checkpoint)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
