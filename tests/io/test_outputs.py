"""No output on an input, by real identity: same path, a link, a hard link, a file of a dataset
folder; and outputs that cannot be written, found before any work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from densflow.io.outputs import check_output, check_output_folder
from densflow.utils.errors import InputError


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.pt").write_bytes(b"model")
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "val_data.npz").write_bytes(b"images")
    (tmp_path / "data" / "sub" / "train_data_batch_1").write_bytes(b"images")
    (tmp_path / "notes.txt").write_text("mine")
    os.symlink(tmp_path / "in.pt", tmp_path / "alias.pt")
    os.link(tmp_path / "data" / "val_data.npz", tmp_path / "hard.npz")
    return tmp_path


# (output, why it is refused): each refused before anything is written
REFUSED = {
    "the input itself": ("in.pt", "is also an input"),
    "the input through ..": ("data/../in.pt", "is also an input"),
    "a symbolic link to the input": ("alias.pt", "is also an input"),
    "a file of the dataset folder": ("data/val_data.npz", r"a file of the dataset folder data\)"),
    "a file deeper in the dataset folder": ("data/sub/train_data_batch_1", "dataset folder"),
    "a hard link to a data file": ("hard.npz", "dataset folder"),
    "a folder": ("data", "is a folder; give a file path"),
    "below a file": ("notes.txt/out.json", r"cannot write into notes\.txt \(Not a directory\)"),
}


@pytest.mark.parametrize("output, why", REFUSED.values(), ids=REFUSED.keys())
def test_an_output_on_an_input_or_unwritable_is_refused(files, output, why):
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    with pytest.raises(InputError, match=why) as info:
        check_output("--out", output, ["in.pt"], trees=["data"])
    assert str(info.value).startswith(f"--out {Path(output)}") and "\n" not in str(info.value)
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before


@pytest.mark.parametrize("output", ["new.json", "data/new.json", "deep/er/new.json", "/dev/null"])
def test_a_new_file_anywhere_else_or_a_device_is_accepted(files, output):
    assert check_output("--out", output, ["in.pt"], trees=["data"]) == Path(output)
    assert not Path("deep").exists()  # the check creates nothing


def test_an_output_folder_is_checked_file_by_file(files):
    names = ["config.json", "model.safetensors"]
    assert check_output_folder("OUT", "new_dir", names, ["in.pt"]) == Path("new_dir")
    (files / "run").mkdir()
    (files / "run" / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"OUT run is also an input"):
        check_output_folder("OUT", "run", names, ["run", "run/config.json"])
    with pytest.raises(InputError, match=r"OUT run/config\.json is also an input"):
        check_output_folder("OUT", "run", names, ["run/config.json"])
    with pytest.raises(InputError, match="OUT notes.txt is a file; give a folder path"):
        check_output_folder("OUT", "notes.txt", names)
    os.symlink(files / "in.pt", files / "run" / "model.safetensors")
    with pytest.raises(InputError, match=r"model\.safetensors is also an input"):
        check_output_folder("OUT", "run", names, ["in.pt"])
