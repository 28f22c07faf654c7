"""One way to name a model: every kind of spec, what it reads, and one line when nothing
matches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from utils import write_official_run

from densflow import DenseFlow, DenseFlowConfig
from densflow.io import load, locate
from densflow.io import pretrained as pt
from densflow.io.checkpoint import CheckpointError, save_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def golden(reference_dir):
    return torch.load(reference_dir / "golden_A.pt", weights_only=True)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DenseFlow(DenseFlowConfig.tiny()).eval()


@pytest.fixture
def place(tmp_path, monkeypatch, tiny, golden):
    """A folder with one model of every kind, and a cache holding "cifar10"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(pt.CACHE_ENV, str(tmp_path / "cache"))
    save_model(tiny, tmp_path / "m.pt", train_config={"dataset": "photos"})
    (tmp_path / "run").mkdir()
    save_model(tiny, tmp_path / "run" / "checkpoint.pt", train_config={"dataset": "photos"})
    pt.save_pretrained(tiny, tmp_path / "dir", dataset="imagenet64")
    pt.save_pretrained(tiny, tmp_path / "cache" / "models" / "cifar10", dataset="cifar10")
    write_official_run(tmp_path / "authors", golden, dataset="celeba")
    return tmp_path


# spec → (kind, the files it reads, the dataset it records)
KINDS = {
    "m.pt": ("checkpoint", ["m.pt"], "photos"),
    "run": ("checkpoint", ["run", "run/checkpoint.pt"], "photos"),
    "run/checkpoint.pt": ("checkpoint", ["run/checkpoint.pt"], "photos"),
    "dir": ("model directory", ["dir", "dir/config.json", "dir/model.safetensors"], "imagenet64"),
    "dir/model.safetensors": (
        "model directory",
        ["dir", "dir/config.json", "dir/model.safetensors"],
        "imagenet64",
    ),  # fmt: skip
    "cifar10": (
        "model directory",
        [
            "cache/models/cifar10",
            "cache/models/cifar10/config.json",
            "cache/models/cifar10/model.safetensors",
        ],
        "cifar10",
    ),  # fmt: skip
    "authors": (
        "official run",
        ["authors", "authors/check/checkpoint.pt", "authors/args.pickle"],
        "celeba",
    ),
    "authors/check/checkpoint.pt": (
        "checkpoint",
        ["authors/check/checkpoint.pt", "authors/args.pickle"],
        "celeba",
    ),  # fmt: skip
}


@pytest.mark.parametrize("spec", KINDS, ids=KINDS)
def test_every_kind_of_spec_is_located_and_loaded(place, spec):
    kind, files, dataset = KINDS[spec]
    source = locate(spec)
    assert source.kind == kind
    assert [f.resolve() for f in source.files] == [(place / f).resolve() for f in files]
    model, trained_on = source.load()
    assert trained_on == dataset and not model.training
    assert isinstance(load(spec), DenseFlow)


def test_the_name_official_is_the_cached_model_of_the_dataset(place):
    assert locate("official", dataset="cifar10").path == place / "cache" / "models" / "cifar10"
    with pytest.raises(CheckpointError, match="'official' needs its dataset"):
        locate("official")
    with pytest.raises(CheckpointError, match="cifar10 was trained on cifar10, not celeba"):
        locate("cifar10", dataset="celeba").load()


# spec → the one line: a path-looking spec that names nothing is "no such file or folder"
MISSING = {
    "checkpont.pt": r"^checkpont\.pt: no such file or folder$",
    "runs/checkpont.pt": r"^runs/checkpont\.pt: no such file or folder$",
    "run/checkpont": r"^run/checkpont: no such file or folder$",  # run/ exists here
    "./m2.pt": r"no such file or folder",
    "/nowhere/m": r"no such file or folder",
    "~/nowhere.pt": r"no such file or folder",
    "a b": r"no such file or folder",
    "imagenet32": r"^no file or folder imagenet32, and no model 'imagenet32' in the cache .*"
    r"holds \['cifar10'\]\): run densflow download weights",
}


@pytest.mark.parametrize("spec, pattern", MISSING.items(), ids=MISSING)
def test_a_spec_that_names_nothing_says_what_was_tried_in_one_line(place, spec, pattern):
    with pytest.raises(CheckpointError, match=pattern) as info:
        locate(spec)
    assert "\n" not in str(info.value) and "huggingface" not in str(info.value).lower()


def test_a_folder_that_is_no_model_says_what_a_model_folder_holds(place):
    (place / "notes").mkdir()
    (place / "notes" / "a.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"notes is a folder but not a model: .*\['a\.txt'\]"):
        locate("notes")


def test_the_old_checkpoints_in_the_fixtures_still_load(tmp_path):
    model = load(FIXTURES / "checkpoint_v1_tiny.pt")
    assert model.config == DenseFlowConfig.tiny(32)
    run = shutil.copytree(FIXTURES / "run_v1", tmp_path / "run_v1")
    source = locate(run)
    assert source.kind == "checkpoint" and source.load().dataset == "photos"


def test_a_path_wins_but_a_data_folder_gives_way_to_the_cached_model(place, tiny):
    (place / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)  # the dataset, not a model
    assert locate("cifar10").path == place / "cache" / "models" / "cifar10"
    assert locate("official", dataset="cifar10").path == place / "cache" / "models" / "cifar10"
    pt.save_pretrained(tiny, place / "cifar10")  # now a model directory: the path wins
    assert locate("cifar10").path == Path("cifar10")
