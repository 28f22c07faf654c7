"""Unpacking a downloaded zip or tar archive so that no member can write outside its folder.

The authors' weights (:mod:`densflow.io.weights`) come as an archive from a file host: its member
names are not trusted. Python does the safe part: ``tarfile``'s ``"data"`` extraction filter
drops a leading ``/`` and refuses a member that ``..`` or a link would take outside the folder and
special files (the whole unpacking stops), and ``zipfile`` drops a leading ``/`` and every ``..``
from member names and never creates a link. densflow adds only the step these libraries do not
take: archives found inside the archive are unpacked beside themselves, in case the run folders
were packed one by one.

The format is told by content, not by name. A damaged archive and a folder that cannot take the
files (a full disk, a read-only file system) are told apart: only the first is the archive's fault.
"""

from __future__ import annotations

import lzma
import tarfile
import zipfile
import zlib
from pathlib import Path

from ..utils.errors import InputError, first_line
from .files import WRITE_ERRNOS, write_error

__all__ = ["ArchiveError", "archive_format", "unpack"]

_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


class ArchiveError(InputError):
    """An archive that cannot be unpacked safely: damaged, of an unknown format, or with a member
    that points outside the destination."""


def archive_format(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` (plain or compressed) or ``None``, from the content. A zip is known
    by its first bytes: a tar that holds a zip file (a ``torch.save`` checkpoint) is a tar."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return "tar" if tarfile.is_tarfile(path) else None


def _extract(archive: Path, kind: str, dest: Path) -> None:
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
        return
    if not hasattr(tarfile, "data_filter"):
        raise ArchiveError(
            f"unpacking {archive} safely needs tarfile's extraction filters (Python 3.10.12, "
            "3.11.4 or later): upgrade Python, or unpack it yourself and pass the folder"
        )
    with tarfile.open(archive, "r:*") as tf:
        tf.extractall(dest, filter="data")


def unpack(archive: Path, dest: Path, *, nested: bool = True) -> None:
    """Unpack a zip or tar (plain, gz, bz2, xz) ``archive`` into ``dest``, by its content.

    Archives found inside (by their suffix) are unpacked beside themselves, into
    ``NAME.unpacked`` (``nested``, one level), and removed.

    Raises:
        ArchiveError: the archive is of an unknown format, damaged, or has a member that would
            land outside ``dest`` (nothing outside ``dest`` is ever written).
        densflow.io.files.WriteError: ``dest`` cannot take the files (a full disk, a read-only
            file system).
    """
    kind = archive_format(archive)
    if kind is None:
        with open(archive, "rb") as f:
            head = f.read(8)
        raise ArchiveError(
            f"{archive} is neither a zip nor a tar archive (it starts with {head!r}): unpack it "
            "yourself and pass the folder"
        )
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _extract(archive, kind, dest)
    except tarfile.FilterError as err:
        raise ArchiveError(
            f"{archive} holds a member that would land outside the folder it is unpacked into "
            f"({first_line(err)}): refusing to unpack it"
        ) from err
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise ArchiveError(
                f"{archive} is damaged or truncated ({first_line(err)}); download it again"
            ) from err
        raise write_error(
            err.filename or dest, err, action="unpack into",
            kept=f"{archive} itself is fine",
        ) from err  # fmt: skip
    except _DAMAGED as err:
        raise ArchiveError(
            f"{archive} is damaged or truncated ({first_line(err)}); download it again"
        ) from err
    if nested:
        for inner in sorted(p for p in dest.rglob("*") if p.is_file() and _is_archive_name(p)):
            unpack(inner, inner.with_name(inner.name + ".unpacked"), nested=False)
            inner.unlink()


def _is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)
