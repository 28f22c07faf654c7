"""Unpacking a downloaded zip or tar archive so that no member can write outside its folder.

The authors' weights (:mod:`densflow.io.weights`) come as an archive from a file host: its member
names are not trusted. A member with an absolute path or ``..`` stops the unpacking; links and
special files are never created (each is reported and skipped), so every file lands inside the
destination, whatever the archive holds.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..utils.errors import InputError

__all__ = ["ArchiveError", "unpack"]

_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tar.xz")


class ArchiveError(InputError):
    """An archive that cannot be unpacked safely: damaged, of an unknown format, or with a member
    that points outside the destination."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _member_path(dest: Path, name: str) -> Path:
    """Where archive member ``name`` goes under ``dest``; absolute paths and ``..`` are refused."""
    text = name.replace("\\", "/")
    rel = PurePosixPath(text)
    if rel.is_absolute() or re.match(r"[A-Za-z]:", text) or ".." in rel.parts:
        raise ArchiveError(
            f"archive member {name!r} points outside the archive (absolute path or '..'): "
            "refusing to unpack it"
        )
    return dest.joinpath(*[p for p in rel.parts if p not in ("", ".")])


def _copy_member(source, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)


def _unpack_zip(archive: Path, dest: Path) -> list[str]:
    skipped = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = _member_path(dest, info.filename)
            mode = info.external_attr >> 16
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif (mode & 0o170000) in (0, 0o100000):  # a regular file (or no Unix mode recorded)
                with zf.open(info) as source:
                    _copy_member(source, target)
            else:  # a symbolic link or a special file: never created
                skipped.append(info.filename)
    return skipped


def _unpack_tar(archive: Path, dest: Path) -> list[str]:
    skipped = []
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            target = _member_path(dest, member.name)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                source = tf.extractfile(member)
                assert source is not None  # a regular file always has data
                with source:
                    _copy_member(source, target)
            else:  # symbolic and hard links, devices, FIFOs: never created
                skipped.append(member.name)
    return skipped


def unpack(
    archive: Path, dest: Path, *, nested: bool = True, report: Callable[[str], None] = print
) -> None:
    """Unpack a zip or tar (plain, gz, bz2, xz) ``archive`` into ``dest``, by its content.

    Members with absolute paths or ``..`` stop the unpacking; links and special files are skipped
    (and reported): no member can write outside ``dest``. Archives found inside (by their suffix)
    are unpacked beside themselves (``nested``, one level), in case the run folders were packed one
    by one.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as f:
        head = f.read(8)
    try:
        if zipfile.is_zipfile(archive):
            skipped = _unpack_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            skipped = _unpack_tar(archive, dest)
        else:
            raise ArchiveError(
                f"{archive} is neither a zip nor a tar archive (it starts with {head!r}): unpack "
                "it yourself and run python -m densflow download weights --from FOLDER"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise ArchiveError(
            f"{archive} is damaged ({_first_line(err)}): delete it and run the command again"
        ) from err
    for name in skipped:
        report(f"skipped archive member {name}: not a regular file (links are never created)")
    if nested:
        for inner in sorted(p for p in dest.rglob("*") if p.is_file() and _is_archive_name(p)):
            unpack(inner, inner.with_name(inner.name + ".unpacked"), nested=False, report=report)
            inner.unlink()


def _is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)
