"""Writing a file so that a crash, a full disk or a kill never leaves half of it.

:func:`atomic_write` is the one way densflow writes a file it may replace (checkpoints, model
directories, results, sample grids, records of the weights cache): the bytes go to a temporary file
in the same folder (or in a :class:`~densflow.io.locks.FolderLock`'s staging folder on the same
file system), are flushed to the disk, and the temporary is then renamed onto the target. The
rename is the commit point: a reader sees the previous file or the new one, never a torn one.

What it writes through, and what it refuses:

* a **regular file**, or a path where nothing is: replaced atomically. The new file gets the mode a
  plain ``open()`` would give it (``0o666`` less the umask, and the folder's default ACL), or, when
  it replaces a file, that file's mode: teammates who could read a checkpoint still can.
* a **symbolic link**: the file it points to is replaced; the link stays.
* a **character device or a FIFO** (``/dev/null``, a named pipe): written through, since there is
  nothing to replace atomically; a FIFO that no process reads is refused rather than waited on.
* anything else (a folder, a block device, a socket): refused before anything is written.

The temporary is the only thing ever removed, and only by the call that made it. A write the system
refuses (a full disk, no permission, a read-only file system) raises :class:`WriteError`, which says
what happened and that the previous file is left as it was; it never advises deleting anything.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from ..utils.errors import InputError
from ..utils.reading import file_kind

__all__ = [
    "WriteError",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_error",
]

TEMP_SUFFIX = ".tmp"
"""The ending of :func:`atomic_write`'s temporaries, named ``.NAME.<random>.tmp``."""

_FIXES = {
    errno.ENOSPC: "free disk space, then run the same command again",
    errno.EDQUOT: "free space within your disk quota, then run the same command again",
    errno.EFBIG: "write to a file system that takes files this large",
    errno.EACCES: "choose a folder you may write to, or fix its permissions",
    errno.EPERM: "choose a folder you may write to, or fix its permissions",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOTDIR: "a part of the path is a file; give a path through folders",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENXIO: "start the process that reads it first, or write to a file",
}
WRITE_ERRNOS = frozenset(_FIXES)
"""The system errors that mean "this cannot be written here", as opposed to a damaged input."""


class WriteError(InputError, OSError):
    """A file the system could not write (a full disk, a folder without write access, a read-only
    file system): the message names the path and the cause, and says that the file it would have
    replaced is left as it was. ``errno`` and ``filename`` are the system's."""

    def __str__(self) -> str:  # the message, not OSError's "[Errno N] ..." form
        return str(self.args[0]) if self.args else ""


def write_error(
    path: str | os.PathLike, err: OSError, *, action: str = "write", kept: str | None = None
) -> WriteError:
    """The :class:`WriteError` for ``err``, raised while trying to ``action`` ``path``.

    ``kept`` says what is left as it was (default: ``path`` itself when it exists, else that
    nothing was written)."""
    reason = err.strerror or str(err) or type(err).__name__
    if kept is None:
        kept = f"{path} is left as it was" if os.path.lexists(path) else "nothing was written"
    fix = _FIXES.get(err.errno, "check the path, its permissions and the free disk space")
    error = WriteError(f"cannot {action} {path}: {reason}; {kept}. To fix: {fix}")
    error.errno, error.strerror, error.filename = err.errno, reason, str(path)
    return error


class _Sink:
    """The temporary file as handed to the writer: it remembers a system error of ``write``, so
    that a library that reports it as something else (``torch.save`` says "unexpected pos") is
    reported with the real cause."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:  # flush, fileno, tell, seek... of the file itself
        return getattr(self._file, name)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename stands
        pass
    finally:
        os.close(fd)


def _open_through(target: Path, kind: str) -> IO[bytes]:
    """A device or a FIFO, opened for writing without blocking on a FIFO nobody reads."""
    if kind == "a FIFO":
        fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader
        os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")
    return open(target, "wb")


def _new_temporary(folder: Path, name: str) -> tuple[Path, int]:
    """A new file ``.NAME.<random>.tmp`` in ``folder``, created with the mode ``open()`` gives."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return tmp, os.open(tmp, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, *, staging: str | os.PathLike | None = None
) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; it replaces ``path`` only when the
    ``with`` block ends without an exception (see the module for devices, links and modes).

    Arguments:
        path: the file to write; missing parent folders are created.
        staging: the folder for the temporary (default: ``path``'s own); it must be on the same
            file system, e.g. the staging folder of the :class:`~densflow.io.locks.FolderLock`
            held on ``path``'s folder, whose stale temporaries it removes.

    Raises:
        WriteError: the system refused to write (``path`` is left as it was).
        InputError: ``path`` is a folder, a block device or a socket.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with atomic_write(f"{folder}/notes.txt") as f:
        ...         _ = f.write(b"kept whole")
        ...     open(f"{folder}/notes.txt", "rb").read()
        b'kept whole'
    """
    shown = Path(path)
    target = Path(os.path.realpath(shown.expanduser()))  # a link's file, not the link
    kind = file_kind(target)
    if kind in ("a device", "a FIFO"):  # nothing to replace: written through
        try:
            with _open_through(target, kind) as file:
                yield file
        except OSError as err:
            if isinstance(err, InputError):
                raise
            raise write_error(shown, err, kept=f"{shown} was not replaced") from err
        return
    if kind not in ("missing", "regular"):
        raise InputError(f"{shown} is {kind}, not a file; give the path of a file to write")
    tmp = None
    sink: _Sink | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(staging) if staging is not None else target.parent
        tmp, fd = _new_temporary(folder, target.name)
        if kind == "regular":  # the replaced file's mode, not the temporary's
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
        with os.fdopen(fd, "wb") as file:
            sink = _Sink(file)
            yield sink  # type: ignore[misc]
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
        tmp = None
        _fsync_folder(target.parent)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else (sink.error if sink is not None else None)
        if cause is not None and not isinstance(cause, InputError):
            raise write_error(shown, cause) from err
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs: Any) -> None:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""
    with atomic_write(path, **kwargs) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs: Any) -> None:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    atomic_write_bytes(path, text.encode(), **kwargs)


def atomic_save(obj: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """``torch.save(obj)`` to ``path`` with :func:`atomic_write`: a crash at any moment leaves
    the previous file or the new one; a full disk raises :class:`WriteError`."""
    with atomic_write(path, **kwargs) as f:
        torch.save(obj, f)
