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


def test_an_input_augmentation_checkpoint_of_the_earlier_layout_loads_with_its_numbers(tmp_path):
    """``checkpoint_input_augmentation_v1_tiny.pt`` was written by ``save_model`` at commit
    4a2fc96, before the input augmentation became its own block: a tiny 32×32 model with
    ``augmentation="input"`` (weights perturbed by 0.02·N(0, 1), ActNorm initialised on its 4
    images ``x``), and the numbers that code computed under ``expected``. Its keys are the old
    ones (``blocks.0.cross_unit.0.…``, ``blocks.0.units.1.…``); loaded, the model gives the same
    numbers to the bit, and saved again it has today's keys."""
    from densflow import fixed_noise
    from densflow.io import load

    path = FIXTURES / "checkpoint_input_augmentation_v1_tiny.pt"
    stored = torch.load(path, weights_only=True)
    assert any(k.startswith("blocks.0.cross_unit.0.") for k in stored["model"])
    expected, model = stored["expected"], load(path).eval()
    x = expected["x"]
    with torch.no_grad():
        with fixed_noise(0.0):
            assert torch.equal(model.log_prob(x), expected["log_prob_fixed_noise_0"])
        assert torch.equal(
            model.log_prob(x, torch.Generator().manual_seed(2)), expected["log_prob_seed_2"]
        )
        iw = model.iw_log_prob(x, 3, 2, torch.Generator().manual_seed(5))
        assert torch.equal(iw, expected["iw_log_prob_k3_chunk2_seed_5"])
        samples = model.sample(2, generator=torch.Generator().manual_seed(7))
        assert torch.equal(samples, expected["sample_seed_7"])
    save_model(model, tmp_path / "again.pt")
    again = read_checkpoint(tmp_path / "again.pt")["model"]
    assert set(again) == set(model.state_dict()) and "blocks.0.augmentation.g.0.weight" in again


def test_an_earlier_key_beside_its_new_name_is_refused_not_merged(tmp_path):
    """An entry under both its old and its new name is not silently resolved to one of them: the
    old one is reported as unexpected."""
    import dataclasses

    model = DenseFlow(dataclasses.replace(DenseFlowConfig.tiny(), augmentation="input"))
    save_model(model, tmp_path / "m.pt")
    ckpt = read_checkpoint(tmp_path / "m.pt")
    ckpt["model"]["blocks.0.units.1.0.actnorm.shift"] = ckpt["model"][
        "blocks.0.unit.0.actnorm.shift"
    ]
    with pytest.raises(
        CheckpointError, match=r"unexpected: blocks\.0\.units\.1\.0\.actnorm\.shift"
    ):
        model_from_checkpoint(ckpt, tmp_path / "m.pt")


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
