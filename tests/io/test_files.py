"""Atomic writes: whole files or nothing, the mode a plain open() gives, devices written through,
and a full disk reported as one."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from densflow.io import files
from densflow.io.files import WriteError, atomic_save, atomic_write, atomic_write_text
from densflow.utils.errors import InputError


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(files.TEMP_SUFFIX))


def full_disk_after(monkeypatch, n_bytes: int, code: int = errno.ENOSPC) -> None:
    """Every write into an atomic temporary fails with ``code`` once ``n_bytes`` are written."""
    written = [0]
    real = files._Sink.write

    def write(self, data):
        written[0] += len(data)
        if written[0] > n_bytes:
            self.error = OSError(code, os.strerror(code))
            raise self.error
        return real(self, data)

    monkeypatch.setattr(files._Sink, "write", write)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_plain_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~umask


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "shared.txt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640


def test_a_link_keeps_pointing_at_the_file_it_names(tmp_path):
    real, link = tmp_path / "real.txt", tmp_path / "link.txt"
    real.write_text("old")
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "kept.txt"
    path.write_text("previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert path.read_text() == "previous" and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "code, fix",
    [
        (errno.ENOSPC, "free disk space"),
        (errno.EDQUOT, "disk quota"),
        (errno.EROFS, "writable file system"),
        (errno.EACCES, "you may write to"),
    ],
)
def test_a_refused_write_says_what_happened_in_one_line(tmp_path, monkeypatch, code, fix):
    path = tmp_path / "kept.txt"
    path.write_text("previous")
    full_disk_after(monkeypatch, 2, code)
    with pytest.raises(WriteError) as info:
        atomic_write_text(path, "more than two bytes")
    message = str(info.value)
    assert message.startswith(f"cannot write {path}: {os.strerror(code)}; {path} is left as it")
    assert fix in message and "\n" not in message and "delete" not in message
    assert info.value.errno == code and isinstance(info.value, (OSError, InputError))
    assert path.read_text() == "previous" and leftovers(tmp_path) == []


def test_torch_save_into_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    # torch.save reports a failed write as a RuntimeError ("unexpected pos"): the cause is kept
    full_disk_after(monkeypatch, 100)
    with pytest.raises(WriteError, match="No space left on device; nothing was written"):
        atomic_save({"w": torch.zeros(1000)}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match="is a folder, not a file"):
        atomic_write_text(tmp_path, "x")
    assert list(tmp_path.iterdir()) == []


def test_a_character_device_is_written_through(tmp_path):
    atomic_write_text("/dev/null", "into the void")  # not replaced by a regular file
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(WriteError, match="cannot write /dev/full: No space left on device"):
        atomic_write_text("/dev/full", "x" * 100_000)
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_fifo_is_written_through_when_read_and_refused_when_not(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match="pipe: No such device or address; .*was not replaced"):
        atomic_write_text(fifo, "nobody reads this")  # refused at once: no hang
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    while not got:  # once the reader has the FIFO open, the write goes through
        try:
            atomic_write_text(fifo, "hello")
            break
        except WriteError:
            continue
    reader.join(timeout=30)
    assert got == ["hello"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_the_temporary_goes_into_the_staging_folder(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    staging.mkdir()
    seen = []
    real = files._new_temporary

    def spy(folder, name):
        seen.append(folder)
        return real(folder, name)

    monkeypatch.setattr(files, "_new_temporary", spy)
    atomic_write_text(tmp_path / "out" / "a.txt", "x", staging=staging)
    assert seen == [staging] and (tmp_path / "out" / "a.txt").read_text() == "x"
    assert list(staging.iterdir()) == []
