"""densflow checkpoint files: written atomically, read with every entry checked, and a pickle
that would run code described without running it and never recommended."""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from densflow import DenseFlow, DenseFlowConfig
from densflow.io.checkpoint import (
    CheckpointError,
    model_from_checkpoint,
    pickle_globals,
    read_checkpoint,
    read_torch_file,
    save_model,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


class CallsSystem:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DenseFlow(DenseFlowConfig.tiny()).eval()


def test_a_checkpoint_round_trips_and_the_old_fixture_still_reads(tiny, tmp_path):
    save_model(tiny, tmp_path / "m.pt", train_config={"dataset": "photos"})
    ckpt = read_checkpoint(tmp_path / "m.pt")
    model = model_from_checkpoint(ckpt, tmp_path / "m.pt")
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in model.state_dict().items())
    old = read_checkpoint(FIXTURES / "checkpoint_v1_tiny.pt")
    assert model_from_checkpoint(old).config == DenseFlowConfig.tiny(32)


def test_the_globals_of_a_pickle_are_read_without_running_it(tmp_path, capfd):
    torch.save({"model": {"w": torch.ones(2)}, "x": CallsSystem()}, tmp_path / "evil.pt")
    assert "posix.system" in pickle_globals(tmp_path / "evil.pt")
    assert "pwned" not in capfd.readouterr().out


def test_a_pickle_that_calls_a_system_function_is_never_recommended(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "x": CallsSystem()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        read_torch_file(tmp_path / "evil.pt")
    message = str(info.value)
    assert "loading it would call posix.system" in message and "densflow never runs it" in message
    assert "trust" not in message and "\n" not in message


def test_a_global_named_through_the_memo_is_still_found(tmp_path):
    # protocol 4 fetches a string it saw before from the memo: the scan follows it
    data = pickle.dumps({"a": "posix", "b": "system", "x": CallsSystem()}, protocol=4)
    assert b"h\x02" in data  # BINGET 2: "posix" for the STACK_GLOBAL
    torch.save({"w": torch.ones(1)}, tmp_path / "real.pt")
    with (
        zipfile.ZipFile(tmp_path / "real.pt") as src,
        zipfile.ZipFile(tmp_path / "e.pt", "w") as dst,
    ):
        for name in src.namelist():  # a torch zip file whose pickle is this one
            dst.writestr(name, data if name.endswith("data.pkl") else src.read(name))
    assert "posix.system" in pickle_globals(tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="would call posix.system") as info:
        read_torch_file(tmp_path / "e.pt")
    assert "trust" not in str(info.value)


def test_a_pickle_of_plain_data_beyond_weights_only_gets_the_trusted_route(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(a=1)}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=r"\(argparse\.Namespace.*If it comes from a source"):
        read_torch_file(tmp_path / "a.pt")
    assert read_torch_file(tmp_path / "a.pt", trusted=True)["args"].a == 1


# how a checkpoint's entries can be damaged → the one line it gives
DAMAGED = {
    "config is a list": (lambda c: {**c, "config": [1, 2]}, r"its 'config' entry is a list"),
    "model is a list": (lambda c: {**c, "model": [1]}, r"its 'model' entry is a list"),
    "config field out of range": (
        lambda c: {**c, "config": {**c["config"], "num_landmarks": 0}},
        r"num_landmarks must be an integer in \[1, 4096\]",
    ),
    "unknown config field": (
        lambda c: {**c, "config": {**c["config"], "wings": 2}},
        r"unknown DenseFlowConfig fields \['wings'\]",
    ),
    "one mis-shaped tensor": (
        lambda c: {**c, "model": {**c["model"], "prior.loc": torch.zeros(1, 2, 3)}},
        r"mis-shaped: prior\.loc \(1, 2, 3\) instead of",
    ),
    "a missing tensor": (
        lambda c: {**c, "model": {k: v for k, v in c["model"].items() if k != "prior.loc"}},
        r"missing: prior\.loc",
    ),
    "a tensor that is a string": (
        lambda c: {**c, "model": {**c["model"], "prior.loc": "zeros"}},
        r"not tensors: prior\.loc",
    ),
    "no format": (lambda c: {k: v for k, v in c.items() if k != "format"}, r"no format="),
}


@pytest.mark.parametrize("damage, pattern", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_checkpoint_is_refused_in_one_line(tiny, tmp_path, damage, pattern):
    save_model(tiny, tmp_path / "m.pt")
    torch.save(damage(torch.load(tmp_path / "m.pt", weights_only=True)), tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=pattern) as info:
        model_from_checkpoint(read_checkpoint(tmp_path / "bad.pt"), tmp_path / "bad.pt")
    assert "\n" not in str(info.value)
