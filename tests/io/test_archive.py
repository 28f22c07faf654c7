"""Unpacking: nothing lands outside the folder, whatever the members say; a full or read-only
file system is reported as such, a damaged archive as damaged."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from densflow.io.archive import ArchiveError, archive_format, unpack
from densflow.io.files import WriteError


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


def tar_of(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x") if m.isfile() else None)
    return path


def zip_of(path: Path, *names: str, link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"x")
        if link is not None:  # a symbolic link member, as `zip --symlinks` writes it
            info = zipfile.ZipInfo("run/link")
            info.external_attr = (0o120777 << 16) | 0x20
            zf.writestr(info, link)
    return path


# (archive maker, what happens): every row writes nothing outside dest
HOSTILE = {
    "tar ../": (lambda p: tar_of(p, member("../escaped.txt")), "refused"),
    "tar a/../../": (lambda p: tar_of(p, member("a/../../escaped.txt")), "refused"),
    "tar absolute": (lambda p: tar_of(p, member(str(p.parent / "escaped.txt"))), "inside"),
    "tar symlink out": (
        lambda p: tar_of(p, member("run/ok.txt"), member("run/etc", tarfile.SYMTYPE, "/etc")),
        "refused",
    ),
    "tar symlink ../": (
        lambda p: tar_of(p, member("run/up", tarfile.SYMTYPE, "../../escaped.txt")),
        "refused",
    ),
    "tar hard link out": (
        lambda p: tar_of(p, member("run/hard", tarfile.LNKTYPE, "/etc/passwd")),
        "refused",
    ),
    "tar device": (lambda p: tar_of(p, member("run/dev", tarfile.CHRTYPE)), "refused"),
    "tar write through a link": (
        lambda p: tar_of(
            p, member("run/out", tarfile.SYMTYPE, str(p.parent)), member("run/out/escaped.txt")
        ),
        "refused",
    ),
    "zip ../": (lambda p: zip_of(p, "../escaped.txt"), "inside"),
    "zip a/../../": (lambda p: zip_of(p, "a/../../escaped.txt"), "inside"),
    "zip absolute": (lambda p: zip_of(p, str(p.parent / "escaped.txt")), "inside"),
    "zip symlink": (lambda p: zip_of(p, "run/ok.txt", link="/etc/passwd"), "inside"),
}


@pytest.mark.parametrize("make, outcome", HOSTILE.values(), ids=HOSTILE.keys())
def test_no_member_writes_outside_the_folder(tmp_path, make, outcome):
    work = tmp_path / "work"
    work.mkdir()
    archive = make(work / "evil.archive")
    dest = work / "dest"
    if outcome == "refused":
        with pytest.raises(ArchiveError, match="would land outside the folder") as info:
            unpack(archive, dest)
        assert "\n" not in str(info.value)
    else:  # a leading / is dropped (by both), and so is .. (by zipfile, which makes no link)
        unpack(archive, dest)
        assert all(not p.is_symlink() for p in dest.rglob("*"))
    assert sorted(p.name for p in work.iterdir()) == ["dest", "evil.archive"]
    assert not (tmp_path / "escaped.txt").exists() and not Path("/escaped.txt").exists()
    assert all(os.path.realpath(p).startswith(str(dest)) for p in dest.rglob("*"))


def test_a_plain_tar_holding_a_torch_checkpoint_is_a_tar(tmp_path):
    run = tmp_path / "runs" / "run1" / "check"
    run.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(3)}}, run / "checkpoint.pt")  # a zip file
    (run.parent / "args.pickle").write_bytes(b"x")
    archive = tmp_path / "runs.tar"
    with tarfile.open(
        archive, "w"
    ) as tf:  # uncompressed: the zip's bytes are in the tar as they are
        tf.add(tmp_path / "runs" / "run1", arcname="run1")
    assert zipfile.is_zipfile(archive)  # what fooled a detection by zipfile alone
    assert archive_format(archive) == "tar"
    unpack(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "run1" / "check" / "checkpoint.pt").read_bytes() == (
        run / "checkpoint.pt"
    ).read_bytes()


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_file_system_is_reported_as_such(tmp_path, monkeypatch, kind, code):
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(b"y" * 10_000)
    archive = tmp_path / f"a.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.write(source / "big.bin", "big.bin")
    else:
        with tarfile.open(archive, "w:gz") as tf:
            tf.add(source / "big.bin", "big.bin")
    before = archive.read_bytes()

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shutil, "copyfileobj", refuse)  # zipfile's copy
    monkeypatch.setattr(tarfile, "copyfileobj", refuse)  # tarfile's
    with pytest.raises(WriteError) as info:
        unpack(archive, tmp_path / "dest")
    message = str(info.value)
    assert f"cannot unpack into {tmp_path / 'dest'}" in message
    assert os.strerror(code) in message and f"{archive} itself is fine" in message
    assert "damaged" not in message and "delete" not in message and "\n" not in message
    assert archive.read_bytes() == before


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_a_damaged_archive_says_download_it_again_not_delete_it(tmp_path, kind):
    good = tmp_path / "good"
    with zipfile.ZipFile(good, "w") if kind == "zip" else tarfile.open(good, "w:gz") as a:
        data = os.urandom(50_000)
        if kind == "zip":
            a.writestr("run/big.bin", data)
        else:
            info = tarfile.TarInfo("run/big.bin")
            info.size = len(data)
            a.addfile(info, io.BytesIO(data))
    torn = tmp_path / "torn"
    raw = good.read_bytes()
    torn.write_bytes(
        raw[:200] + bytes(len(raw) - 400) + raw[-200:] if kind == "zip" else raw[:-9000]
    )
    with pytest.raises(ArchiveError, match="is damaged or truncated .*download it again") as info:
        unpack(torn, tmp_path / "dest")
    assert "delete" not in str(info.value)


def test_neither_zip_nor_tar_is_refused(tmp_path):
    (tmp_path / "file.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(600))
    with pytest.raises(ArchiveError, match="neither a zip nor a tar"):
        unpack(tmp_path / "file.7z", tmp_path / "dest")


def test_archives_inside_are_unpacked_beside_themselves(tmp_path):
    inner = zip_of(tmp_path / "inner.zip", "run/a.txt")
    tar_of(tmp_path / "inner2.tar", member("run/b.txt"))
    with tarfile.open(tmp_path / "outer.tar.gz", "w:gz") as tf:
        tf.add(inner, "x/inner.zip")
        tf.add(tmp_path / "inner2.tar", "inner2.tar")
    unpack(tmp_path / "outer.tar.gz", tmp_path / "dest")
    found = sorted(
        p.relative_to(tmp_path / "dest").as_posix() for p in (tmp_path / "dest").rglob("*.txt")
    )
    assert found == ["inner2.tar.unpacked/run/b.txt", "x/inner.zip.unpacked/run/a.txt"]
    assert not (tmp_path / "dest" / "x" / "inner.zip").exists()
